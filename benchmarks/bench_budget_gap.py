"""How far a FLOPs budget falls below the full network, and how much of that better information would win back.

    python benchmarks/bench_budget_gap.py --model run/models/net_g_latest.pth [--model ...]
        --test Set5=../shared/data/val/Set5 --test Set14=../shared/data/val/Set14 [--budget 0.6]

For every checkpoint and HR test folder (LR by MATLAB bicubic), with the engine's tiling (``--patch-size``,
``--overlap``) and the checkpoint's thresholds, it prints the mean Y-PSNR (border = scale) of:
  full         the full network on the whole image;
  Eq. 16       ``budget=b`` without class errors (subnets stepped through in cost order);
  calibrated   ``budget=b`` with the checkpoint's class errors (what ``infer --budget`` does);
  hindsight    per image, the best of every whole-image subnet within the budget and of the tiled plan
               whose subnets the engine's calibrated allocation chooses from every patch's true error
               against the HR image instead of its class's expected error: the same greedy allocation,
               fed what it could not know;
and the gap of each to the full network, the FLOPs spent (% of the full network on the whole image) and
how many images the calibrated plan ran whole (small images, where the tiling's overlaps eat the budget).
The hindsight allocation is not an upper bound: the greedy can miss the best choice of subnets (tested
against exhaustive search in tests/inference/test_projection.py), and it minimises the error of the patches'
interiors, not of the blended image. A gap close to its gap says that knowing each patch's error would
not win back much.
"""
import argparse
import platform

import numpy as np
import torch

import wbsr_plugin  # noqa: F401
from wbsr_plugin.cli.evaluation import load_pairs, to_uint8_bgr
from wbsr_plugin.inference.checkpoint import CheckpointError, engine_options, load_supernet
from wbsr_plugin.inference.engine import DynamicInferenceEngine
from wbsr_plugin.inference.tiling import extract_patches
from wbsr_runtime.images import ImageReadError
from wbsr_runtime.levels import calibrated_levels
from wbsr_runtime.tile_geometry import DEFAULT_OVERLAP, DEFAULT_PATCH_SIZE

from basicsr.metrics import calculate_psnr

INTERIOR_BORDER = 2  # LR pixels of a patch's border left out of its error (blended away by the engine)


def hindsight_levels(errors, costs, budget):
    """Subnet of every patch by the engine's own allocation (:func:`calibrated_levels`), each patch its own
    class with its true error: what the calibrated budget would do if it knew every patch's error.

    Args:
        errors (np.ndarray): (N, M) error of every patch through every subnet (cost order).
        costs (Sequence[float]): Cost of one patch through each subnet.
        budget (float): Cost allowed for all N patches.

    Returns:
        np.ndarray: (N,) subnet indices.
    """
    levels = np.zeros(len(errors), dtype=int)
    for k, _, target, _ in calibrated_levels([1] * len(errors), costs, budget, errors.tolist())[1]:
        levels[k - 1] = target
    return levels


def psnr(sr, hr, scale):
    return calculate_psnr(to_uint8_bgr(sr), hr, crop_border=scale, test_y_channel=True)


