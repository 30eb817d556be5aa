"""Runners of the reproduction's baselines, ARM and ClassSR, beside WBSR's (:mod:`wbsr_plugin.cli.evaluation`).

Every dynamic method tiles the LR image the same way (:mod:`wbsr_plugin.inference.tiling`'s
tiling and blending, ``patch_size`` 32 and ``overlap`` 4 by default) and reports its FLOPs as
a fraction of the plain network on the whole image. Networks run on their own device (the
reproduction evaluates on CUDA when it is available); tiling, choices and stitching run on the CPU.
A runner is ``run(lq) -> (sr, report)``, as :func:`wbsr_plugin.cli.evaluation.evaluate` takes it.
"""
import math
import time

import numpy as np
import torch
from torch.nn import functional as F

from wbsr_plugin.baselines.classsr_arch import msrresnet_flops
from wbsr_plugin.data.difficulty import rgb_to_luma
from wbsr_plugin.inference.checkpoint import read_checkpoint
from wbsr_plugin.inference.engine import DynamicInferenceEngine
from wbsr_plugin.inference.tiling import stitch_patches
from wbsr_runtime.tile_geometry import tile_geometry

from basicsr.archs import build_network

ARM_NUM_BINS = 10
ARM_TOLERANCE_DB = 0.05
ARM_ETAS = np.logspace(-2, 4, 121)
BISECTION_STEPS = 40
LAPLACIAN = torch.tensor([[0., 1., 0.], [1., -4., 1.], [0., 1., 0.]]).view(1, 1, 3, 3)


def load_plain(path, network_opt, device='cpu'):
    """A BasicSR network (a plain network, WBSRClassSRNet) from a checkpoint, in eval mode on ``device``."""
    state, _ = read_checkpoint(path)
    net = build_network(dict(network_opt))
    net.load_state_dict(state, strict=True)
    return net.eval().to(device)


def device_of(net):
    return next(net.parameters()).device


# ----------------------------------------------------------------------------------------------
# Tiling shared by ARM and ClassSR (the engine's tiling and blending)
def tile(lq, patch_size, overlap, trim=1):
    """Patches (n, c, p, p) of ``lq`` (1, c, h, w) and the geometry to stitch them back."""
    h, w = lq.shape[-2:]
    patch, tops, lefts, trim = tile_geometry(h, w, patch_size, overlap, trim)
    patches = torch.stack([lq[0, :, t:t + patch, x:x + patch] for t in tops for x in lefts])
    return patches, (h, w, patch, tops, lefts, trim)


def stitch(outputs, geometry, scale):
    """Blend SR patches (n, c, p*s, p*s) in grid order into (1, c, h*s, w*s)."""
    h, w, p, tops, lefts, trim = geometry
    return stitch_patches(outputs, (h, w), p, tops, lefts, trim, scale)


def run_assigned(patches, choice, forward):
    """Run every patch through the option ``choice[i]`` with ``forward(option, batch)``; outputs on the CPU."""
    outputs = None
    for option in torch.unique(choice).tolist():
        ids = (choice == option).nonzero().flatten()
        out = forward(option, patches[ids]).float().cpu()
        if outputs is None:
            outputs = torch.empty(patches.shape[0], *out.shape[1:])
        outputs[ids] = out
    return outputs


def bisect_knob(cost_of, allowed, low, high):
    """The largest knob in [low, high] with ``cost_of(knob) <= allowed`` (cost non-decreasing in the knob)."""
    if cost_of(high) <= allowed:
        return high
    if cost_of(low) > allowed:
        return low
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        if cost_of(mid) <= allowed:
            low = mid
        else:
            high = mid
    return low


# ----------------------------------------------------------------------------------------------
# ARM (Chen et al., ECCV 2022): edge score -> per-subnet PSNR table -> argmax eta * PSNR - cost
def edge_scores(patches):
    """ARM's edge score: mean absolute Laplacian of the luma (0-255) of every LR patch (n, c, p, p)."""
    luma = rgb_to_luma(patches.float()).unsqueeze(1)
    return F.conv2d(luma, LAPLACIAN.to(luma.dtype)).abs().mean(dim=(1, 2, 3))


def arm_choice(edges, table, costs, eta):
    """Subnet index per patch: ``argmax_m eta * PSNR_m(bin(edge)) - cost_m``."""
    bins = np.searchsorted(table['edges'], edges.numpy(), side='right')
    gain = eta * table['psnr'][bins] - np.asarray(costs)[None, :]
    return torch.from_numpy(gain.argmax(axis=1))


