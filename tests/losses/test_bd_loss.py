import copy
import math
import os
import subprocess
import sys
from os import path as osp

import numpy as np
import pytest
import scipy.special
import torch
from conftest import FIXTURES, REPO_ROOT
from torch.func import functional_call

import wbsr_plugin  # noqa: F401
from wbsr_plugin.losses.bd_loss import (
    BDLoss,
    TableLookup,
    hermite_coefficients,
    kernel_rho,
    log_laplace_conv_normal,
    log_sum_laplace_kernels,
    table_spacing,
)
from wbsr_plugin.losses.gmm_prior_util import (
    fit_gmm_1d,
    fit_gmm_prior,
    load_gmm_prior,
    lowpass,
    save_gmm_prior,
    target_lowpass,
)

from basicsr.losses import build_loss
from basicsr.utils.registry import LOSS_REGISTRY

ROOT = REPO_ROOT
FIXTURES_HR = osp.join(FIXTURES, 'hr')
KERNELS = ('gaussian', 'laplace')
ESTIMATORS = ('gai', 'bmc')


def toy_prior(weights=(0.5, 0.3, 0.2), means=(0., 0.05, -0.1), variances=(1e-4, 4e-3, 2e-2), scale=4,
              space='residual'):
    return {
        'weights': torch.tensor(weights, dtype=torch.float64),
        'means': torch.tensor(means, dtype=torch.float64),
        'variances': torch.tensor(variances, dtype=torch.float64),
        'scale': scale,
        'space': space,
    }


@pytest.fixture
def prior_path(tmp_path):
    path = str(tmp_path / 'prior.pth')
    save_gmm_prior(toy_prior(), path)
    return path


class UnscaledTerms(torch.nn.Module):

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, pred, target):
        likelihood, balancing, _ = self.loss.log_likelihood_terms(pred, target)
        return (likelihood + balancing).mean()


def make_loss(estimator, prior_path=None, **opt):
    if estimator == 'gai':
        opt['prior_path'] = prior_path
    return BDLoss(estimator=estimator, **opt)


def test_registered_and_build_loss(prior_path):
    assert LOSS_REGISTRY.get('BDLoss') is BDLoss
    loss = build_loss({'type': 'BDLoss', 'loss_weight': 1.0, 'estimator': 'gai', 'prior_path': prior_path})
    assert isinstance(loss, BDLoss)
    loss = build_loss({'type': 'BDLoss', 'estimator': 'bmc', 'kernel': 'laplace', 'bmc_num_refs': 8})
    pred, target = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert torch.isfinite(loss(pred, target))