def hindsight_psnr(engine, net, lq, hr, budget):
    """The best PSNR of any whole-image subnet within ``budget`` and of the tiled plan allocated in hindsight."""
    scale = engine.scale
    num_subnets = len(net.subnets)
    allowed = budget * engine.subnets.flops(*lq.shape[-2:], num_subnets - 1)
    candidates = [psnr(net(lq, subnet=m), hr, scale) for m in range(num_subnets)
                  if engine.subnets.flops(*lq.shape[-2:], m) <= allowed]
    plan = engine.plan(lq)
    p = plan.patch_size
    costs = [engine.subnets.flops(p, p, m) for m in range(num_subnets)]
    if len(plan.tops) * len(plan.lefts) * costs[0] <= allowed:
        patches = extract_patches(lq, plan.patch_size, plan.tops, plan.lefts)
        outputs = [engine.subnets.module(m)(patches).clamp(0, 1) for m in range(num_subnets)]
        gt = torch.from_numpy(np.ascontiguousarray(hr[:, :, ::-1], dtype=np.float32) / 255.).permute(2, 0, 1)
        gt_patches = torch.stack([gt[:, t * scale:(t + p) * scale, l * scale:(l + p) * scale]
                                  for t in plan.tops for l in plan.lefts])
        b = min(INTERIOR_BORDER, (p - 1) // 2) * scale
        inner = (Ellipsis, slice(b, p * scale - b), slice(b, p * scale - b))
        errors = torch.stack([((out - gt_patches)[inner]**2).mean((1, 2, 3)) for out in outputs], 1)
        levels = hindsight_levels(errors.double().numpy(), costs, allowed)
        chosen = torch.stack([outputs[m][i] for i, m in enumerate(levels)])
        candidates.append(psnr(engine.stitch(chosen, plan), hr, scale))
    return max(candidates)


def measure(net, meta, pairs, budget, patch_size, overlap):
    """Mean PSNR of every method, FLOPs % of the budgeted ones and images the calibrated plan ran whole
    (the calibrated entries are None for a checkpoint without class errors)."""
    thresholds = engine_options(meta)['thresholds']
    common = dict(budget=budget, patch_size=patch_size, overlap=overlap)
    eq16 = DynamicInferenceEngine(net, thresholds=thresholds and thresholds.without_class_errors(),
                                  **common)
    calibrated = (DynamicInferenceEngine(net, thresholds=thresholds, **common)
                  if thresholds is not None and thresholds.class_errors else None)
    rows = {key: [] for key in ('full', 'eq16', 'cal', 'hindsight')}
    flops = {'eq16': 0, 'cal': 0, 'full': 0}
    whole = 0 if calibrated is not None else None
    with torch.inference_mode():
        for _, lq, hr in pairs:
            rows['full'].append(psnr(net(lq), hr, eq16.scale))
            sr, report = eq16.run(lq)
            rows['eq16'].append(psnr(sr, hr, eq16.scale))
            flops['eq16'] += report.flops
            flops['full'] += report.full_flops
            if calibrated is not None:
                sr, report = calibrated.run(lq)
                rows['cal'].append(psnr(sr, hr, eq16.scale))
                flops['cal'] += report.flops
                whole += report.plan.whole_image_subnet is not None
            rows['hindsight'].append(hindsight_psnr(eq16, net, lq, hr, budget))
    means = {key: float(np.mean(values)) if values else None for key, values in rows.items()}
    percent = {key: 100 * flops[key] / flops['full'] for key in ('eq16', 'cal')}
    return means, percent, whole


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', action='append', required=True, help='WBSR checkpoint (repeat for several)')
    parser.add_argument('--test', action='append', required=True, metavar='NAME=DIR', help='HR test folder')
    parser.add_argument('--budget', type=float, default=0.6)
    parser.add_argument('--patch-size', type=int, default=DEFAULT_PATCH_SIZE)
    parser.add_argument('--overlap', type=int, default=DEFAULT_OVERLAP)
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch\'s)')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tests = []
    for item in args.test:
        name, sep, folder = item.partition('=')
        if not sep or not name or not folder:
            parser.error(f'--test takes NAME=DIR, got {item!r}')
        tests.append((name, folder))
    print(f'# budget {args.budget}, patch {args.patch_size}, overlap {args.overlap}; {platform.processor() or "cpu"}, '
          f'torch {torch.__version__}, {torch.get_num_threads()} threads\n')
    print('| model | test | full | Eq. 16 (FLOPs) | gap | calibrated (FLOPs) | gap | hindsight | gap | run whole |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    loaded = {}
    for path in args.model:
        try:
            net, meta = load_supernet(path)
            for _, folder in tests:
                if (folder, net.upscale) not in loaded:
                    loaded[folder, net.upscale] = load_pairs(folder, None, net.upscale)
        except (CheckpointError, ImageReadError, OSError) as error:
            raise SystemExit(f'error: {error}') from None
        for name, folder in tests:
            pairs = loaded[folder, net.upscale]
            means, percent, whole = measure(net, meta, pairs, args.budget, args.patch_size, args.overlap)
            full = means['full']
            cal = (f"{means['cal']:.3f} ({percent['cal']:.0f} %) | {full - means['cal']:.3f}"
                   if means['cal'] is not None else '- | -')
            print(f"| {path} | {name} | {full:.3f} | {means['eq16']:.3f} ({percent['eq16']:.0f} %) | "
                  f"{full - means['eq16']:.3f} | {cal} | {means['hindsight']:.3f} | {full - means['hindsight']:.3f} | "
                  f"{'-' if whole is None else f'{whole}/{len(pairs)}'} |", flush=True)


if __name__ == '__main__':
    main()
