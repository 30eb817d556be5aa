"""Balanced Diversity Loss (BDLoss) of WBSR.

Paper: Rethinking Imbalance in Image Super-Resolution for Efficient Inference (NeurIPS 2024),
Sec. 4.1.2, Eq. 9-14; the integral is closed as in Balanced MSE (Ren et al., CVPR 2022).
Per element, with prediction ``yhat``, target ``y`` and noise scale ``sigma``::

    L = -log K(y; yhat, sigma) + log INT K(y'; yhat, sigma) p_train(y') dy'

(``log p_train(y)`` of the paper's Eq. 11 does not depend on the network and is dropped.)
``K`` is a Gaussian (``kernel='gaussian'``, the paper's form) or a Laplace density of scale
``sigma`` (``kernel='laplace'``, the "probability form of L1"). The integral is estimated by

* ``gai``: ``p_train`` is a GMM ``sum_i phi_i N(mu_i, S_i)`` fitted offline (``fit_gmm_prior``);
  the integral is then exact: ``sum_i phi_i N(yhat; mu_i, S_i + sigma^2)`` for the Gaussian
  kernel, and a sum of Gaussian-Laplace convolutions (closed form through ``erfcx``) for the
  Laplace kernel. Cost O(K) per element.
* ``bmc``: Monte Carlo over the batch: ``1/(M+1) (K(y_i; yhat_i) + sum_j K(r_j; yhat_i))`` with
  ``M = bmc_num_refs`` reference targets ``r_j`` drawn uniformly with replacement from all
  elements of the batch's targets, plus the element's own target (as the diagonal of Balanced
  MSE's BMC; it keeps the loss of every element >= -log(M+1) and the estimate finite). With
  the own term and the constants, ``L`` is the cross-entropy of Balanced MSE's BMC minus
  ``log(M+1)``, so ``gai`` and ``bmc`` estimate the same quantity. Cost O(M) per node, see below.

Cost and accuracy of the balancing term: :mod:`.balancing_tables`.

The loss of each element is multiplied by the detached ``2 sigma^2`` (Gaussian) or ``sigma``
(Laplace), as Balanced MSE does, so that its likelihood term has the scale of the squared /
absolute error and ``loss_weight`` means what it means for MSELoss / L1Loss.

Space of ``y`` (our decision): every element (pixel and channel) is one scalar, and its value
for the balancing term is its high-frequency residual ``y - L(y)`` where ``L`` is a fixed
linear low-pass: area-downsampling by the SR scale followed by bilinear upsampling
(``space='residual'``). The prediction enters the balancing term through its own residual
``yhat - L(yhat)``: the balancing acts on the detail a prediction adds, never on its colour or
low frequencies, which the likelihood term (a function of ``y - yhat``, exactly that of the plain
loss) alone pulls toward the target (with ``yhat - L(y)`` instead, the balancing term cancels most
of that pull on flat pixels, by ``sigma^2 / (S_0 + sigma^2)`` for the narrow prior component of
variance ``S_0`` at 0; docs/bdloss.md). Why the residual: the imbalance the paper targets is flat
versus textured content. Plain intensities (``space='pixel'``) measure how rare a colour is
(dark sky versus mid-grey), which says nothing about reconstruction difficulty; residuals
are near 0 in flat regions (the dominant mode of ``p_train``) and large in edges and
textures, so the balancing term reweights exactly that imbalance. ``L(y)`` is what an SR
network can read off its LR input, so ``y - L(y)`` is the part it must invent. Scalars keep
the prior a 1-D GMM (cheap EM fit, O(K) per element at train time); patch vectors would need
a high-dimensional prior and an N x N BMC.

Sigma (our decision: fixed at 0.01 by default). For a prior component of variance ``S`` the
balanced optimum of one element is ``(y (S + sigma^2) - mu sigma^2) / S``: the balancing term
amplifies the detail of flat content by ``(S + sigma^2) / S``. The narrow components of photo
priors have ``S <= 0.03^2``, so ``sigma = 0.01`` keeps the amplification near 1.1. Learnt as in
Balanced MSE, sigma follows the prediction error and the amplification grows far beyond (what
that did to the demo: docs/bdloss.md). ``learn_sigma: true`` is kept for experiments.

The paper's ``lambda ||theta||^2`` term is not part of this loss: it is the coupled L2 weight
decay of the optimizer. Set ``train.optim_g.weight_decay`` to ``2 * lambda`` with ``Adam``
(whose ``weight_decay`` adds ``weight_decay * theta`` to the gradient); ``AdamW`` decays
decoupled from the loss and is not the same objective. This costs nothing extra per step.
"""
import math
import numbers

import torch
from torch import nn

from wbsr_plugin.utils.registry import register

from basicsr.losses.loss_util import weight_reduce_loss
from basicsr.utils.registry import LOSS_REGISTRY

