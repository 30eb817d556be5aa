"""Quality/cost trade-off of dynamic inference on a folder of LR/HR pairs.

    python -m wbsr_plugin.curve --hr datasets/Test2K/HR --model net_g_ema.pth -o results/curve

Sweeps the budget (fraction of the full network's FLOPs) and also runs every fixed subnet
(tiled) and the full network on the whole image as reference points. PSNR/SSIM are BasicSR's
``calculate_psnr``/``calculate_ssim`` on the Y channel with ``crop_border = scale``. Without
``--lr``, LR images are made from the HR ones by MATLAB bicubic (``basicsr.utils.matlab_functions
.imresize``) after cropping HR to a multiple of the scale. Writes curve.md, curve.csv and, when
matplotlib is installed, curve.png.
"""
import argparse
import csv
import io
import os
import sys
import time
from os import path as osp

import numpy as np
import torch
from tqdm import tqdm

import wbsr_plugin  # noqa: F401
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils.matlab_functions import imresize
from wbsr_plugin.archs.supernet_util import REFERENCE_LQ_SIZE
from wbsr_plugin.file_util import atomic_path, atomic_write_text
from wbsr_plugin.infer import network_options_from_yaml, select_device
from wbsr_plugin.inference.checkpoint import SUPERNETS, CheckpointError, load_supernet
from wbsr_plugin.inference.engine import DEFAULT_OVERLAP, DEFAULT_PATCH_SIZE, DynamicInferenceEngine
from wbsr_plugin.inference.image_io import ImageReadError, list_images, read_image

DEFAULT_BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def to_uint8_bgr(tensor):
    """(1, 3, H, W) RGB in [0, 1] -> H x W x 3 BGR uint8 (as BasicSR's tensor2img)."""
    img = tensor[0].detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)[:, :, ::-1]
    return (img * 255.).round().astype(np.uint8)


