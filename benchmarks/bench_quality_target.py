"""Does a quality target hold on held-out photos? Expected against realised loss, per set and setting.

    python benchmarks/bench_quality_target.py --model net_g_latest.pth \\
        --set Set5=../shared/data/val/Set5 --set Set14=../shared/data/val/Set14 \\
        --set sun=../shared/data/train/sun_hays80@1/4 --set photos=/data/photos --max-side 1536 \\
        [--calibration other.pth ...] [--dump patches.npz]

For every HR folder (``NAME=DIR``, or ``NAME=DIR@I/N``: the sorted files whose index is I modulo N; LR by
MATLAB bicubic x scale, rounded to 8 bits) and every setting (quality targets ``--targets``, FLOPs budget
``--budget``, Eq. 15) it prints one markdown row:

  expected   the mean over the images of the expected loss against the full network (dB) that the engine
             plans by (the loss bound, with class errors that carry their counts);
  realised   the mean of Y-PSNR (border = scale) of the full network on the whole image minus Y-PSNR of the
             setting, against the HR photo;
  within     share of images whose realised loss is at most target + ``--slack`` dB (targets only);
  p90        90th percentile of the realised loss;
  FLOPs      FLOPs spent as a share of the full network's on the whole image.

``--calibration`` adds the class errors of other checkpoints of the same network (``calibrate``'s outputs): each
plans with the first checkpoint's weights. Every subnet runs once per image on all the engine's patches; every
plan is then stitched from those outputs, so settings and calibrations cost little more than one of them.
``--dump`` writes every patch's class, difficulty and squared errors (RGB and Y, patch interior and whole patch,
per subnet) for analysis. ``--max-side`` centre-crops HR images to at most that side (time on small machines).
"""
import argparse
import dataclasses
import platform
import sys
from os import path as osp

import numpy as np
import torch

import wbsr_plugin  # noqa: F401
from wbsr_plugin.cli.evaluation import to_uint8_bgr
from wbsr_plugin.cli.image_io import read_image
from wbsr_plugin.inference.checkpoint import CheckpointError, load_supernet
from wbsr_plugin.inference.engine import DynamicInferenceEngine
from wbsr_runtime import expected_quality
from wbsr_runtime.class_errors import ClassErrors
from wbsr_runtime.class_thresholds import ClassThresholds
from wbsr_runtime.files import list_images
from wbsr_runtime.images import ImageReadError
from wbsr_runtime.planning_target import PlanningTarget
from wbsr_runtime.tile_geometry import DEFAULT_OVERLAP

from basicsr.metrics import calculate_psnr
from basicsr.utils.matlab_functions import imresize

TARGETS = (0.01, 0.03, 0.05, 0.1)
INTERIOR = 2  # LR pixels of a patch's border left out of its interior error


