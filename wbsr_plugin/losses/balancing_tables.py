"""The numerics of BDLoss's balancing term: kernels, their closed-form integrals, and Hermite tables.

The balancing term depends on an element only through its scalar ``x = yhat - L(yhat)``
(plus, for 'bmc', the element's own kernel value, computed directly). For 'bmc' with the Laplace
kernel, a sum of kernels with kinks at the references, it is computed exactly in O(log M) per
element (:func:`log_sum_laplace_kernels`). Otherwise, that smooth function of ``x``
is tabulated on a lattice of nodes (spacing a power of two <= 1/16 of the narrowest kernel
width) over a fixed range (``TABLE_RANGES``; for 'gai' with the Laplace kernel widened to where
the function turns linear), values and slopes from autograd, and every element reads it through
a C1 cubic Hermite interpolation: O(K x nodes + pixels) instead of O(K x pixels), gradients for
sigma included; the interpolation error is below 1e-6 in practice. Beyond the range the table
continues by the quadratic of its end node, exact where the function is quadratic there (the
Gaussian 'gai' integral far out is the widest component's log-density) and within 1e-7 where it
has turned linear (the Laplace 'gai' integral, whose range reaches far enough). The
'gai' table depends on the prior and sigma only: with a fixed sigma it is built once per prior,
device and dtype and reused by every call; a learnt sigma, or 'bmc' (whose references change
with the batch), rebuilds it per call. Forward and backward never read a tensor on the host,
so they never wait for the device: the lattice is chosen from host-side values, the prior and
sigma as constructed or last loaded with ``load_state_dict`` (a learnt sigma keeps that lattice
while it trains).
"""
import math

import torch
from torch.autograd.function import once_differentiable

KERNELS = ('gaussian', 'laplace')
# x range tabulated per space; beyond it the table continues by quadratics (see hermite_coefficients)
TABLE_RANGES = {'residual': (-1.5, 1.5), 'pixel': (-1.0, 2.0)}
MAX_TABLE_WIDENING = 4.0


def kernel_rho(diff, kernel):
    """Distance of the kernel exponent, ``-log K = a * rho + const``, and ``d rho / d diff``."""
    if kernel == 'gaussian':
        return diff * diff, 2 * diff
    elif kernel == 'laplace':
        return diff.abs(), diff.sign()
    else:
        raise ValueError(f'kernel must be one of {list(KERNELS)}, got {kernel!r}.')


class TableLookup(torch.autograd.Function):
    """``x -> p_row(t)`` for the per-row cubics of ``hermite_coefficients`` (see there).

    With ``pos = x / spacing - first``, ``k = clamp(floor(pos), -1, num_nodes - 1)``, row ``k + 1``
    is evaluated at ``t = pos - k``. The forward is four gathers and a few in-place element-wise
    passes and also computes the derivative in ``x``, so the backward is one multiplication;
    gradients reach the coefficients (hence sigma) when they require them.
    """

    @staticmethod
    def forward(ctx, x, coeffs, first, inv_spacing):
        t = x * inv_spacing
        t.sub_(first)
        k = t.floor().clamp_(-1, coeffs.shape[1] - 2)
        t.sub_(k)
        row = k.add_(1).long().reshape(-1)
        c0, c1, c2, c3 = (column.index_select(0, row).view_as(x) for column in coeffs)
        out = torch.addcmul(c2, c3, t).mul_(t).add_(c1).mul_(t).add_(c0)
        slope = None
        if ctx.needs_input_grad[0]:
            slope = torch.addcmul(c2.mul_(2), c3.mul_(3), t).mul_(t).add_(c1).mul_(inv_spacing)
        ctx.save_for_backward(slope, *((row, t) if ctx.needs_input_grad[1] else ()))
        ctx.num_rows = coeffs.shape[1]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        slope, *row_t = ctx.saved_tensors
        grad_x = grad_out * slope if ctx.needs_input_grad[0] else None
        grad_coeffs = None
        if ctx.needs_input_grad[1]:
            row, t = row_t
            grad = grad_out.reshape(-1)
            t = t.reshape(-1)
            powers = torch.stack([grad, grad * t, grad * t * t, grad * t * t * t])
            grad_coeffs = powers.new_zeros(4, ctx.num_rows).index_add_(1, row, powers)
        return grad_x, grad_coeffs, None, None