from .balancing_tables import (
    KERNELS,
    MAX_TABLE_WIDENING,
    TABLE_RANGES,
    TableLookup,
    hermite_coefficients,
    kernel_rho,
    log_laplace_conv_normal,
    log_normal,
    log_sum_laplace_kernels,
    table_spacing,
)
from .gmm_prior_util import SPACES, load_gmm_prior, lowpass, target_lowpass

ESTIMATORS = ('gai', 'bmc')
REDUCTIONS = ('none', 'mean', 'sum')
RECOMMENDED_SIGMA_LR = 1e-2
_OPTIONS = ('loss_weight', 'reduction', 'estimator', 'prior_path', 'kernel', 'space', 'scale', 'learn_sigma',
            'init_noise_sigma', 'bmc_num_refs')


def _choice(option, value, allowed):
    if value not in allowed:
        raise ValueError(f'BDLoss: {option} must be one of {list(allowed)}, got {value!r}.')
    return value


def _positive_number(option, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f'BDLoss: {option} must be a finite number > 0, got {value!r}.')
    return float(value)


def _positive_int(option, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'BDLoss: {option} must be an integer >= 1, got {value!r}.')
    return value


@register(LOSS_REGISTRY)
class BDLoss(nn.Module):
    """Balanced Diversity Loss (BDLoss) of WBSR.

    Paper: Rethinking Imbalance in Image Super-Resolution for Efficient Inference (NeurIPS 2024);
    balancing integral as in Balanced MSE (CVPR 2022). See the module docstring for the formula,
    the estimators and the space of ``y``.

    The noise scale sigma is a parameter of this module (``log_sigma``, so sigma stays positive).
    BasicSR's ``SRModel`` optimises ``net_g`` only: a model that learns sigma must add
    ``{'params': cri_pix.sigma_parameters(), 'lr': 1e-2, 'weight_decay': 0}`` as a parameter group
    of its optimizer (``RECOMMENDED_SIGMA_LR``) and save ``cri_pix.state_dict()`` with its
    training state. The paper's ``lambda ||theta||^2`` is the optimizer's weight decay
    (``weight_decay = 2 * lambda`` with Adam), not an option of this loss.

    Args:
        loss_weight (float): Loss weight. Default: 1.0.
        reduction (str): 'none' | 'mean' | 'sum'. Default: 'mean'.
        estimator (str): 'gai' (closed form with a fitted GMM prior) or 'bmc' (Monte Carlo over
            the batch's targets, no prior). Default: 'gai'.
        prior_path (str): File written by ``save_gmm_prior`` / ``python -m wbsr_plugin.fit_prior``.
            Required by 'gai', refused by 'bmc'. Default: None.
        kernel (str): 'gaussian' (MSE-like likelihood) or 'laplace' (L1-like). Default: 'gaussian'.
        space (str): Values the balancing term sees: 'residual' (``y - L(y)``) or 'pixel'.
            Must match the prior's. Default: 'residual'.
        scale (int): SR scale, the factor of the low-pass ``L``; must match the prior's. Default: 4.
        learn_sigma (bool): Learn sigma (a parameter) or keep it fixed (a buffer); see the module
            docstring for why it is fixed by default. Default: False.
        init_noise_sigma (float): (Initial) sigma, in units of [0, 1] images. Default: 0.01.
        bmc_num_refs (int): Reference targets M drawn per batch by 'bmc'. Default: 64.
    """

    def __init__(self,
                 loss_weight=1.0,
                 reduction='mean',
                 *,
                 estimator='gai',
                 prior_path=None,
                 kernel='gaussian',
                 space='residual',
                 scale=4,
                 learn_sigma=False,
                 init_noise_sigma=0.01,
                 bmc_num_refs=64,
                 **unknown):
        super().__init__()
        if unknown:
            hint = ''
            if {'weight_decay', 'lambda', 'lambda_wd'} & set(unknown):
                hint = ' (the weight-decay term lambda belongs in train.optim_g.weight_decay = 2 * lambda)'
            raise ValueError(f'BDLoss: unknown option(s) {sorted(unknown)}{hint}; '
                             f'allowed options are {sorted(_OPTIONS)}.')
        if isinstance(loss_weight, bool) or not isinstance(loss_weight, numbers.Real) or not math.isfinite(
                loss_weight):
            raise ValueError(f'BDLoss: loss_weight must be a finite number, got {loss_weight!r}.')
        self.loss_weight = float(loss_weight)
        self.reduction = _choice('reduction', reduction, REDUCTIONS)
        self.estimator = _choice('estimator', estimator, ESTIMATORS)
        self.kernel = _choice('kernel', kernel, KERNELS)
        self.space = _choice('space', space, SPACES)
        self.scale = _positive_int('scale', scale)
        if not isinstance(learn_sigma, bool):
            raise ValueError(f'BDLoss: learn_sigma must be one of [True, False], got {learn_sigma!r}.')
        self.learn_sigma = learn_sigma
        log_sigma = torch.tensor(math.log(_positive_number('init_noise_sigma', init_noise_sigma)))
        if learn_sigma:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer('log_sigma', log_sigma)
        self._sigma_host = math.exp(float(log_sigma))  # chooses the table spacing; updated when loading
        self._table_cache = None
        self.bmc_num_refs = _positive_int('bmc_num_refs', bmc_num_refs)
        self.prior_path = prior_path

        if self.estimator == 'gai':
            if prior_path is None:
                raise ValueError("BDLoss: estimator 'gai' needs prior_path (fit one with "
                                 '`python -m wbsr_plugin.fit_prior -i HR_DIR -o PRIOR.pth -s SCALE`), '
                                 "or use estimator 'bmc'.")
            if not isinstance(prior_path, str):
                raise ValueError(f'BDLoss: prior_path must be a string, got {prior_path!r}.')
            prior = load_gmm_prior(prior_path)
            for key, value in (('space', self.space), ('scale', self.scale)):
                if prior[key] != value and not (key == 'scale' and self.space == 'pixel'):
                    raise ValueError(f"BDLoss: {key} is {value!r} but the prior '{prior_path}' was fitted with "
                                     f'{key} {prior[key]!r}; refit it or set {key}: {prior[key]!r}.')
            self.register_buffer('gmm_weights', prior['weights'].float(), persistent=False)
            self.register_buffer('gmm_means', prior['means'].float(), persistent=False)
            self.register_buffer('gmm_variances', prior['variances'].float(), persistent=False)
            self._prior_host = list(zip(self.gmm_means.tolist(), self.gmm_variances.tolist()))
        elif self.estimator == 'bmc':
            if prior_path is not None:
                raise ValueError("BDLoss: prior_path is used by estimator 'gai' only; remove it for 'bmc'.")
        else:
            raise ValueError(f'BDLoss: estimator must be one of {list(ESTIMATORS)}, got {estimator!r}.')

    @property
    def sigma(self):
        """The current noise scale sigma (a tensor, differentiable when learnt)."""
        return self.log_sigma.exp()

    def sigma_parameters(self):
        """Parameters for the model's own optimizer group (lr ``RECOMMENDED_SIGMA_LR``); empty if fixed."""
        return [self.log_sigma] if self.learn_sigma else []

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        log_sigma = state_dict.get(prefix + 'log_sigma')
        if torch.is_tensor(log_sigma) and log_sigma.numel() == 1:
            self._sigma_host = math.exp(float(log_sigma))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _spacing(self):
        """Lattice spacing of the balancing table, from host-side values only (no device sync)."""
        sigma = self._sigma_host
        if self.estimator == 'bmc':
            width = sigma
        elif self.kernel == 'gaussian':
            width = math.sqrt(min(v for _, v in self._prior_host) + sigma * sigma)
        else:
            width = min(sigma, math.sqrt(min(v for _, v in self._prior_host)))
        return table_spacing(width)

    def _table_range(self):
        """``TABLE_RANGES[space]``; for 'gai' + 'laplace', widened to where the function is linear.

        Beyond the range the table continues quadratically, exact where the function is quadratic: far
        out the Gaussian 'gai' integral is the widest component's log-density and the Gaussian 'bmc' sums
        are dominated by the outermost reference. The Laplace 'gai' integral of a component ``N(mu, S)``
        turns linear (slope ``-+1/sigma``) beyond ``mu -+ S / sigma``; a margin of 6 ``(sqrt(S) + sigma)``
        past that leaves so little curvature that the continuation stays within 1e-7 (relative) to
        ``|x| = 8``.
        """
        lo, hi = TABLE_RANGES[self.space]
        if self.estimator == 'gai' and self.kernel == 'laplace':
            sigma = self._sigma_host
            base_lo, base_hi = lo, hi
            for mean, var in self._prior_host:
                reach = var / sigma + 6 * (math.sqrt(var) + sigma)
                lo, hi = min(lo, mean - reach), max(hi, mean + reach)
            lo, hi = max(lo, base_lo - MAX_TABLE_WIDENING), min(hi, base_hi + MAX_TABLE_WIDENING)
        return lo, hi

    def _tabulated(self, func, x, differentiable, cacheable):
        """``func(x)`` element-wise through a Hermite table on ``TABLE_RANGES[space]``.

        ``cacheable``: ``func`` depends on nothing but the prior and sigma, so a table without
        gradients is built once and reused until sigma, the device or the dtype changes.
        """
        spacing = self._spacing()
        lo, hi = self._table_range()
        first = math.floor(lo / spacing)
        num_nodes = math.ceil(hi / spacing) - first + 1
        key = (x.device, x.dtype, spacing, self.log_sigma._version)
        cache = self._table_cache
        if cacheable and not differentiable and cache is not None and cache[0] == key and cache[1] is self.log_sigma:
            coeffs = cache[2]
        else:
            coeffs = hermite_coefficients(func, first, num_nodes, spacing, x.device, x.dtype, differentiable)
            if cacheable and not differentiable:
                self._table_cache = (key, self.log_sigma, coeffs)
        return TableLookup.apply(x, coeffs, float(first), 1 / spacing)

    def extra_repr(self):
        return (f'estimator={self.estimator!r}, kernel={self.kernel!r}, space={self.space!r}, scale={self.scale}, '
                f'loss_weight={self.loss_weight}, reduction={self.reduction!r}, learn_sigma={self.learn_sigma}')

    def elementwise_terms(self, pred, target):
        """The two terms of the loss per element (N, C, H, W), both scaled by the detached factor.

        Returns:
            tuple[Tensor, Tensor]: ``(likelihood, balancing)``: ``-log K(y; yhat, sigma)`` and the
            log of the estimated integral, times ``2 sigma^2`` (Gaussian) or ``sigma`` (Laplace),
            detached. Their sum is the loss before ``weight``, reduction and ``loss_weight``.
        """
        likelihood, balancing, factor = self.log_likelihood_terms(pred, target)
        return likelihood * factor, balancing * factor

    def log_likelihood_terms(self, pred, target):
        """The unscaled terms ``(likelihood, balancing)`` per element and the detached scale factor."""
        if pred.shape != target.shape or pred.dim() != 4:
            raise ValueError(f'BDLoss expects pred and target of the same shape (N, C, H, W), got '
                             f'{tuple(pred.shape)} and {tuple(target.shape)}.')
        dtype = torch.promote_types(pred.dtype, torch.float32)
        pred = pred.to(dtype)
        target = target.to(dtype)
        log_sigma = self.log_sigma.to(dtype)
        sigma = log_sigma.exp()
        if self.kernel == 'gaussian':
            var = sigma * sigma
            a = 0.5 / var
            log_norm = 0.5 * math.log(2 * math.pi) + log_sigma
            factor = (2 * var).detach()
        elif self.kernel == 'laplace':
            a = 1 / sigma
            log_norm = math.log(2) + log_sigma
            factor = sigma.detach()
        else:
            raise ValueError(f'kernel must be one of {list(KERNELS)}, got {self.kernel!r}.')

        rho, _ = kernel_rho(target - pred, self.kernel)
        likelihood = a * rho + log_norm

        x = pred - lowpass(pred, self.scale, self.space)
        differentiable = log_sigma.requires_grad and torch.is_grad_enabled()
        if self.estimator == 'gai':
            weights = self.gmm_weights.to(dtype)
            means = self.gmm_means.to(dtype)
            variances = self.gmm_variances.to(dtype)
            if self.kernel == 'gaussian':

                def log_integral(nodes):
                    log_components = log_normal(nodes[:, None], means, variances + var)
                    return torch.logsumexp(log_components + weights.log(), dim=-1)
            else:

                def log_integral(nodes):
                    log_components = log_laplace_conv_normal(nodes[:, None], means, variances, sigma)
                    return torch.logsumexp(log_components + weights.log(), dim=-1)

            balancing = self._tabulated(log_integral, x, differentiable, cacheable=True)
        elif self.estimator == 'bmc':
            num_refs = self.bmc_num_refs
            flat = (target - target_lowpass(target, self.scale, self.space)).reshape(-1)
            refs = flat[torch.randint(flat.numel(), (num_refs, ), device=flat.device)]

            if self.kernel == 'gaussian':

                def log_sum_refs(nodes):
                    rho_refs, _ = kernel_rho(nodes[:, None] - refs, self.kernel)
                    return torch.logsumexp(-a * rho_refs, dim=-1)

                log_refs = self._tabulated(log_sum_refs, x, differentiable, cacheable=False)
            else:
                log_refs = log_sum_laplace_kernels(x, refs, a)
            own = -a * rho
            balancing = torch.logsumexp(torch.stack([own, log_refs]), dim=0) - math.log(num_refs + 1) - log_norm
        else:
            raise ValueError(f'estimator must be one of {list(ESTIMATORS)}, got {self.estimator!r}.')
        return likelihood, balancing, factor

    def forward(self, pred, target, weight=None):
        """
        Args:
            pred (Tensor): Prediction (N, C, H, W).
            target (Tensor): Ground truth (N, C, H, W).
            weight (Tensor, optional): Element-wise weights (N, C or 1, H, W). Default: None.
        """
        likelihood, balancing, factor = self.log_likelihood_terms(pred, target)
        loss = weight_reduce_loss((likelihood + balancing) * factor, weight, self.reduction)
        return self.loss_weight * loss