def parse_set(text):
    """``NAME=DIR`` or ``NAME=DIR@I/N`` -> (name, folder, (i, n) or None)."""
    name, sep, rest = text.partition('=')
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f'expected NAME=DIR[@I/N], got {text!r}')
    folder, at, split = rest.partition('@')
    if not at:
        return name, folder, None
    try:
        i, n = (int(v) for v in split.split('/'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected @I/N after the folder, got {split!r}') from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f'@I/N needs 0 <= I < N, got {split!r}')
    return name, folder, (i, n)


def split_files(folder, split, limit=None):
    """The sorted images of ``folder``, those of ``split`` (i, n) only, at most ``limit``."""
    paths = list_images(folder)
    if split is not None:
        paths = [p for index, p in enumerate(paths) if index % split[1] == split[0]]
    return paths[:limit] if limit else paths


def read_pair(path, scale, max_side=None):
    """``(lq (1, 3, h, w) RGB in [0, 1] on 8-bit levels, hr uint8 BGR)`` of an HR file."""
    hr = read_image(path)[0]
    h, w = hr.shape[-2:]
    if max_side:
        ch, cw = min(h, max_side), min(w, max_side)
        top, left = (h - ch) // 2, (w - cw) // 2
        hr, h, w = hr[..., top:top + ch, left:left + cw], ch, cw
    hr = hr[..., :h - h % scale, :w - w % scale]
    lq = (imresize(hr[0], 1 / scale).clamp(0, 1) * 255).round().unsqueeze(0) / 255
    return lq, to_uint8_bgr(hr)


def y_psnr(sr, hr, scale):
    return calculate_psnr(to_uint8_bgr(sr), hr, crop_border=scale, test_y_channel=True)


class PatchOutputs:
    """Every subnet's outputs on the engine's patches of one image (computed once, on first use).

    Args:
        engine (DynamicInferenceEngine): Any engine of the network with the benchmark's tiling.
        lq (Tensor): The LR image.
    """

    def __init__(self, engine, lq):
        self.engine, self.lq = engine, lq
        self.plan = engine.planner.fixed_plan(engine.planner.analyse(lq), 0, False)
        self.outputs, self.whole = {}, {}

    def of(self, subnet):
        if subnet not in self.outputs:
            counts = [0] * len(self.engine.net.subnets)
            counts[subnet] = self.plan.subnets.numel()
            plan = dataclasses.replace(self.plan, subnets=torch.full_like(self.plan.subnets, subnet), histogram=counts)
            self.outputs[subnet] = self.engine.run_patches(self.lq, plan).float()
        return self.outputs[subnet]

    def whole_image(self, subnet):
        if subnet not in self.whole:
            self.whole[subnet] = self.engine.run_whole(self.lq, subnet)
        return self.whole[subnet]

    def realise(self, plan):
        """The SR image of ``plan`` (same tiling as this image's patches)."""
        if plan.whole_image_subnet is not None:
            return self.whole_image(plan.whole_image_subnet)
        chosen = plan.subnets.flatten()
        out = torch.empty_like(self.of(int(chosen[0])))
        for m in chosen.unique().tolist():
            ids = (chosen == m).nonzero().flatten()
            out[ids] = self.of(m)[ids]
        return self.engine.stitch(out, plan)


def patch_errors(outputs, hr, scale):
    """(N, M, 4) squared errors of every patch and subnet: RGB interior, Y interior, RGB whole, Y whole."""
    plan, p = outputs.plan, outputs.plan.patch_size
    gt = torch.from_numpy(np.ascontiguousarray(hr[:, :, ::-1], dtype=np.float32) / 255.).permute(2, 0, 1)
    gt = torch.stack([gt[:, t * scale:(t + p) * scale, l * scale:(l + p) * scale]
                      for t in plan.tops for l in plan.lefts])
    b = min(INTERIOR, (p - 1) // 2) * scale
    weights = torch.tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1) / 255.  # BasicSR's Y of RGB in [0, 1]
    result = []
    for m in range(len(outputs.engine.net.subnets)):
        diff = outputs.of(m).clamp(0, 1) - gt
        y = (diff * weights).sum(1, keepdim=True)
        inner = (Ellipsis, slice(b, p * scale - b), slice(b, p * scale - b))
        result.append(torch.stack([diff[inner].pow(2).mean((1, 2, 3)), y[inner].pow(2).mean((1, 2, 3)),
                                   diff.pow(2).mean((1, 2, 3)), y.pow(2).mean((1, 2, 3))], 1))
    return torch.stack(result, 1).double().numpy()


TILED_FULL = ('-', 'full network tiled')


def measure_set(net, engines, pairs, dump=None, set_name='', tiled_full=False):
    """Per engine key (and :data:`TILED_FULL` with ``tiled_full``: every patch through the full network, stitched):
    lists of (expected, realised, FLOPs share) over the images."""
    results = {key: [] for key in engines}
    if tiled_full:
        results[TILED_FULL] = []
    first = next(iter(engines.values()))
    full = len(net.subnets) - 1
    for index, (name, lq, hr) in enumerate(pairs):
        chosen = {}
        with torch.inference_mode():
            outputs = PatchOutputs(first, lq)
            reference = y_psnr(outputs.whole_image(full), hr, net.upscale)
            if tiled_full:
                plan = dataclasses.replace(outputs.plan, subnets=torch.full_like(outputs.plan.subnets, full))
                tiled_flops = plan.subnets.numel() * first.subnets.flops(plan.patch_size, plan.patch_size, full)
                results[TILED_FULL].append((None, reference - y_psnr(outputs.realise(plan), hr, net.upscale),
                                            tiled_flops / first.subnets.flops(*lq.shape[-2:], full)))
            for key, engine in engines.items():
                plan = engine.plan(lq)
                sr = reference if plan.whole_image_subnet == full else y_psnr(outputs.realise(plan), hr, net.upscale)
                expected = plan.expected_loss_db
                results[key].append((expected, reference - sr, engine.flops(plan) / first.subnets.flops(
                    *lq.shape[-2:], full)))
                chosen[key] = (plan.subnets.flatten().numpy() if plan.whole_image_subnet is None
                               else np.full(plan.subnets.numel(), plan.whole_image_subnet))
            if dump is not None:
                dump.append({'image': f'{set_name}/{name}', 'classes': outputs.plan.classes.flatten().numpy(),
                             'difficulty': outputs.plan.difficulty.flatten().numpy(),
                             'errors': patch_errors(outputs, hr, net.upscale), 'chosen': chosen,
                             'results': {key: values[-1] for key, values in results.items()}})
        print(f'  {index + 1}/{len(pairs)} {name}', file=sys.stderr, flush=True)
    return results


def summary_row(values, target, slack):
    expected = [e for e, _, _ in values if e is not None]
    realised = np.array([r for _, r, _ in values])
    within = f'{100 * np.mean(realised <= target + slack):.0f} %' if target is not None else '-'
    mean_expected = f'{np.mean(expected):.3f}' if expected else '-'
    return (f'{mean_expected} | {realised.mean():.3f} | {within} | {np.percentile(realised, 90):.3f} | '
            f'{100 * np.mean([f for _, _, f in values]):.0f} %')


TABLE_KINDS = ('mean', 'bound', 'classes', 'spread', 'no-detail', 'no-correlation')


def missed_images(values, names, target, slack):
    """The images whose realised loss is above ``target + slack`` (with it), or '-'."""
    if target is None:
        return '-'
    missed = [f'{name} {realised:.3f}' for name, (_, realised, _) in zip(names, values) if realised > target + slack]
    return ', '.join(missed) or '-'


def table_kind(text):
    """``mean``, ``bound``, ``bound:MARGIN``, ``classes`` (the class bound alone), ``spread`` (the class bound and
    the image's own spread), ``no-detail`` (the bound without the image's detail) or ``no-correlation`` (the bound
    without the subnets' correlation term)."""
    if text in TABLE_KINDS:
        return text
    try:
        if text.startswith('bound:') and float(text[6:]) >= 0:
            return text
    except ValueError:
        pass
    raise argparse.ArgumentTypeError('expected mean, bound, bound:MARGIN, classes, spread, no-detail or '
                                     f'no-correlation, got {text!r}')


def planning_thresholds(meta, kind):
    """The thresholds of a checkpoint's metadata with its class errors as ``kind`` says: ``'mean'``, the measured
    means; ``'bound'``, the table the engine plans with (:meth:`ClassErrors.planning_table`) and the image's own
    spread (:meth:`ClassErrors.spread_table`), detail (:attr:`ClassErrors.detail`), tiling's cost
    (:meth:`ClassErrors.tiling_table`) and the subnets' correlation (:attr:`ClassErrors.correlation`);
    ``'bound:M'``, the same with margin M; ``'classes'``, the class bound alone; ``'spread'``, the class bound and
    the image's spread; ``'no-detail'``, the bound without the image's detail;
    ``'no-correlation'``, the bound without the subnets' correlation term."""
    thresholds = ClassThresholds.from_meta(meta)
    errors = ClassErrors.from_meta(meta)
    if errors is None:
        raise ValueError('a checkpoint without class errors has no quality target')
    if kind == 'mean':
        return ClassThresholds.of(thresholds, class_errors=[list(row) for row in errors.means])
    terms = errors.planning_terms(margin=float(kind[6:]) if ':' in kind else None)
    if kind == 'classes':
        terms['class_spreads'] = None
    if kind in ('classes', 'spread', 'no-detail'):
        terms['class_detail'] = None
    if kind in ('classes', 'spread'):
        terms['class_tiling'] = None
    if kind in ('classes', 'spread', 'no-correlation'):
        terms['subnet_correlation'] = None
    return ClassThresholds.of(thresholds, **terms)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='WBSR checkpoint')
    parser.add_argument('--calibration', nargs='*', default=[], help='checkpoints of the same network whose class '
                        'errors are planned with as well')
    parser.add_argument('--tables', nargs='+', type=table_kind, default=['mean', 'bound'],
                        help='plan with the measured class means (mean), the bound the engine uses (bound), the '
                        'bound with another margin (bound:M), the class bound alone (classes), with the image\'s '
                        'own spread (spread), the bound without the image\'s detail (no-detail) or without the '
                        'subnets\' correlation term (no-correlation)')
    parser.add_argument('--set', action='append', required=True, type=parse_set, metavar='NAME=DIR[@I/N]')
    parser.add_argument('--targets', nargs='*', type=float, default=list(TARGETS), help='quality targets in dB')
    parser.add_argument('--budget', type=float, default=0.6, help='FLOPs budget (0: none)')
    parser.add_argument('--slack', type=float, default=0.02, help='dB above a target still counted as within')
    parser.add_argument('--limit', type=int, help='at most this many images per set')
    parser.add_argument('--max-side', type=int, help='centre-crop HR images to at most this side')
    parser.add_argument('--patch-size', type=int, help="LR patch side (default: the checkpoint's)")
    parser.add_argument('--overlap', type=int, default=DEFAULT_OVERLAP)
    parser.add_argument('--threads', type=int, help="torch threads (default: torch's)")
    parser.add_argument('--dump', help='write every patch\'s class and errors to this .npz')
    parser.add_argument('--misses', action='store_true', help='name the images above target + slack in every row')
    parser.add_argument('--tiled-full', action='store_true', help='add a row of the full network run tiled '
                        '(what tiling alone loses against the whole image)')
    parser.add_argument('--detail-power', type=float, help='plan with this power of the image\'s detail ratio '
                        '(default: expected_quality.DETAIL_POWER)')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.detail_power is not None:
        expected_quality.DETAIL_POWER = args.detail_power
    try:
        net, meta = load_supernet(args.model)
        metas = [(osp.basename(args.model), meta)] + [(osp.basename(p), load_supernet(p)[1]) for p in args.calibration]
        tables = [(f'{label} ({kind})', planning_thresholds(m, kind)) for label, m in metas for kind in args.tables]
        sets = [(name, [(osp.splitext(osp.basename(p))[0], *read_pair(p, net.upscale, args.max_side))
                        for p in split_files(folder, split, args.limit)]) for name, folder, split in args.set]
    except (CheckpointError, ImageReadError, FileNotFoundError, ValueError) as err:
        raise SystemExit(f'error: {err}') from None
    patch_size = args.patch_size or meta.get('patch_size') or 64
    settings = [(f'quality target {t:g}', PlanningTarget.quality(t), t) for t in args.targets]
    if args.budget:
        settings.append((f'FLOPs budget {args.budget:g}', PlanningTarget.flops_budget(args.budget), None))
    settings += [('Eq. 15', PlanningTarget.eq15(), None)]
    engines = {(label, name): DynamicInferenceEngine(net, thresholds=thresholds, target=target, patch_size=patch_size,
                                                     overlap=args.overlap)
               for label, thresholds in tables for name, target, _ in settings}
    print(f'# patch {patch_size}, overlap {args.overlap}; {platform.machine()}, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads\n')
    print('| calibration | set | images | setting | expected (dB) | realised (dB) | within target + '
          f'{args.slack:g} | p90 realised | FLOPs |' + (' above |' if args.misses else ''))
    print('|---|---|---|---|---|---|---|---|---|' + ('---|' if args.misses else ''))
    dump = [] if args.dump else None
    for set_name, pairs in sets:
        results = measure_set(net, engines, pairs, dump, set_name, args.tiled_full)
        if args.tiled_full:
            row = summary_row(results[TILED_FULL], None, args.slack)
            print(f'| - | {set_name} | {len(pairs)} | full network tiled | {row} |' + (' - |' if args.misses else ''))
        for label, _ in tables:
            for name, _, target in settings:
                row = summary_row(results[label, name], target, args.slack)
                if args.misses:
                    row += ' | ' + missed_images(results[label, name], [p[0] for p in pairs], target, args.slack)
                print(f'| {label} | {set_name} | {len(pairs)} | {name} | {row} |', flush=True)
    if dump is not None:
        keys = list(engines)
        np.savez_compressed(args.dump, images=np.array([d['image'] for d in dump]),
                            sizes=np.array([len(d['classes']) for d in dump]),
                            classes=np.concatenate([d['classes'] for d in dump]),
                            difficulty=np.concatenate([d['difficulty'] for d in dump]),
                            errors=np.concatenate([d['errors'] for d in dump]),
                            keys=np.array([' / '.join(key) for key in keys]),
                            chosen=np.stack([np.concatenate([d['chosen'][key] for d in dump]) for key in keys]),
                            results=np.array([[[np.nan if v is None else v for v in d['results'][key]] for key in keys]
                                              for d in dump]))


if __name__ == '__main__':
    main()
