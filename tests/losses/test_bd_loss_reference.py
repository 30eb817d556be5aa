"""BDLoss against an independent reference: the formula of docs/bdloss.md written out in plain numpy.

The reference shares no code with ``wbsr_plugin.losses``: its low-pass is built from the definition
(area mean over ``scale`` x ``scale`` blocks, bilinear upsampling with half-pixel centres), its
balancing integral is evaluated directly per element (no table), and its gradients are central
differences. The prior is narrow enough that the balancing term moves the gradient by a large
fraction, so a wrong sign or a dropped term cannot hide in the tolerance.
"""
import math

import numpy as np
import pytest
import torch
from scipy.special import erfc

from wbsr_plugin.losses.bd_loss import BDLoss
from wbsr_plugin.losses.gmm_prior_util import save_gmm_prior

SCALE = 4
SIGMA = 0.05
PRIOR = {'weights': (0.6, 0.3, 0.1), 'means': (0.0, 0.02, -0.05), 'variances': (1e-4, 2e-3, 1e-2)}
NUM_REFS = 16


def bilinear_matrix(out_len, in_len, scale):
    """Rows: output pixels; columns: input pixels; bilinear weights with half-pixel centres, edges clamped."""
    matrix = np.zeros((out_len, in_len))
    for i in range(out_len):
        src = max((i + 0.5) / scale - 0.5, 0.0)
        i0 = min(int(math.floor(src)), in_len - 1)
        i1 = min(i0 + 1, in_len - 1)
        frac = src - i0
        matrix[i, i0] += 1 - frac
        matrix[i, i1] += frac
    return matrix


