"""Quality/cost trade-off of dynamic inference on a folder of LR/HR pairs.

    python -m wbsr_plugin.curve --hr datasets/Test2K/HR --model net_g_ema.pth -o results/curve

Sweeps the budget (fraction of the full network's FLOPs, or with ``--budget-unit time`` of the plain
network's time on this device) and the quality targets of ``--max-loss``, and also runs every fixed subnet
and the full network on the whole image as reference points. Plans are made by FLOPs, the same on every
machine, unless ``--plan-by time``: then this device's measured costs decide (an explicit subnet may then run
on the whole image, and no plan predicted slower than the plain network runs). PSNR/SSIM, FLOPs and the
LR images (``--lr``, or MATLAB bicubic of HR) are those of :mod:`wbsr_plugin.cli.evaluation`, and so are the
times: every setting runs once untimed at each new image size, the full network in the engine's
channels-last format.
Writes curve.md, curve.csv and, when matplotlib is installed, curve.png.
"""
import argparse
import csv
import io
import os
import sys
from os import path as osp

from tqdm import tqdm

import wbsr_plugin  # noqa: F401
from wbsr_plugin.archs.supernet_util import supernet_types
from wbsr_plugin.cli.evaluation import engine_runner, evaluate, load_pairs, whole_image_runner
from wbsr_plugin.cli.image_io import ImageReadError
from wbsr_plugin.cli.interrupts import run_interruptibly
from wbsr_plugin.cli.options_yaml import network_options_from_yaml
from wbsr_plugin.cli.output_folders import OutputFolderError, check_output_folder
from wbsr_plugin.cli.sharding import DistContext, rank_device
from wbsr_plugin.inference.checkpoint import engine_options, load_supernet
from wbsr_plugin.inference.cost_model import load_or_measure
from wbsr_plugin.inference.tiling import DEFAULT_OVERLAP, DEFAULT_PATCH_SIZE
from wbsr_plugin.utils.files import atomic_path, atomic_write_text

DEFAULT_BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def run(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr', required=True, help='folder of HR images')
    parser.add_argument('--lr', help='folder of LR images (same names, or NAMExS); default: MATLAB bicubic of HR')
    parser.add_argument('--model', required=True, help='supernet checkpoint')
    parser.add_argument('--arch', choices=supernet_types(), help='expected architecture (checked)')
    parser.add_argument('--opt', help='training YAML whose network_g builds the network')
    parser.add_argument('-s', '--scale', type=int, choices=(2, 3, 4, 8), help='expected upscale factor (checked)')
    parser.add_argument('--budgets', type=float, nargs='+', default=list(DEFAULT_BUDGETS))
    parser.add_argument('--budget-unit', choices=('flops', 'time'), default='flops',
                        help='flops: budgets are shares of the FLOPs (default); time: of the plain network\'s time '
                        '(implies --plan-by time)')
    parser.add_argument('--max-loss', type=float, nargs='+', default=[], metavar='DB',
                        help='quality targets in dB (need the checkpoint\'s class errors)')
    parser.add_argument('--plan-by', choices=('flops', 'time'),
                        help='flops: the same plans on every machine (default); time: by this device\'s costs')
    parser.add_argument('-t', '--tile', '--patch-size', dest='patch_size', type=int, default=DEFAULT_PATCH_SIZE)
    parser.add_argument('--overlap', type=int, default=DEFAULT_OVERLAP)
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    parser.add_argument('--fp32', action='store_true', help='full precision on CUDA (CPU is always fp32)')
    parser.add_argument('-o', '--output', default='results/curve', help='output folder')
    parser.add_argument('--overwrite', action='store_true', help='replace curve.csv, curve.md and curve.png if they '
                        'exist (without it, the run stops before computing)')
    args = parser.parse_args(argv)
    if not all(0 < b <= 1 for b in args.budgets):
        parser.error(f'every budget must lie in (0, 1], got {args.budgets}')
    if not all(loss >= 0 for loss in args.max_loss):
        parser.error(f'every --max-loss must be >= 0 dB, got {args.max_loss}')
    if args.budget_unit == 'time' and args.plan_by == 'flops':
        parser.error('--budget-unit time is a latency budget: it plans by time (drop --plan-by flops)')
    by_time = args.budget_unit == 'time' or args.plan_by == 'time'
    try:  # before any computation
        check_output_folder(args.output)
    except OutputFolderError as err:
        parser.exit(2, f'error: {err}\n')
    existing = [p for p in (osp.join(args.output, f'curve.{e}') for e in ('csv', 'md', 'png')) if osp.exists(p)]
    if existing and not args.overwrite:
        parser.exit(2, f'error: {", ".join(existing)} exist(s) already; pass --overwrite to replace them\n')

    try:
        device = rank_device(args.device, DistContext())
    except ValueError as err:
        parser.exit(2, f'error: --device: {err}\n')
    try:
        net, meta = load_supernet(args.model, arch=args.arch, scale=args.scale,
                                  network_opt=network_options_from_yaml(args.opt) if args.opt else None,
                                  device=device)
    except (ValueError, TypeError) as err:  # CheckpointError, network options that do not fit
        parser.exit(2, f'error: {err}\n')
    if device.type == 'cuda' and not args.fp32:
        net = net.half()
    try:
        pairs = load_pairs(args.hr, args.lr, net.upscale)
    except (ImageReadError, FileNotFoundError) as err:
        parser.exit(2, f'error: {err}\n')
    if not pairs:
        parser.exit(2, f'error: no images in {args.hr}\n')
    cost_table = load_or_measure(net, device, next(net.parameters()).dtype) if by_time else None
    common = dict(**engine_options(meta), patch_size=args.patch_size, overlap=args.overlap, cost_table=cost_table,
                  channels_last=True)
    thresholds = common['thresholds']
    if args.max_loss and (thresholds is None or thresholds.class_errors is None):
        parser.exit(2, f'error: --max-loss needs class errors, and {args.model} stores none\n')
    tiled = '' if by_time else ', tiled'
    unit = ' of the time' if args.budget_unit == 'time' else ''
    settings = [('full network, whole image', whole_image_runner(net, channels_last=common['channels_last']))]
    settings += [(f'subnet {s.index} (w{s.width} d{s.depth}){tiled}', engine_runner(net, **common, subnet=s.index))
                 for s in net.subnets]
    settings += [(f'budget {b:g}{unit}', engine_runner(net, **common, budget=b, budget_unit=args.budget_unit))
                 for b in sorted(args.budgets)]
    settings += [(f'quality target {loss:g} dB', engine_runner(net, **common, max_loss=loss))
                 for loss in sorted(args.max_loss)]
    if thresholds is not None:
        settings.append(('Eq. 15, stored thresholds', engine_runner(net, **common)))

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
    source = 'checkpoint' if thresholds is not None else 'per-image quantiles'
    lines = [f'{type(net).__name__} x{net.upscale}, {len(pairs)} image(s) from {args.hr}, patch {args.patch_size}, '
             f'overlap {args.overlap}, thresholds: {source}, plans by {"time (this device)" if by_time else "FLOPs"}',
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


def main(argv=None):
    """The command; Ctrl-C or SIGTERM ends it with status 130 and no unfinished file."""
    return run_interruptibly(run, argv, 'curve')


if __name__ == '__main__':
    sys.exit(main())