@pytest.mark.parametrize('estimator', ESTIMATORS)
@pytest.mark.parametrize('kernel', KERNELS)
def test_gradcheck(estimator, kernel, prior_path):
    torch.manual_seed(0)
    loss = make_loss(estimator, prior_path, kernel=kernel, init_noise_sigma=0.07, bmc_num_refs=16).double()
    target = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn_like(target)).requires_grad_()
    log_sigma = loss.log_sigma.detach().clone().requires_grad_()

    def func(pred):
        torch.manual_seed(1)  # same bmc references in every evaluation
        return loss(pred, target)

    def unscaled(pred, log_sigma):  # the scale factor is detached by design: check sigma unscaled
        torch.manual_seed(1)
        return functional_call(UnscaledTerms(loss), {'loss.log_sigma': log_sigma}, (pred, target))

    # fast mode: the analytical and numerical Jacobians are compared along random directions
    assert torch.autograd.gradcheck(func, (pred, ), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    assert torch.autograd.gradcheck(unscaled, (pred, log_sigma), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize('std, b', [(1e-3, 0.5), (0.1, 0.1), (1.0, 1e-3), (0.3, 0.05)])
def test_laplace_normal_convolution_matches_quadrature(std, b):
    grid = torch.linspace(-12 * (std + b), 12 * (std + b), 400001, dtype=torch.float64)
    laplace = torch.exp(-grid.abs() / b) / (2 * b)
    mean = torch.tensor(0.02, dtype=torch.float64)
    for x in (-3 * (std + b), 0.0, 0.4 * std, 2 * (std + b)):
        normal = torch.exp(-(x - grid - mean)**2 / (2 * std**2)) / math.sqrt(2 * math.pi * std**2)
        expected = torch.trapezoid(laplace * normal, grid)
        got = log_laplace_conv_normal(
            torch.tensor(x, dtype=torch.float64), mean, torch.tensor(std**2, dtype=torch.float64),
            torch.tensor(b, dtype=torch.float64)).exp()
        assert got.item() == pytest.approx(expected.item(), rel=1e-3)


@pytest.mark.parametrize('kernel, plain', [('gaussian', torch.nn.functional.mse_loss),
                                           ('laplace', torch.nn.functional.l1_loss)])
def test_broad_prior_reduces_to_plain_loss(tmp_path, kernel, plain):
    path = str(tmp_path / 'broad.pth')
    save_gmm_prior(toy_prior(weights=(1., ), means=(0., ), variances=(1e6, )), path)
    loss = BDLoss(estimator='gai', prior_path=path, kernel=kernel, init_noise_sigma=0.05).double()
    target = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    pred = (target + 0.1 * torch.randn_like(target)).requires_grad_()
    grad_bd, = torch.autograd.grad(loss(pred, target), pred)
    grad_plain, = torch.autograd.grad(plain(pred, target), pred)
    torch.testing.assert_close(grad_bd, grad_plain, rtol=1e-5, atol=1e-9)
    likelihood, balancing = loss.elementwise_terms(pred, target)
    assert balancing.std() < 1e-6 * balancing.abs().mean()


@pytest.mark.parametrize('kernel', KERNELS)
def test_gai_and_bmc_agree_on_toy_distribution(tmp_path, kernel):
    prior = toy_prior(weights=(0.6, 0.4), means=(0.3, 0.7), variances=(0.01, 0.04), space='pixel')
    path = str(tmp_path / 'toy.pth')
    save_gmm_prior(prior, path)
    torch.manual_seed(0)
    component = (torch.rand(1, 1, 64, 64) < 0.4).double()
    target = torch.where(component > 0, 0.7 + 0.2 * torch.randn(1, 1, 64, 64, dtype=torch.float64),
                         0.3 + 0.1 * torch.randn(1, 1, 64, 64, dtype=torch.float64))
    pred = (target + 0.1 * torch.randn_like(target)).requires_grad_()
    values, grads = {}, {}
    for estimator in ESTIMATORS:
        loss = make_loss(
            estimator, path, kernel=kernel, space='pixel', init_noise_sigma=0.15, bmc_num_refs=4096).double()
        values[estimator] = loss(pred, target)
        grads[estimator], = torch.autograd.grad(values[estimator], pred)
    assert values['bmc'].item() == pytest.approx(values['gai'].item(), rel=0.03, abs=1e-3)
    cosine = torch.nn.functional.cosine_similarity(grads['bmc'].flatten(), grads['gai'].flatten(), dim=0)
    assert cosine > 0.99


@pytest.mark.parametrize('estimator', ESTIMATORS)
@pytest.mark.parametrize('kernel', KERNELS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_no_nan_batch_one_and_identical_targets(estimator, kernel, dtype, prior_path):
    loss = make_loss(estimator, prior_path, kernel=kernel, bmc_num_refs=4, learn_sigma=True).to(dtype)
    cases = [
        (torch.full((1, 3, 8, 8), 0.5, dtype=dtype), torch.full((1, 3, 8, 8), 0.5, dtype=dtype)),
        (torch.rand(1, 3, 4, 4, dtype=dtype), torch.full((1, 3, 4, 4), 0.5, dtype=dtype)),
        (torch.zeros(1, 1, 4, 4, dtype=dtype), torch.ones(1, 1, 4, 4, dtype=dtype)),
    ]
    for pred, target in cases:
        pred = pred.clone().requires_grad_()
        value = loss(pred, target)
        value.backward()
        assert value.dtype == dtype
        assert torch.isfinite(value)
        assert torch.isfinite(pred.grad).all()
        assert torch.isfinite(loss.log_sigma.grad)
        loss.zero_grad()


def test_reduction_weight_and_loss_weight(prior_path):
    target = torch.rand(2, 3, 8, 8)
    pred = target + 0.05 * torch.randn_like(target)
    none = BDLoss(estimator='gai', prior_path=prior_path, reduction='none')(pred, target)
    assert none.shape == pred.shape
    torch.testing.assert_close(BDLoss(estimator='gai', prior_path=prior_path)(pred, target), none.mean())
    torch.testing.assert_close(
        BDLoss(estimator='gai', prior_path=prior_path, reduction='sum', loss_weight=0.5)(pred, target),
        0.5 * none.sum())
    weight = torch.zeros(2, 1, 8, 8)
    weight[0] = 1
    torch.testing.assert_close(
        BDLoss(estimator='gai', prior_path=prior_path)(pred, target, weight), none[0].mean(), rtol=1e-5, atol=1e-6)


def test_balancing_term_changes_the_gradient(prior_path):
    target = torch.rand(2, 3, 16, 16)
    pred = (target + 0.05 * torch.randn_like(target)).requires_grad_()
    loss = BDLoss(estimator='gai', prior_path=prior_path, init_noise_sigma=0.05)
    likelihood, balancing = loss.elementwise_terms(pred, target)
    grad_likelihood, = torch.autograd.grad(likelihood.mean(), pred, retain_graph=True)
    grad_balancing, = torch.autograd.grad(balancing.mean(), pred)
    assert grad_balancing.norm() > 0.1 * grad_likelihood.norm()


def test_sigma_parameters(prior_path):
    learnt = BDLoss(estimator='gai', prior_path=prior_path, learn_sigma=True, init_noise_sigma=0.02)
    params = learnt.sigma_parameters()
    assert len(params) == 1 and params[0] is learnt.log_sigma and params[0].requires_grad
    assert learnt.sigma.item() == pytest.approx(0.02)
    fixed = BDLoss(estimator='bmc', learn_sigma=False)
    assert fixed.sigma_parameters() == [] and not fixed.log_sigma.requires_grad
    assert 'log_sigma' in fixed.state_dict() and 'log_sigma' in learnt.state_dict()
    optimizer = torch.optim.Adam([{'params': params, 'lr': 1e-2}])
    target = torch.rand(2, 3, 16, 16)
    for _ in range(5):
        optimizer.zero_grad()
        learnt(target + 0.1 * torch.randn_like(target), target).backward()
        optimizer.step()
    # the prediction errs by ~0.1, far more than sigma: the likelihood raises sigma, by about lr per Adam step
    assert 0.02 * math.exp(0.04) < learnt.sigma.item() < 0.02 * math.exp(0.055)


@pytest.mark.parametrize('opt, words', [
    ({'reduction': 'avg'}, ['reduction', "'none', 'mean', 'sum'"]),
    ({'estimator': 'exact'}, ['estimator', "'gai', 'bmc'"]),
    ({'kernel': 'cauchy'}, ['kernel', "'gaussian', 'laplace'"]),
    ({'space': 'patch'}, ['space', "'residual', 'pixel'"]),
    ({'scale': 0}, ['scale']),
    ({'scale': 2.0}, ['scale']),
    ({'learn_sigma': 'yes'}, ['learn_sigma', 'True, False']),
    ({'init_noise_sigma': -1.0}, ['init_noise_sigma']),
    ({'init_noise_sigma': float('nan')}, ['init_noise_sigma']),
    ({'bmc_num_refs': 0}, ['bmc_num_refs']),
    ({'loss_weight': 'one'}, ['loss_weight']),
    ({'noise_sigma': 1.0}, ['noise_sigma', 'init_noise_sigma', 'allowed options']),
    ({'weight_decay': 1e-4}, ['weight_decay', 'optim_g.weight_decay']),
    ({'prior_path': 'x.pth'}, ['prior_path', 'gai']),
])
def test_bad_options(opt, words):
    opt = {'estimator': 'bmc', **opt}
    with pytest.raises(ValueError) as info:
        BDLoss(**opt)
    for word in words:
        assert word in str(info.value)


def test_gai_prior_checks(tmp_path, prior_path):
    with pytest.raises(ValueError, match='prior_path'):
        BDLoss(estimator='gai')
    with pytest.raises(ValueError, match='does not exist'):
        BDLoss(estimator='gai', prior_path=str(tmp_path / 'missing.pth'))
    with pytest.raises(ValueError, match='scale'):
        BDLoss(estimator='gai', prior_path=prior_path, scale=2)
    with pytest.raises(ValueError, match='space'):
        BDLoss(estimator='gai', prior_path=prior_path, space='pixel')


def test_prior_save_load_round_trip(tmp_path):
    prior = toy_prior()
    prior['num_images'] = 3
    path = str(tmp_path / 'sub' / 'prior.pth')
    save_gmm_prior(prior, path)
    save_gmm_prior(prior, path)  # overwrite in place
    assert os.listdir(osp.dirname(path)) == ['prior.pth']
    loaded = load_gmm_prior(path)
    for key in ('weights', 'means', 'variances'):
        torch.testing.assert_close(loaded[key], prior[key])
    assert loaded['scale'] == 4 and loaded['space'] == 'residual' and loaded['num_images'] == 3
    raw = torch.load(path, map_location='cpu', weights_only=True)
    assert isinstance(raw['weights'], torch.Tensor)
    bad = dict(prior, variances=torch.tensor([1., -1., 1.], dtype=torch.float64))
    with pytest.raises(ValueError, match='positive'):
        save_gmm_prior(bad, path)


def test_fit_gmm_1d_recovers_mixture():
    generator = torch.Generator().manual_seed(0)
    values = torch.cat([
        0.01 * torch.randn(60000, generator=generator, dtype=torch.float64),
        0.5 + 0.2 * torch.randn(40000, generator=generator, dtype=torch.float64)
    ])
    gmm = fit_gmm_1d(values, 2)
    torch.testing.assert_close(gmm['weights'], torch.tensor([0.6, 0.4], dtype=torch.float64), atol=0.01, rtol=0)
    torch.testing.assert_close(gmm['means'], torch.tensor([0., 0.5], dtype=torch.float64), atol=0.01, rtol=0)
    torch.testing.assert_close(gmm['variances'].sqrt(), torch.tensor([0.01, 0.2], dtype=torch.float64),
                               atol=0.005, rtol=0)


def test_target_lowpass_residual_space():
    flat = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(target_lowpass(flat, 4), flat)
    assert target_lowpass(flat, 4, 'pixel').abs().max() == 0
    odd = torch.rand(1, 1, 10, 7)
    assert target_lowpass(odd, 4).shape == odd.shape


def test_fit_prior_folder_and_lmdb_agree(tmp_path):
    folder_prior = fit_gmm_prior(FIXTURES_HR, 4, num_components=4)
    assert folder_prior['num_images'] == 4 and folder_prior['num_values'] == 4 * 96 * 96 * 3
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs
    names = sorted(os.listdir(FIXTURES_HR))
    lmdb_path = str(tmp_path / 'hr.lmdb')
    make_lmdb_from_imgs(FIXTURES_HR, lmdb_path, names, [osp.splitext(n)[0] for n in names])
    lmdb_prior = fit_gmm_prior(lmdb_path, 4, num_components=4)
    for key in ('weights', 'means', 'variances'):
        torch.testing.assert_close(lmdb_prior[key], folder_prior[key])
    with pytest.raises(ValueError, match='neither'):
        fit_gmm_prior(str(tmp_path / 'nothing'), 4)


def test_cli_on_fixtures(tmp_path):
    out = str(tmp_path / 'prior_x4.pth')
    result = subprocess.run([
        sys.executable, '-m', 'wbsr_plugin.fit_prior', '-i', FIXTURES_HR, '-o', out, '-s', '4', '--components',
        '4', '--max-pixels', '20000'
    ],
                            cwd=ROOT,
                            capture_output=True,
                            text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    prior = load_gmm_prior(out)
    assert prior['weights'].numel() == 4 and prior['scale'] == 4 and prior['num_values'] == 20000
    loss = build_loss({'type': 'BDLoss', 'estimator': 'gai', 'prior_path': out})
    target = torch.rand(1, 3, 16, 16)
    assert torch.isfinite(loss(target + 0.01 * torch.randn_like(target), target))
    bad = subprocess.run([sys.executable, '-m', 'wbsr_plugin.fit_prior', '-i', str(tmp_path / 'none'), '-o', out,
                          '-s', '4'],
                         cwd=ROOT,
                         capture_output=True,
                         text=True,
                         timeout=300)
    assert bad.returncode != 0 and 'error:' in bad.stderr and 'Traceback' not in bad.stderr


def test_float64_matches_float32(prior_path):
    target = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    pred = target + 0.05 * torch.randn_like(target)
    for kernel in KERNELS:
        loss = BDLoss(estimator='gai', prior_path=prior_path, kernel=kernel)
        value32 = loss(pred.float(), target.float())
        value64 = loss.double()(pred, target)
        assert value64.dtype == torch.float64
        assert value64.item() == pytest.approx(value32.item(), rel=1e-4, abs=1e-6)
    assert np.isfinite(value64.item())


@pytest.mark.parametrize('kernel', KERNELS)
def test_tabulated_balancing_matches_direct_evaluation(prior_path, kernel):
    loss = BDLoss(estimator='gai', prior_path=prior_path, kernel=kernel, init_noise_sigma=0.03).double()
    target = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    pred = target + 0.1 * torch.randn_like(target)
    _, balancing, _ = loss.log_likelihood_terms(pred, target)
    torch.testing.assert_close(balancing, direct_gai_balancing(pred, prior_path, 0.03, kernel), rtol=0, atol=1e-6)


def direct_gai_balancing(pred, prior_path, sigma, kernel):
    """The 'gai' integral of every element evaluated directly (no table)."""
    prior = load_gmm_prior(prior_path)
    x = (pred - lowpass(pred, 4))[..., None]
    sigma = torch.tensor(sigma, dtype=torch.float64)
    if kernel == 'gaussian':
        var = prior['variances'] + sigma**2
        log_components = -0.5 * torch.log(2 * math.pi * var) - 0.5 * (x - prior['means'])**2 / var
    else:
        log_components = log_laplace_conv_normal(x, prior['means'], prior['variances'], sigma)
    return torch.logsumexp(log_components + prior['weights'].log(), dim=-1)


def _raise_sync(*args, **kwargs):
    raise AssertionError('BDLoss.forward read a tensor on the host')


@pytest.mark.parametrize('estimator', ESTIMATORS)
@pytest.mark.parametrize('kernel', KERNELS)
@pytest.mark.parametrize('learn_sigma', [False, True])
def test_forward_and_backward_never_read_tensors_on_the_host(estimator, kernel, learn_sigma, prior_path,
                                                             monkeypatch):
    loss = make_loss(estimator, prior_path, kernel=kernel, learn_sigma=learn_sigma, bmc_num_refs=8)
    target = torch.rand(2, 3, 16, 16)
    for name in ('item', 'tolist', '__float__', '__int__', '__bool__', '__index__'):
        monkeypatch.setattr(torch.Tensor, name, _raise_sync)
    for _ in range(2):  # the first call builds the tables, the second reuses them
        pred = (target + 0.05 * torch.randn_like(target)).requires_grad_()
        loss(pred, target).backward()
    monkeypatch.undo()
    assert torch.isfinite(pred.grad).all()


def test_gai_table_is_built_once_per_prior_sigma_device_and_dtype(prior_path, monkeypatch):
    from wbsr_plugin.losses import bd_loss
    builds = []
    build = bd_loss.hermite_coefficients
    monkeypatch.setattr(bd_loss, 'hermite_coefficients',
                        lambda *args, **kwargs: builds.append(args[5]) or build(*args, **kwargs))
    loss = BDLoss(estimator='gai', prior_path=prior_path)
    target = torch.rand(2, 3, 16, 16)
    pred = target + 0.05 * torch.randn_like(target)
    values = [loss(pred, target) for _ in range(3)]
    assert builds == [torch.float32] and values[0] == values[2]
    loss.double()(pred.double(), target.double())
    assert builds == [torch.float32, torch.float64]

    # a resumed sigma rebuilds the table, and the loss is that of a loss built with that sigma
    other = BDLoss(estimator='gai', prior_path=prior_path, init_noise_sigma=0.03)
    loss.float().load_state_dict(other.state_dict())
    torch.testing.assert_close(loss(pred, target), other(pred, target))
    assert len(builds) == 4
    loss(pred, target)
    assert len(builds) == 4

    learnt = BDLoss(estimator='gai', prior_path=prior_path, learn_sigma=True)
    learnt(pred, target)
    learnt(pred, target)
    assert len(builds) == 6  # sigma is learnt: every call builds a table with its gradient


@pytest.mark.parametrize('kernel', KERNELS)
def test_table_continues_exactly_beyond_its_range(prior_path, kernel):
    loss = BDLoss(estimator='gai', prior_path=prior_path, kernel=kernel).double()
    values = torch.linspace(-3, 3, 2 * 3 * 16 * 8, dtype=torch.float64).reshape(2, 3, 16, 8)
    # horizontal pairs (v, -v): every 4 x 4 block averages to 0, so the residuals are the values, up to +-3
    pred = torch.stack([values, -values], dim=-1).reshape(2, 3, 16, 16).requires_grad_()
    _, balancing, _ = loss.log_likelihood_terms(pred, pred.detach())
    direct = direct_gai_balancing(pred, prior_path, 0.01, kernel)
    torch.testing.assert_close(balancing, direct, rtol=1e-4, atol=1e-6)
    grad, = torch.autograd.grad(balancing.sum(), pred)
    grad_direct, = torch.autograd.grad(direct.sum(), pred)
    torch.testing.assert_close(grad, grad_direct, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_lowpass_matrix_products_match_pooling_and_interpolation(dtype):
    for height, width, scale in [(128, 128, 4), (10, 7, 4), (33, 50, 3), (96, 64, 2), (5, 9, 4)]:
        img = torch.rand(2, 3, height, width, dtype=dtype, requires_grad=True)
        expected = torch.nn.functional.interpolate(
            torch.nn.functional.avg_pool2d(img, scale, ceil_mode=True), size=(height, width), mode='bilinear',
            align_corners=False)
        got = lowpass(img, scale)
        tol = 1e-6 if dtype == torch.float32 else 1e-14
        torch.testing.assert_close(got, expected, rtol=0, atol=tol)
        grad_out = torch.randn_like(got)
        grad, = torch.autograd.grad(got, img, grad_out)
        grad_expected, = torch.autograd.grad(expected, img, grad_out)
        torch.testing.assert_close(grad, grad_expected, rtol=0, atol=10 * tol)


# --- Options: exact messages, documented defaults, state dict ---------------------------------------------------------

ALLOWED_OPTIONS = ("['bmc_num_refs', 'estimator', 'init_noise_sigma', 'kernel', 'learn_sigma', 'loss_weight', "
                   "'prior_path', 'reduction', 'scale', 'space']")
WEIGHT_DECAY_HINT = ' (the weight-decay term lambda belongs in train.optim_g.weight_decay = 2 * lambda)'


@pytest.mark.parametrize('opt, message', [
    ({'reduction': 'avg'}, "BDLoss: reduction must be one of ['none', 'mean', 'sum'], got 'avg'."),
    ({'estimator': 'exact'}, "BDLoss: estimator must be one of ['gai', 'bmc'], got 'exact'."),
    ({'kernel': 'cauchy'}, "BDLoss: kernel must be one of ['gaussian', 'laplace'], got 'cauchy'."),
    ({'space': 'patch'}, "BDLoss: space must be one of ['residual', 'pixel'], got 'patch'."),
    ({'scale': 0}, 'BDLoss: scale must be an integer >= 1, got 0.'),
    ({'scale': 2.0}, 'BDLoss: scale must be an integer >= 1, got 2.0.'),
    ({'scale': True}, 'BDLoss: scale must be an integer >= 1, got True.'),
    ({'learn_sigma': 'yes'}, "BDLoss: learn_sigma must be one of [True, False], got 'yes'."),
    ({'init_noise_sigma': 0}, 'BDLoss: init_noise_sigma must be a finite number > 0, got 0.'),
    ({'init_noise_sigma': -1.0}, 'BDLoss: init_noise_sigma must be a finite number > 0, got -1.0.'),
    ({'init_noise_sigma': float('inf')}, 'BDLoss: init_noise_sigma must be a finite number > 0, got inf.'),
    ({'init_noise_sigma': '0.1'}, "BDLoss: init_noise_sigma must be a finite number > 0, got '0.1'."),
    ({'init_noise_sigma': True}, 'BDLoss: init_noise_sigma must be a finite number > 0, got True.'),
    ({'bmc_num_refs': 0}, 'BDLoss: bmc_num_refs must be an integer >= 1, got 0.'),
    ({'bmc_num_refs': 8.0}, 'BDLoss: bmc_num_refs must be an integer >= 1, got 8.0.'),
    ({'loss_weight': 'one'}, "BDLoss: loss_weight must be a finite number, got 'one'."),
    ({'loss_weight': float('nan')}, 'BDLoss: loss_weight must be a finite number, got nan.'),
    ({'loss_weight': True}, 'BDLoss: loss_weight must be a finite number, got True.'),
    ({'noise_sigma': 1.0}, f"BDLoss: unknown option(s) ['noise_sigma']; allowed options are {ALLOWED_OPTIONS}."),
    ({'weight_decay': 1e-4},
     f"BDLoss: unknown option(s) ['weight_decay']{WEIGHT_DECAY_HINT}; allowed options are {ALLOWED_OPTIONS}."),
    ({'lambda': 1e-4},
     f"BDLoss: unknown option(s) ['lambda']{WEIGHT_DECAY_HINT}; allowed options are {ALLOWED_OPTIONS}."),
    ({'lambda_wd': 1e-4, 'noise_sigma': 1.0},
     f"BDLoss: unknown option(s) ['lambda_wd', 'noise_sigma']{WEIGHT_DECAY_HINT}; "
     f"allowed options are {ALLOWED_OPTIONS}."),
    ({'prior_path': 'x.pth'}, "BDLoss: prior_path is used by estimator 'gai' only; remove it for 'bmc'."),
])
def test_bad_options_raise_their_exact_message(opt, message):
    """Protects each option's ValueError text: the option named, the allowed values, the weight-decay hint."""
    with pytest.raises(ValueError) as info:
        BDLoss(**{'estimator': 'bmc', **opt})
    assert str(info.value) == message


def test_gai_prior_errors_exact_messages(tmp_path, prior_path):
    """Protects the 'gai' prior messages: missing path (with the fit command), non-string path, scale/space mismatch."""
    cases = [
        ({}, "BDLoss: estimator 'gai' needs prior_path (fit one with `python -m wbsr_plugin.fit_prior -i HR_DIR -o "
         "PRIOR.pth -s SCALE`), or use estimator 'bmc'."),
        ({'prior_path': 123}, 'BDLoss: prior_path must be a string, got 123.'),
        ({'prior_path': prior_path, 'scale': 2},
         f"BDLoss: scale is 2 but the prior '{prior_path}' was fitted with scale 4; refit it or set scale: 4."),
        ({'prior_path': prior_path, 'space': 'pixel'},
         f"BDLoss: space is 'pixel' but the prior '{prior_path}' was fitted with space 'residual'; refit it or set "
         "space: 'residual'."),
    ]
    for opt, message in cases:
        with pytest.raises(ValueError) as info:
            BDLoss(estimator='gai', **opt)
        assert str(info.value) == message


def test_pixel_space_prior_accepts_any_scale(tmp_path):
    """Protects the exemption: in pixel space the low-pass is not used, so the prior's scale need not match."""
    path = str(tmp_path / 'pixel.pth')
    save_gmm_prior(toy_prior(scale=2, space='pixel'), path)
    loss = BDLoss(estimator='gai', prior_path=path, space='pixel', scale=4)
    assert loss.scale == 4
    target = torch.rand(1, 1, 8, 8)
    assert torch.isfinite(loss(target + 0.01, target))


def test_smallest_valid_scale_and_reference_count():
    """Protects the lower bounds: scale 1 and bmc_num_refs 1 are valid (">= 1")."""
    torch.manual_seed(0)
    target = torch.rand(1, 1, 8, 8)
    loss = BDLoss(estimator='bmc', scale=1, bmc_num_refs=1)
    assert loss.scale == 1 and loss.bmc_num_refs == 1
    assert torch.isfinite(loss(target + 0.01, target))


def test_documented_defaults(prior_path):
    """Protects the defaults of docs/bdloss.md: estimator gai, gaussian, residual, x4, mean, weight 1, sigma 0.01."""
    loss = BDLoss(prior_path=prior_path)
    assert (loss.estimator, loss.kernel, loss.space, loss.scale, loss.reduction, loss.loss_weight,
            loss.learn_sigma, loss.prior_path) == ('gai', 'gaussian', 'residual', 4, 'mean', 1.0, False, prior_path)
    assert loss.sigma.item() == pytest.approx(0.01, rel=1e-6)
    bmc = BDLoss(estimator='bmc')
    assert bmc.bmc_num_refs == 64 and bmc.prior_path is None


def test_prior_is_not_part_of_the_state_dict(prior_path):
    """Protects persistent=False of the prior buffers: checkpoints hold sigma only, the prior comes from prior_path."""
    loss = BDLoss(estimator='gai', prior_path=prior_path)
    assert {name for name, _ in loss.named_buffers()} == {'log_sigma', 'gmm_weights', 'gmm_means', 'gmm_variances'}
    assert list(loss.state_dict()) == ['log_sigma']
    assert list(BDLoss(estimator='gai', prior_path=prior_path, learn_sigma=True).state_dict()) == ['log_sigma']


@pytest.mark.parametrize('estimator, kernel, sigma', [('gai', 'gaussian', 0.004), ('gai', 'laplace', 0.02),
                                                      ('bmc', 'gaussian', 0.004)])
def test_loaded_sigma_gives_exactly_the_loss_built_with_it(prior_path, estimator, kernel, sigma):
    """Protects _load_from_state_dict and the table cache: after loading a sigma (through a parent module, without a
    dtype change in between), the table is rebuilt on that sigma's lattice (spacing, range): the loss equals, bit for
    bit, that of a loss built with that sigma."""
    loss = make_loss(estimator, prior_path, kernel=kernel, init_noise_sigma=0.05, bmc_num_refs=16)
    other = make_loss(estimator, prior_path, kernel=kernel, init_noise_sigma=sigma, bmc_num_refs=16)
    lattice = (loss._spacing(), loss._table_range())
    torch.manual_seed(0)
    target = torch.rand(2, 3, 16, 16)
    pred = target + 0.02 * torch.randn_like(target)
    loss(pred, target)  # builds (for 'gai' caches) the table of sigma 0.05
    torch.nn.ModuleDict({'cri': loss}).load_state_dict({'cri.log_sigma': other.log_sigma.clone()})
    assert loss.sigma.item() == other.sigma.item()
    assert (loss._spacing(), loss._table_range()) == (other._spacing(), other._table_range()) != lattice
    torch.manual_seed(1)
    got = loss(pred, target)
    torch.manual_seed(1)
    assert torch.equal(got, other(pred, target))


def test_state_dict_without_sigma_keeps_sigma(prior_path):
    """Protects loading a state dict that lacks log_sigma (strict=False): it is reported missing, sigma is kept."""
    loss = BDLoss(estimator='gai', prior_path=prior_path, init_noise_sigma=0.02)
    result = loss.load_state_dict({}, strict=False)
    assert result.missing_keys == ['log_sigma']
    target = torch.rand(1, 3, 16, 16)
    pred = target + 0.02 * torch.randn_like(target)
    fresh = BDLoss(estimator='gai', prior_path=prior_path, init_noise_sigma=0.02)
    assert torch.equal(loss(pred, target), fresh(pred, target))


def test_shape_errors_and_guards_exact_messages(prior_path):
    """Protects the shape check (same shape and 4-D) and the guards against a kernel/estimator changed after build."""
    loss = BDLoss(estimator='gai', prior_path=prior_path)
    for pred, target in [(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 4)), (torch.rand(3, 8, 8), torch.rand(3, 8, 8))]:
        with pytest.raises(ValueError) as info:
            loss(pred, target)
        assert str(info.value) == (f'BDLoss expects pred and target of the same shape (N, C, H, W), got '
                                   f'{tuple(pred.shape)} and {tuple(target.shape)}.')
    pred = torch.rand(1, 1, 8, 8)
    loss.kernel = 'cauchy'
    with pytest.raises(ValueError) as info:
        loss(pred, pred)
    assert str(info.value) == "kernel must be one of ['gaussian', 'laplace'], got 'cauchy'."
    loss.kernel, loss.estimator = 'gaussian', 'exact'
    with pytest.raises(ValueError) as info:
        loss(pred, pred)
    assert str(info.value) == "estimator must be one of ['gai', 'bmc'], got 'exact'."
    with pytest.raises(ValueError) as info:
        kernel_rho(pred, 'cauchy')
    assert str(info.value) == "kernel must be one of ['gaussian', 'laplace'], got 'cauchy'."


def test_kernel_rho_and_its_derivative():
    """Protects kernel_rho: -log K = a * rho + const with rho = d^2 (Gaussian) or |d| (Laplace), and d rho / d d."""
    diff = torch.tensor([-0.5, 0.25, 2.0], dtype=torch.float64)
    rho, slope = kernel_rho(diff, 'gaussian')
    assert rho.tolist() == [0.25, 0.0625, 4.0] and slope.tolist() == [-1.0, 0.5, 4.0]
    rho, slope = kernel_rho(diff, 'laplace')
    assert rho.tolist() == [0.5, 0.25, 2.0] and slope.tolist() == [-1.0, 1.0, 1.0]


def test_elementwise_terms_sum_to_the_unreduced_loss(prior_path):
    """Protects elementwise_terms: both terms carry the detached factor 2 sigma^2, their sum is the loss per element."""
    loss = BDLoss(estimator='gai', prior_path=prior_path, reduction='none', init_noise_sigma=0.05).double()
    target = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    pred = target + 0.05 * torch.randn_like(target)
    likelihood, balancing = loss.elementwise_terms(pred, target)
    raw_likelihood, raw_balancing, factor = loss.log_likelihood_terms(pred, target)
    assert factor.item() == pytest.approx(2 * 0.05**2, rel=1e-6)
    torch.testing.assert_close(likelihood, raw_likelihood * 2 * 0.05**2, rtol=1e-6, atol=0)
    torch.testing.assert_close(balancing, raw_balancing * 2 * 0.05**2, rtol=1e-6, atol=0)
    torch.testing.assert_close(likelihood + balancing, loss(pred, target), rtol=1e-12, atol=1e-15)


# --- Precision of the inputs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize('estimator', ESTIMATORS)
@pytest.mark.parametrize('kernel', KERNELS)
def test_float64_inputs_are_computed_in_float64_by_a_float32_loss(estimator, kernel, prior_path):
    """Protects the promotion to the input's precision: a float32 loss (buffers, sigma) on float64 inputs computes in
    float64 throughout, exactly as the same loss converted with .double()."""
    loss = make_loss(estimator, prior_path, kernel=kernel, init_noise_sigma=0.03, bmc_num_refs=16)
    torch.manual_seed(0)
    target = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    pred = target + 0.05 * torch.randn_like(target)
    torch.manual_seed(3)
    got = loss(pred, target)
    torch.manual_seed(3)
    expected = copy.deepcopy(loss).double()(pred, target)
    assert got.dtype == torch.float64 and torch.equal(got, expected)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('estimator', ESTIMATORS)
def test_half_inputs_are_computed_in_float32(dtype, estimator, prior_path):
    """Protects the promotion of half inputs to float32 (targets included, for the 'bmc' references)."""
    loss = make_loss(estimator, prior_path, init_noise_sigma=0.03, bmc_num_refs=16)
    torch.manual_seed(0)
    target = torch.rand(1, 3, 16, 16).to(dtype)
    pred = (target.float() + 0.05 * torch.randn(1, 3, 16, 16)).to(dtype).requires_grad_()
    torch.manual_seed(3)
    got = loss(pred, target)
    torch.manual_seed(3)
    expected = loss(pred.detach().float(), target.float())
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    got.backward()
    assert pred.grad.dtype == dtype and torch.isfinite(pred.grad.float()).all()


def test_bmc_table_is_rebuilt_for_every_batch():
    """Protects cacheable=False for 'bmc': its table depends on the batch's references and must not be reused."""
    loss = BDLoss(estimator='bmc', bmc_num_refs=16, init_noise_sigma=0.03)
    torch.manual_seed(0)
    first, second = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    loss(first + 0.05, first)
    torch.manual_seed(5)
    got = loss(second + 0.05, second)
    torch.manual_seed(5)
    assert torch.equal(got, BDLoss(estimator='bmc', bmc_num_refs=16, init_noise_sigma=0.03)(second + 0.05, second))


# --- The Hermite table: lattice, range, continuation beyond it --------------------------------------------------------


def test_table_spacing_is_the_largest_power_of_two_within_a_sixteenth_of_the_width():
    """Protects table_spacing: 2^floor(log2(width / 16)), clamped to [2^-16, 2^-6]."""
    assert table_spacing(16 * 2.0**-10) == 2.0**-10  # exactly a power of two
    assert table_spacing(16 * 2.0**-10 * 0.999) == 2.0**-11
    assert table_spacing(0.01) == 2.0**-11  # 0.01 / 16 = 6.25e-4 in [2^-11, 2^-10)
    assert table_spacing(16 * 2.0**-6) == 2.0**-6
    assert table_spacing(1.0) == 2.0**-6  # 1 / 16 = 2^-4, capped
    assert table_spacing(16 * 2.0**-16) == 2.0**-16
    assert table_spacing(1e-9) == 2.0**-16  # floored
    assert table_spacing(0.0) == 2.0**-16


def test_spacing_follows_the_narrowest_kernel_width(prior_path):
    """Protects _spacing: width sqrt(S_min + sigma^2) ('gai' Gaussian), min(sigma, sqrt(S_min)) ('gai' Laplace),
    sigma ('bmc'); toy prior S_min = 1e-4, sigma 0.03."""
    gai_gaussian = make_loss('gai', prior_path, init_noise_sigma=0.03)
    gai_laplace = make_loss('gai', prior_path, kernel='laplace', init_noise_sigma=0.03)
    bmc = make_loss('bmc', kernel='gaussian', init_noise_sigma=0.03)
    assert gai_gaussian._spacing() == 2.0**-9  # sqrt(1e-3) / 16 = 1.98e-3
    assert gai_laplace._spacing() == 2.0**-11  # 0.01 / 16 = 6.25e-4
    assert bmc._spacing() == 2.0**-10  # 0.03 / 16 = 1.875e-3


def test_table_range_is_fixed_except_for_gai_with_the_laplace_kernel(tmp_path, prior_path):
    """Protects _table_range: TABLE_RANGES[space] unless 'gai' + 'laplace', which covers the linear onsets
    mu -+ S / sigma of every component (toy prior, sigma 0.01: [-2.1, 1.9]) with a margin below one unit, and
    never goes beyond MAX_TABLE_WIDENING past the fixed range."""
    pixel_path = str(tmp_path / 'pixel.pth')
    save_gmm_prior(toy_prior(space='pixel'), pixel_path)
    assert make_loss('gai', prior_path)._table_range() == (-1.5, 1.5)
    assert make_loss('gai', pixel_path, space='pixel')._table_range() == (-1.0, 2.0)
    for kernel in KERNELS:
        assert make_loss('bmc', kernel=kernel)._table_range() == (-1.5, 1.5)
        assert make_loss('bmc', kernel=kernel, space='pixel')._table_range() == (-1.0, 2.0)
    lo, hi = make_loss('gai', prior_path, kernel='laplace')._table_range()
    assert -2.1 - 1 < lo < -2.1 - 4 * math.sqrt(0.02) and 1.9 + 4 * math.sqrt(0.02) < hi < 1.9 + 1
    wide = str(tmp_path / 'wide.pth')
    save_gmm_prior(toy_prior(weights=(1., ), means=(0.2, ), variances=(0.1, )), wide)  # S / sigma = 10
    assert make_loss('gai', wide, kernel='laplace')._table_range() == (-5.5, 5.5)


def test_hermite_table_of_a_cubic_is_exact_inside_and_quadratic_outside():
    """Protects hermite_coefficients and TableLookup: a cubic is reproduced exactly on the lattice's range; below
    the first and above the last node the table continues by the quadratic of the end node's value, slope and
    finite-difference curvature; gradients in x and in the function's parameter follow."""
    scale = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    # nodes -1, -0.75, ..., 1: f = x^3, f' = 3 x^2; end curvature (f'(1) - f'(0.75)) / 0.25 = 5.25, mirrored below
    coeffs = hermite_coefficients(lambda nodes: scale * nodes**3, -4, 9, 0.25, 'cpu', torch.float64, True)
    assert coeffs.shape == (4, 10) and coeffs.dtype == torch.float64
    coeffs32 = hermite_coefficients(lambda nodes: nodes**3, -4, 9, 0.25, 'cpu', torch.float32, False)
    assert coeffs32.dtype == torch.float32
    x = torch.tensor([-7.0, -2.5, -1.1, -1.0, -0.9, -0.3, 0.0, 0.4, 0.95, 1.0, 1.05, 2.0, 6.0], dtype=torch.float64)
    x.requires_grad_()
    out = TableLookup.apply(x, coeffs, -4.0, 4.0)
    below, above = x.detach() + 1, x.detach() - 1
    cube = torch.where(x < -1, -1 + 3 * below - 2.625 * below**2,
                       torch.where(x > 1, 1 + 3 * above + 2.625 * above**2, x.detach()**3))
    slope = torch.where(x < -1, 3 - 5.25 * below, torch.where(x > 1, 3 + 5.25 * above, 3 * x.detach()**2))
    torch.testing.assert_close(out, 1.5 * cube, rtol=1e-12, atol=1e-12)
    grad_x, grad_scale = torch.autograd.grad(out.sum(), [x, scale])
    torch.testing.assert_close(grad_x, 1.5 * slope, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_scale, cube.sum(), rtol=1e-12, atol=1e-12)


def np_gai_log_integral(x, prior, sigma, kernel):
    """``log sum_i phi_i (K * N(mu_i, S_i))(x)`` in numpy/scipy, stable far out (log erfc through erfcx), for the
    prior as BDLoss stores it (float32)."""
    weights, means, variances = (np.asarray(prior[key], dtype=np.float32).astype(np.float64)
                                 for key in ('weights', 'means', 'variances'))
    d = x[..., None] - means
    if kernel == 'gaussian':
        total = variances + sigma**2
        log_components = -0.5 * np.log(2 * np.pi * total) - 0.5 * d**2 / total
    else:
        std = np.sqrt(variances)

        def log_half(d):  # log of exp(S / (2 b^2) - d / b) erfc(u) / (4 b), u = (std / b - d / std) / sqrt(2)
            u = (std / sigma - d / std) / math.sqrt(2)
            log_erfc = np.where(u > 0,
                                np.log(scipy.special.erfcx(np.maximum(u, 0))) - np.maximum(u, 0)**2,
                                np.log(scipy.special.erfc(np.minimum(u, 0))))
            return variances / (2 * sigma**2) - d / sigma + log_erfc - math.log(4 * sigma)

        log_components = np.logaddexp(log_half(d), log_half(-d))
    return scipy.special.logsumexp(log_components + np.log(weights), axis=-1)


def pixel_balancing(loss, x):
    """The 'gai' balancing term and its gradient at the values ``x``: in pixel space the values are the predictions."""
    pred = torch.tensor(x, dtype=torch.float64).reshape(1, 1, 1, -1).requires_grad_()
    _, balancing, _ = loss.log_likelihood_terms(pred, pred.detach())
    grad, = torch.autograd.grad(balancing.sum(), pred)
    return balancing.detach().reshape(-1).numpy(), grad.reshape(-1).numpy()


def test_gaussian_table_continues_exactly_beyond_its_range(tmp_path):
    """Protects the quadratic continuation (rows 0 and -1 of the table, the clamp of the row index): far out the
    Gaussian 'gai' integral is the widest component's log-density, a quadratic, so the table stays exact to rounding
    (values and gradients) far below and above its range [-1, 2], and at its edges."""
    path = str(tmp_path / 'pixel.pth')
    save_gmm_prior(toy_prior(space='pixel'), path)
    loss = BDLoss(estimator='gai', prior_path=path, space='pixel').double()
    x = np.concatenate([np.linspace(-6, 7, 131), [-1, -1 - 1e-7, -1 + 1e-7, 2, 2 - 1e-7, 2 + 1e-7]])
    value, grad = pixel_balancing(loss, x)
    sigma = loss.sigma.item()
    np.testing.assert_allclose(value, np_gai_log_integral(x, toy_prior(), sigma, 'gaussian'), rtol=1e-10, atol=1e-7)
    eps = 1e-6
    expected_grad = (np_gai_log_integral(x + eps, toy_prior(), sigma, 'gaussian') -
                     np_gai_log_integral(x - eps, toy_prior(), sigma, 'gaussian')) / (2 * eps)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-7, atol=1e-5)


def test_gaussian_table_is_accurate_up_to_the_edges_of_its_range(tmp_path):
    """Protects the extent of the table (num_nodes): with two prior components at the upper edge 2 of the pixel range,
    where the integral is not quadratic, the table is interpolated (error < 1e-6) up to and including the edge."""
    path = str(tmp_path / 'edge.pth')
    prior = toy_prior(weights=(0.5, 0.5), means=(1.95, 2.02), variances=(1e-3, 1e-3), space='pixel')
    save_gmm_prior(prior, path)
    loss = BDLoss(estimator='gai', prior_path=path, space='pixel').double()
    x = np.concatenate([np.linspace(-1, 2, 1501), [1.999, 1.9995]])
    value, _ = pixel_balancing(loss, x)
    np.testing.assert_allclose(value, np_gai_log_integral(x, prior, loss.sigma.item(), 'gaussian'), rtol=0, atol=1e-6)


@pytest.mark.parametrize('sigma', [0.01, 0.05])
def test_laplace_table_continues_exactly_where_the_integral_is_linear(tmp_path, sigma):
    """Protects the Laplace 'gai' table: its range reaches where every component's integral has turned linear
    (mu -+ S / sigma, plus a margin), and beyond it the table continues by a straight line, to |x| = 8."""
    path = str(tmp_path / 'pixel.pth')
    save_gmm_prior(toy_prior(space='pixel'), path)
    loss = BDLoss(estimator='gai', prior_path=path, space='pixel', kernel='laplace', init_noise_sigma=sigma).double()
    x = np.linspace(-8, 8, 801)
    value, grad = pixel_balancing(loss, x)
    sigma = loss.sigma.item()
    expected = np_gai_log_integral(x, toy_prior(), sigma, 'laplace')
    eps = 1e-6
    expected_grad = (np_gai_log_integral(x + eps, toy_prior(), sigma, 'laplace') -
                     np_gai_log_integral(x - eps, toy_prior(), sigma, 'laplace')) / (2 * eps)
    np.testing.assert_allclose(value, expected, rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(grad * sigma, expected_grad * sigma, rtol=0, atol=1e-5)


def test_laplace_reference_sum_counts_ties_as_below():
    """Protects the split of log_sum_laplace_kernels: P sums the references r_j <= x, Q those > x, so at a tie the
    reference contributes its right derivative -a (the value is the same either way)."""
    a = 20.0
    refs = torch.tensor([0.3, 0.0, -0.2], dtype=torch.float64)
    x = torch.tensor([0.0, 0.3, 0.1], dtype=torch.float64, requires_grad=True)
    out = log_sum_laplace_kernels(x, refs, a)
    grad, = torch.autograd.grad(out.sum(), x)
    expected, expected_grad = [], []
    for xi in (0.0, 0.3, 0.1):
        terms = [math.exp(-a * abs(xi - r)) for r in (0.3, 0.0, -0.2)]
        slopes = [-a if xi >= r else a for r in (0.3, 0.0, -0.2)]  # the kernel of r_j <= x falls to the right
        expected.append(math.log(sum(terms)))
        expected_grad.append(sum(t * s for t, s in zip(terms, slopes)) / sum(terms))
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, torch.tensor(expected_grad, dtype=torch.float64), rtol=1e-12, atol=1e-12)