def np_lowpass(img, scale):
    """Area-downsample by ``scale`` (sides are multiples of it), then bilinear upsample back."""
    n, c, h, w = img.shape
    low = img.reshape(n, c, h // scale, scale, w // scale, scale).mean(axis=(3, 5))
    return np.einsum('ij,ncjk,lk->ncil', bilinear_matrix(h, h // scale, scale), low,
                     bilinear_matrix(w, w // scale, scale))


def laplace_normal_density(d, variance, b):
    """(Laplace(0, b) * N(0, variance))(d) in closed form (checked against quadrature below)."""
    std = math.sqrt(variance)
    return (np.exp(variance / (2 * b * b)) / (4 * b) *
            (np.exp(-d / b) * erfc((variance / b - d) / (std * math.sqrt(2))) +
             np.exp(d / b) * erfc((variance / b + d) / (std * math.sqrt(2)))))


def np_loss_terms(pred, target, sigma, kernel, estimator, refs=None):
    """Per-element likelihood, balancing term and scale factor of BDLoss (docs/bdloss.md)."""
    if kernel == 'gaussian':
        likelihood = (target - pred)**2 / (2 * sigma**2) + 0.5 * math.log(2 * math.pi) + math.log(sigma)
        kernel_of = lambda d: np.exp(-d**2 / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
    else:
        likelihood = np.abs(target - pred) / sigma + math.log(2) + math.log(sigma)
        kernel_of = lambda d: np.exp(-np.abs(d) / sigma) / (2 * sigma)  # noqa: E731
    x = pred - np_lowpass(pred, SCALE)
    if estimator == 'gai':
        integral = np.zeros_like(x)
        for phi, mu, var in zip(PRIOR['weights'], PRIOR['means'], PRIOR['variances']):
            if kernel == 'gaussian':
                total_var = var + sigma**2
                integral += phi * np.exp(-(x - mu)**2 / (2 * total_var)) / math.sqrt(2 * math.pi * total_var)
            else:
                integral += phi * laplace_normal_density(x - mu, var, sigma)
    else:  # the element's own target and NUM_REFS reference residuals, averaged
        integral = kernel_of(target - pred) + sum(kernel_of(x - r) for r in refs)
        integral /= len(refs) + 1
    factor = 2 * sigma**2 if kernel == 'gaussian' else sigma
    return likelihood, np.log(integral), factor


def np_total(pred, target, sigma, kernel, estimator, refs=None, factor_sigma=SIGMA, balancing_sign=1):
    likelihood, balancing, _ = np_loss_terms(pred, target, sigma, kernel, estimator, refs)
    factor = 2 * factor_sigma**2 if kernel == 'gaussian' else factor_sigma  # detached: does not follow sigma
    return float(np.mean((likelihood + balancing_sign * balancing) * factor))


def central_difference(func, values, eps=1e-6):
    grad = np.zeros_like(values)
    flat, out = values.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + eps
        up = func(values)
        flat[i] = saved - eps
        down = func(values)
        flat[i] = saved
        out[i] = (up - down) / (2 * eps)
    return grad


@pytest.fixture(scope='module')
def prior_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('prior') / 'prior.pth')
    save_gmm_prior({key: torch.tensor(value, dtype=torch.float64) for key, value in PRIOR.items()} |
                   {'scale': SCALE, 'space': 'residual'}, path)
    return path


@pytest.fixture(scope='module')
def batch():
    rng = np.random.default_rng(7)
    target = rng.uniform(0.1, 0.9, (1, 2, 8, 8))
    target[:, :, :4] = 0.5 + 0.01 * rng.standard_normal((1, 2, 4, 8))  # a flat half and a textured half
    pred = target + 0.04 * rng.standard_normal(target.shape)
    return pred, target


def bmc_references(target, seed, num_refs=NUM_REFS):
    """The residuals BDLoss draws for 'bmc' after ``torch.manual_seed(seed)``: uniform indices into the batch."""
    torch.manual_seed(seed)
    indices = torch.randint(target.size, (num_refs, )).numpy()
    return (target - np_lowpass(target, SCALE)).reshape(-1)[indices]


def test_reference_laplace_closed_form_matches_quadrature():
    grid = np.linspace(-1, 1, 400001)
    for d, var in ((0.0, 1e-4), (0.03, 2e-3), (-0.2, 1e-2)):
        integrand = np.exp(-np.abs(grid) / SIGMA) / (2 * SIGMA) * np.exp(-(d - grid)**2 / (2 * var)) / math.sqrt(
            2 * math.pi * var)
        assert laplace_normal_density(d, var, SIGMA) == pytest.approx(np.trapezoid(integrand, grid), rel=1e-6)


@pytest.mark.parametrize('estimator', ['gai', 'bmc'])
@pytest.mark.parametrize('kernel', ['gaussian', 'laplace'])
def test_total_value_and_gradients_equal_the_numpy_reference(estimator, kernel, prior_path, batch):
    """Protects the sum likelihood + balancing (a flipped or dropped balancing term fails here)."""
    pred_np, target_np = batch
    refs = bmc_references(target_np, seed=11) if estimator == 'bmc' else None
    options = {'prior_path': prior_path} if estimator == 'gai' else {'bmc_num_refs': NUM_REFS}
    loss = BDLoss(estimator=estimator, kernel=kernel, scale=SCALE, init_noise_sigma=SIGMA, learn_sigma=True,
                  **options).double()
    pred = torch.tensor(pred_np, requires_grad=True)
    torch.manual_seed(11)
    value = loss(pred, torch.tensor(target_np))
    grad_pred, grad_log_sigma = torch.autograd.grad(value, [pred, loss.log_sigma])

    expected = np_total(pred_np, target_np, SIGMA, kernel, estimator, refs)
    assert value.item() == pytest.approx(expected, rel=1e-7)

    expected_grad = central_difference(lambda p: np_total(p, target_np, SIGMA, kernel, estimator, refs),
                                       pred_np.copy())
    np.testing.assert_allclose(grad_pred.numpy(), expected_grad, rtol=0, atol=2e-5 * np.abs(expected_grad).max())
    # the balancing term matters here: without it the gradient would be far off
    without = central_difference(lambda p: np_total(p, target_np, SIGMA, kernel, estimator, refs, balancing_sign=0),
                                 pred_np.copy())
    assert np.abs(without - expected_grad).max() > 0.2 * np.abs(expected_grad).max()

    # sigma's gradient goes through the likelihood and the integral; the scale factor is detached
    eps = 1e-6
    expected_sigma = (np_total(pred_np, target_np, SIGMA * math.exp(eps), kernel, estimator, refs) -
                      np_total(pred_np, target_np, SIGMA * math.exp(-eps), kernel, estimator, refs)) / (2 * eps)
    assert grad_log_sigma.item() == pytest.approx(expected_sigma, rel=1e-5, abs=1e-9)


def test_flat_content_detail_is_amplified_by_the_balancing_term(prior_path):
    """The balanced optimum of a flat element sits beyond its target (docs/bdloss.md): the gradient at the target
    pushes the prediction's detail outward, by the amount the reference gives."""
    target_np = np.full((1, 1, 8, 8), 0.5)
    target_np[0, 0, 3, 3] = 0.52  # a little detail on flat content
    loss = BDLoss(estimator='gai', prior_path=prior_path, scale=SCALE, init_noise_sigma=SIGMA).double()
    pred = torch.tensor(target_np, requires_grad=True)
    grad, = torch.autograd.grad(loss(pred, torch.tensor(target_np)), pred)
    expected = central_difference(lambda p: np_total(p, target_np, SIGMA, 'gaussian', 'gai'), target_np.copy())
    np.testing.assert_allclose(grad.numpy(), expected, rtol=0, atol=2e-5 * np.abs(expected).max())
    # at the target the likelihood is flat, so descent follows -grad: the detail pixel is pushed further up
    assert grad[0, 0, 3, 3] < 0


@pytest.mark.parametrize('kernel', ['gaussian', 'laplace'])
def test_bmc_draws_64_references_by_default(kernel, batch):
    """Protects the documented default bmc_num_refs = 64 (docs/bdloss.md): the loss of a 'bmc' BDLoss built without
    it is the reference with M = 64 references and the 1 / (M + 1) of the estimate."""
    pred_np, target_np = batch
    refs = bmc_references(target_np, seed=5, num_refs=64)
    loss = BDLoss(estimator='bmc', kernel=kernel, init_noise_sigma=SIGMA).double()
    torch.manual_seed(5)
    value = loss(torch.tensor(pred_np), torch.tensor(target_np))
    assert value.item() == pytest.approx(np_total(pred_np, target_np, SIGMA, kernel, 'bmc', refs), rel=1e-7)
