import math
import os
import subprocess
import sys
from os import path as osp

import numpy as np
import pytest
import torch
from torch.func import functional_call

import wbsr_plugin  # noqa: F401
from basicsr.losses import build_loss
from basicsr.utils.registry import LOSS_REGISTRY
from wbsr_plugin.losses.bd_loss import BDLoss, _log_laplace_conv_normal
from wbsr_plugin.losses.gmm_prior_util import (fit_gmm_1d, fit_gmm_prior, load_gmm_prior, save_gmm_prior,
                                               lowpass, target_lowpass)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FIXTURES_HR = osp.join(ROOT, 'tests', 'fixtures', 'hr')
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
        got = _log_laplace_conv_normal(
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
        log_components = _log_laplace_conv_normal(x, prior['means'], prior['variances'], sigma)
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
    build = bd_loss._hermite_coefficients
    monkeypatch.setattr(bd_loss, '_hermite_coefficients', lambda *args: builds.append(args[5]) or build(*args))
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
    pred = torch.linspace(-3, 3, 2 * 3 * 16 * 16, dtype=torch.float64).reshape(2, 3, 16, 16)
    pred = pred[:, :, torch.randperm(16)].requires_grad_()  # residuals up to about +-3
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