def load_pairs(hr_dir, lr_dir, scale):
    """(name, lq tensor, hr uint8 BGR) for every HR image; LR from ``lr_dir`` or MATLAB bicubic."""
    pairs = []
    for hr_path in list_images(hr_dir):
        name = osp.splitext(osp.basename(hr_path))[0]
        hr, _ = read_image(hr_path)
        h, w = hr.shape[-2:]
        hr = hr[..., :h - h % scale, :w - w % scale]
        if lr_dir:
            candidates = [p for p in list_images(lr_dir) if osp.splitext(osp.basename(p))[0] in (name, f'{name}x{scale}')]
            if not candidates:
                raise ImageReadError(f'no LR image for {hr_path} in {lr_dir}')
            lq, _ = read_image(candidates[0])
            if tuple(lq.shape[-2:]) != (hr.shape[-2] // scale, hr.shape[-1] // scale):
                raise ImageReadError(f'{candidates[0]} is not {hr_path} / {scale}')
        else:
            lq = imresize(hr[0], 1 / scale).clamp(0, 1).unsqueeze(0)
        pairs.append((name, lq, to_uint8_bgr(hr)))
    return pairs


def evaluate(run, pairs, scale):
    psnr, ssim, flops, full, seconds = [], [], 0, 0, 0.
    for _, lq, hr in pairs:
        sr, report = run(lq)
        img = to_uint8_bgr(sr)
        psnr.append(calculate_psnr(img, hr, crop_border=scale, test_y_channel=True))
        ssim.append(calculate_ssim(img, hr, crop_border=scale, test_y_channel=True))
        flops += report['flops']
        full += report['full_flops']
        seconds += report['time_s']
    pixels = sum(lq.shape[-1] * lq.shape[-2] for _, lq, _ in pairs)
    return {
        'psnr': float(np.mean(psnr)),
        'ssim': float(np.mean(ssim)),
        'flops_percent': 100 * flops / full,
        'gflops_per_32x32': flops / 1e9 * REFERENCE_LQ_SIZE**2 / pixels,
        'time_s': seconds
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr', required=True, help='folder of HR images')
    parser.add_argument('--lr', help='folder of LR images (same names, or NAMExS); default: MATLAB bicubic of HR')
    parser.add_argument('--model', required=True, help='supernet checkpoint')
    parser.add_argument('--arch', choices=SUPERNETS, help='expected architecture (checked)')
    parser.add_argument('--opt', help='training YAML whose network_g builds the network')
    parser.add_argument('-s', '--scale', type=int, choices=(2, 3, 4, 8), help='expected upscale factor (checked)')
    parser.add_argument('--budgets', type=float, nargs='+', default=list(DEFAULT_BUDGETS))
    parser.add_argument('-t', '--tile', '--patch-size', dest='patch_size', type=int, default=DEFAULT_PATCH_SIZE)
    parser.add_argument('--overlap', type=int, default=DEFAULT_OVERLAP)
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    parser.add_argument('--fp32', action='store_true', help='full precision on CUDA (CPU is always fp32)')
    parser.add_argument('-o', '--output', default='results/curve', help='output folder')
    args = parser.parse_args(argv)
    if not all(0 < b <= 1 for b in args.budgets):
        parser.error(f'every budget must lie in (0, 1], got {args.budgets}')

    device = select_device(args.device)
    try:
        net, meta = load_supernet(args.model, arch=args.arch, scale=args.scale,
                                  network_opt=network_options_from_yaml(args.opt) if args.opt else None,
                                  device=device)
    except CheckpointError as err:
        parser.exit(2, f'error: {err}\n')
    if device.type == 'cuda' and not args.fp32:
        net = net.half()
    try:
        pairs = load_pairs(args.hr, args.lr, net.upscale)
    except (ImageReadError, FileNotFoundError) as err:
        parser.exit(2, f'error: {err}\n')
    if not pairs:
        parser.exit(2, f'error: no images in {args.hr}\n')
    thresholds = meta.get('thresholds')
    common = dict(thresholds=thresholds, patch_size=args.patch_size, overlap=args.overlap,
                  num_classes=len(thresholds) + 1 if thresholds is not None else 10)

    def engine_runner(**kwargs):
        engine = DynamicInferenceEngine(net, **common, **kwargs)

        def run(lq):
            sr, report = engine.run(lq)
            return sr, {'flops': report.flops, 'full_flops': report.full_flops, 'time_s': report.time_s}

        return run

    def whole_image(lq):
        start = time.perf_counter()
        with torch.inference_mode():
            sr = net(lq.to(device=device, dtype=next(net.parameters()).dtype))
        flops = net.flops(*lq.shape[-2:])
        return sr, {'flops': flops, 'full_flops': flops, 'time_s': time.perf_counter() - start}

    settings = [('full network, whole image', whole_image)]
    settings += [(f'subnet {s.index} (w{s.width} d{s.depth}), tiled', engine_runner(subnet=s.index))
                 for s in net.subnets]
    settings += [(f'budget {b:g}', engine_runner(budget=b)) for b in sorted(args.budgets)]
    if thresholds is not None:
        settings.append(('Eq. 15, stored thresholds', engine_runner()))

    rows = []
    for label, run in tqdm(settings, unit='setting'):
        rows.append({'setting': label, **evaluate(run, pairs, net.upscale)})

    os.makedirs(args.output, exist_ok=True)
    fields = ['setting', 'psnr', 'ssim', 'flops_percent', 'gflops_per_32x32', 'time_s']
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(osp.join(args.output, 'curve.csv'), buffer.getvalue())
    lines = [f'{type(net).__name__} x{net.upscale}, {len(pairs)} image(s) from {args.hr}, patch {args.patch_size}, '
             f'overlap {args.overlap}, thresholds: {"checkpoint" if thresholds is not None else "per-image quantiles"}',
             '', '| setting | PSNR-Y (dB) | SSIM-Y | FLOPs (% of full) | GFLOPs / 32x32 LR | time (s) |',
             '|---|---|---|---|---|---|']
    lines += [f"| {r['setting']} | {r['psnr']:.3f} | {r['ssim']:.4f} | {r['flops_percent']:.1f} | "
              f"{r['gflops_per_32x32']:.2f} | {r['time_s']:.2f} |" for r in rows]
    table = '\n'.join(lines) + '\n'
    atomic_write_text(osp.join(args.output, 'curve.md'), table)
    print(table)
    try:
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot as plt
    except ImportError:
        print('matplotlib is not installed: curve.png skipped (pip install matplotlib).', file=sys.stderr)
        return 0
    fig, ax = plt.subplots(figsize=(6, 4))
    budget_rows = [r for r in rows if r['setting'].startswith('budget')]
    subnet_rows = [r for r in rows if r['setting'].startswith('subnet')]
    ax.plot([r['flops_percent'] for r in budget_rows], [r['psnr'] for r in budget_rows], 'o-', label='dynamic (budget)')
    ax.plot([r['flops_percent'] for r in subnet_rows], [r['psnr'] for r in subnet_rows], 's', label='fixed subnets')
    ax.plot([rows[0]['flops_percent']], [rows[0]['psnr']], '*', markersize=12, label='full network')
    ax.set_xlabel('FLOPs (% of the full network on the whole image)')
    ax.set_ylabel('PSNR-Y (dB)')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(osp.join(args.output, 'curve.png')) as tmp:
        fig.savefig(tmp, format='png', dpi=120)
    return 0


if __name__ == '__main__':
    sys.exit(main())