def build_arm_table(net, val_pairs, patch_size, overlap, num_bins=ARM_NUM_BINS, tolerance_db=ARM_TOLERANCE_DB):
    """ARM's edge-to-PSNR table on held-out training images, and its default eta.

    Each validation LR image is tiled as at test time; every patch runs through every subnet
    and its PSNR (Y channel, against the HR patch) is recorded with its edge score. The edge
    scores are cut into ``num_bins`` quantile bins; the table holds the mean PSNR of every
    subnet per bin. The default eta is the smallest (on a log grid) whose choice keeps the
    validation PSNR (pooled MSE of the patches) within ``tolerance_db`` of the full subnet.

    Returns:
        dict: ``edges`` (bin boundaries), ``psnr`` (bins x subnets), ``costs`` (fraction of the
        full subnet), ``eta`` (default), ``val_patches``.
    """
    engine = DynamicInferenceEngine(net, subnet=0)
    scale, device = net.upscale, device_of(net)
    all_edges, all_mse = [], []
    for _, lq, hr in val_pairs:
        patches, (h, w, p, tops, lefts, _) = tile(lq, patch_size, overlap)
        hr_rgb = torch.from_numpy(hr[:, :, ::-1].astype(np.float32) / 255.).permute(2, 0, 1)
        hr_patches = torch.stack([hr_rgb[:, t * scale:(t + p) * scale, x * scale:(x + p) * scale]
                                  for t in tops for x in lefts])
        hr_y = rgb_to_luma(hr_patches)
        mse = []
        with torch.inference_mode():
            for spec in net.subnets:
                sr = engine.subnets.module(spec.index)(patches.to(device)).float().cpu().clamp(0, 1)
                sr_y = (rgb_to_luma(sr) * 219. / 255. + 16.).round()
                mse.append(((sr_y - (hr_y * 219. / 255. + 16.).round())**2).mean(dim=(1, 2)))
        all_edges.append(edge_scores(patches))
        all_mse.append(torch.stack(mse, dim=1))
    edges = torch.cat(all_edges).numpy()
    mse = torch.cat(all_mse).double().numpy()
    psnr = 10 * np.log10(255.**2 / np.maximum(mse, 1e-10))
    num_bins = max(1, min(num_bins, len(edges)))
    boundaries = np.quantile(edges, np.arange(1, num_bins) / num_bins) if num_bins > 1 else np.array([])
    bins = np.searchsorted(boundaries, edges, side='right')
    overall = psnr.mean(axis=0)
    table = np.stack([psnr[bins == b].mean(axis=0) if (bins == b).any() else overall for b in range(num_bins)])
    full = net.full_subnet.flops
    costs = [s.flops / full for s in net.subnets]
    result = {'edges': boundaries, 'psnr': table, 'costs': costs, 'val_patches': int(len(edges))}
    reference = 10 * math.log10(255.**2 / mse[:, -1].mean())
    eta = float(ARM_ETAS[-1])
    for candidate in ARM_ETAS:
        choice = arm_choice(torch.from_numpy(edges), result, costs, candidate).numpy()
        pooled = mse[np.arange(len(choice)), choice].mean()
        if 10 * math.log10(255.**2 / pooled) >= reference - tolerance_db:
            eta = float(candidate)
            break
    result['eta'] = eta
    return result


def arm_runner(net, table, patch_size, overlap, eta=None, budget=None):
    """``run(lq) -> (sr, report)`` of ARM's subnet choice at ``eta`` or within a FLOPs ``budget`` per image."""
    engine = DynamicInferenceEngine(net, subnet=0)
    device = device_of(net)

    def run(lq):
        start = time.perf_counter()
        with torch.inference_mode():
            patches, geometry = tile(lq, patch_size, overlap)
            p = geometry[2]
            patch_costs = np.array([net.flops(p, p, subnet=s) for s in net.subnets], dtype=np.float64)
            edges = edge_scores(patches)

            def cost_of(log_eta):
                return float(patch_costs[arm_choice(edges, table, table['costs'], math.exp(log_eta)).numpy()].sum())

            if budget is None:
                chosen_eta = eta
            else:
                chosen_eta = math.exp(bisect_knob(cost_of, budget * net.flops(*lq.shape[-2:]), math.log(1e-4),
                                                  math.log(1e6)))
            choice = arm_choice(edges, table, table['costs'], chosen_eta)
            outputs = run_assigned(patches, choice, lambda m, batch: engine.subnets.module(m)(batch.to(device)))
            sr = stitch(outputs, geometry, net.upscale)
        histogram = torch.bincount(choice, minlength=len(net.subnets)).tolist()
        return sr, {'flops': float(patch_costs[choice.numpy()].sum()), 'full_flops': net.flops(*lq.shape[-2:]),
                    'time_s': time.perf_counter() - start, 'histogram': histogram}

    return run


# ----------------------------------------------------------------------------------------------
# ClassSR (Kong et al., CVPR 2021): classifier argmax per patch
def classsr_runner(net, patch_size, overlap, budget=None):
    """``run(lq) -> (sr, report)`` of ClassSR: argmax class per patch, or a logit bias fitted to a budget.

    The budget form adds ``beta * [0, 1, ..., M-1]`` to the logits and takes the largest ``beta``
    whose FLOPs (classifier included) stay within ``budget`` times the plain network's.
    """
    num_branches = len(net.widths)
    ramp = torch.arange(num_branches, dtype=torch.float32)
    device = device_of(net)

    def full_flops(h, w):
        return msrresnet_flops(net.widths[-1], net.num_block, net.upscale, h, w)

    def run(lq):
        start = time.perf_counter()
        with torch.inference_mode():
            patches, geometry = tile(lq, patch_size, overlap)
            p = geometry[2]
            patch_costs = np.array([net.flops(p, p, b) for b in range(num_branches)], dtype=np.float64)
            logits = net.classify(patches.to(device)).float().cpu()

            def choose(beta):
                return (logits + beta * ramp).argmax(dim=1)

            beta = 0.
            if budget is not None:
                beta = bisect_knob(lambda b: float(patch_costs[choose(b).numpy()].sum()),
                                   budget * full_flops(*lq.shape[-2:]), -1e3, 1e3)
            choice = choose(beta)
            outputs = run_assigned(patches, choice, lambda b, batch: net.branch_forward(batch.to(device), b))
            sr = stitch(outputs, geometry, net.upscale)
        histogram = torch.bincount(choice, minlength=num_branches).tolist()
        return sr, {'flops': float(patch_costs[choice.numpy()].sum()), 'full_flops': full_flops(*lq.shape[-2:]),
                    'time_s': time.perf_counter() - start, 'histogram': histogram}

    return run