def hermite_coefficients(func, first, num_nodes, spacing, device, dtype, differentiable):
    """Per-row cubics of the C1 cubic Hermite interpolant of the 1-D function ``func``.

    Nodes lie on the lattice ``k * spacing``, ``k = first .. first + num_nodes - 1``; values and
    slopes at the nodes come from ``func`` with autograd (``differentiable``: with a graph, so
    parameters inside ``func``, sigma, get gradients). Row ``j`` holds the interval from node
    ``j - 1`` to node ``j`` in the local variable ``t`` in [0, 1); row 0 continues the table below
    its first node and the last row above its last node, each by the quadratic with the end
    node's value, slope and (finite-difference) curvature. The interpolant is C1, so its
    derivative in ``x`` is exact for the function it computes; its error is O(spacing^4) times
    the fourth derivative of ``func``.

    Returns:
        Tensor: (4, num_nodes + 1), the coefficients of ``1, t, t^2, t^3`` of every row.
    """
    nodes = (torch.arange(first, first + num_nodes, device=device, dtype=dtype) * spacing).requires_grad_()
    with torch.enable_grad():
        values = func(nodes)
        slopes, = torch.autograd.grad(values.sum(), nodes, create_graph=differentiable)
    if not differentiable:
        values = values.detach()
    p0, p1, m0, m1 = values[:-1], values[1:], spacing * slopes[:-1], spacing * slopes[1:]
    inner = torch.stack([p0, m0, 3 * (p1 - p0) - 2 * m0 - m1, 2 * (p0 - p1) + m0 + m1])
    zero = values.new_zeros(())
    # below: value + slope * (t - 1) + curvature * (t - 1)^2 with t = pos + 1 <= 0 (origin at node -1)
    curvature = 0.5 * (m1[0] - m0[0])
    below = torch.stack([values[0] - m0[0] + curvature, m0[0] - 2 * curvature, curvature, zero])
    above = torch.stack([values[-1], m1[-1], 0.5 * (m1[-1] - m0[-1]), zero])
    return torch.cat([below[:, None], inner, above[:, None]], dim=1)


def table_spacing(width):
    """A power of two <= width / 16 (piecewise constant in ``width``), within [2^-16, 2^-6]."""
    exponent = math.floor(math.log2(max(width, 1e-12) / 16))
    return 2.0**min(max(exponent, -16), -6)


def log_normal(x, mean, var):
    return -0.5 * torch.log(2 * math.pi * var) - 0.5 * (x - mean)**2 / var


def log_laplace_conv_normal(x, mean, var, b):
    """log of (Laplace(0, b) * N(mean, var))(x), stable for all ratios of sqrt(var) to b."""
    std = var.sqrt()
    d = x - mean

    def log_half(d):
        # log of exp(var/(2b^2) - d/b) erfc(u) / (4b), u = (std/b - d/std)/sqrt(2)
        u = (std / b - d / std) / math.sqrt(2)
        u_pos = u.clamp(min=0)
        u_neg = u.clamp(max=0)
        large = -d * d / (2 * var) + torch.log(torch.special.erfcx(u_pos))
        small = var / (2 * b * b) - d / b + torch.log(torch.special.erfc(u_neg))
        return torch.where(u >= 0, large, small) - torch.log(4 * b)

    return torch.logsumexp(torch.stack([log_half(d), log_half(-d)]), dim=0)


def log_sum_laplace_kernels(x, refs, a):
    """``log sum_j exp(-a |x - r_j|)`` exactly, in O(log M) per element.

    Between two neighbouring sorted references the sum is ``exp(-a x) P + exp(a x) Q`` with
    ``P = sum_{r_j <= x} exp(a r_j)`` and ``Q = sum_{r_j > x} exp(-a r_j)``: prefix and suffix
    log-sums of the sorted references, gathered by each element's interval. Unlike a table, this
    keeps the kinks at the references exact (value and gradient).
    """
    ordered = refs.sort().values
    none = ordered.new_full((1, ), -math.inf)
    log_below = torch.cat([none, torch.logcumsumexp(a * ordered, 0)])
    log_above = torch.cat([torch.logcumsumexp((-a * ordered).flip(0), 0).flip(0), none])
    interval = torch.searchsorted(ordered, x.detach().contiguous(), right=True)
    return torch.logaddexp(log_below[interval] - a * x, log_above[interval] + a * x)
