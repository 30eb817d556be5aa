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
Every row also gives the realised loss (the full network's mean PSNR minus the setting's) beside the expected
loss its plans reported: every dynamic setting (budgets, Eq. 15, quality targets, latency budgets) of a checkpoint
with class errors, by the class errors it planned with (the bound, for checkpoints that store counts).
Writes curve.md, curve.csv and, when matplotlib is installed, curve.png.
"""
import csv
import io
import os
import sys
from os import path as osp

import torch

import wbsr_plugin  # noqa: F401
from wbsr_plugin.cli.common_args import (
    CommandParser,
    add_device_arguments,
    add_model_arguments,
    add_planning_arguments,
    runtime_of,
    sweep_targets,
)
from wbsr_plugin.cli.evaluation import engine_runner, evaluate, load_pairs, whole_image_runner
from wbsr_plugin.cli.options_yaml import network_options_from_yaml
from wbsr_plugin.cli.sharding import DistContext, rank_device
from wbsr_plugin.inference.checkpoint import engine_options, load_supernet
from wbsr_plugin.inference.cost_model import load_or_measure
from wbsr_plugin.utils.progress import progress_bar
from wbsr_runtime.files import atomic_path, atomic_write_text
from wbsr_runtime.images import ImageReadError
from wbsr_runtime.interrupts import run_interruptibly
from wbsr_runtime.output_folders import OutputFolderError, check_output_folder
from wbsr_runtime.planning_target import PlanningTarget, checkpoint_policy

DEFAULT_BUDGETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def build_parser():
    parser = CommandParser('curve', __doc__)
    parser.add_argument('--hr', required=True, help='folder of HR images')
    parser.add_argument('--lr', help='folder of LR images (same names, or NAMExS); default: MATLAB bicubic of HR')
    add_model_arguments(parser)
    add_planning_arguments(parser, sweep=True)
    add_device_arguments(parser)
    parser.add_argument('-o', '--output', default='results/curve', help='output folder')
    parser.add_argument('--overwrite', action='store_true', help='replace curve.csv, curve.md and curve.png if they '
                        'exist (without it, the run stops before computing)')
    return parser


def run(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    targets = sweep_targets(args, parser, DEFAULT_BUDGETS)
    try:  # before any computation
        check_output_folder(args.output)
    except OutputFolderError as err:
        parser.exit(2, f'{parser.prog}: error: {err}\n')
    existing = [p for p in (osp.join(args.output, f'curve.{e}') for e in ('csv', 'md', 'png')) if osp.lexists(p)]
    blocked = [p for p in existing if not osp.isfile(p)]
    if blocked:
        parser.exit(2, f'{parser.prog}: error: -o: {blocked[0]} is not a file, and curve writes it; rename or remove '
                    'it, or choose another -o\n')
    if existing and not args.overwrite:
        parser.exit(2, f'{parser.prog}: error: {", ".join(existing)} exist(s) already; pass --overwrite to replace '
                    'them\n')

    try:
        device = rank_device(args.device, DistContext())
    except ValueError as err:
        parser.exit(2, f'{parser.prog}: error: --device: {err}\n')
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        net, meta = load_supernet(args.model, arch=args.arch, scale=args.scale,
                                  network_opt=network_options_from_yaml(args.opt) if args.opt else None,
                                  device=device)
        policy = checkpoint_policy(meta, patch_size=args.patch_size, overlap=args.overlap, plan_by=args.plan_by)
        thresholds = engine_options(meta)['thresholds']
        for target in targets:
            checkpoint_policy(meta, target=target)  # a quality target without class errors: one line, now
    except (ValueError, TypeError) as err:  # CheckpointError, PlanningTargetError, network options that do not fit
        parser.exit(2, f'{parser.prog}: error: {err}\n')
    if device.type == 'cuda' and not args.fp32:
        net = net.half()
    try:
        pairs = load_pairs(args.hr, args.lr, net.upscale)
    except (ImageReadError, FileNotFoundError) as err:
        parser.exit(2, f'{parser.prog}: error: {err}\n')
    if not pairs:
        parser.exit(2, f'{parser.prog}: error: no images in {args.hr}\n')
    runtime, _ = runtime_of(args, parser, net, device)
    by_time = policy.target.by_time or any(t.by_time for t in targets)
    cost_table = load_or_measure(net, device, next(net.parameters()).dtype, runtime=runtime) if by_time else None
    common = dict(thresholds=thresholds, patch_size=policy.patch_size, overlap=policy.overlap, cost_table=cost_table,
                  channels_last=True, runtime=runtime)
    tiled = '' if by_time else ', tiled'
    settings = [('full network, whole image', whole_image_runner(net, channels_last=common['channels_last']))]
    settings += [(f'subnet {s.index} (w{s.width} d{s.depth}){tiled}',
                  engine_runner(net, **common, target=PlanningTarget.fixed_subnet(s.index, policy.target.plan_by)))
                 for s in net.subnets]
    settings += [(str(t), engine_runner(net, **common, target=t))
                 for t in sorted(targets, key=lambda t: (t.kind, t.value))]
    if thresholds is not None:
        settings.append(('Eq. 15, stored thresholds',
                         engine_runner(net, **common, target=PlanningTarget.eq15(policy.target.plan_by))))
    settings.append((f'default policy: {policy.target}', engine_runner(net, **common, target=policy.target)))

    rows = []
    for label, run in progress_bar(settings, unit='setting'):
        rows.append({'setting': label, **evaluate(run, pairs, net.upscale)})
    try:
        return write_results(args, rows, net, runtime, pairs, policy, thresholds, by_time)
    except FileExistsError as err:  # another run wrote it meanwhile: kept
        print(f'{parser.prog}: error: {err.filename} appeared while this run computed it (another run writing into '
              '-o?); kept it; pass --overwrite to replace it', file=sys.stderr)
        return 1


def write_results(args, rows, net, runtime, pairs, policy, thresholds, by_time):
    """Write curve.csv, curve.md and (with matplotlib) curve.png; without ``--overwrite`` only where the names are
    still free (``FileExistsError`` otherwise)."""
    os.makedirs(args.output, exist_ok=True)
    for r in rows:  # realised loss: the full network's mean PSNR (rows[0]) minus the setting's
        r['realised_loss_db'] = rows[0]['psnr'] - r['psnr']
    fields = ['setting', 'psnr', 'ssim', 'flops_percent', 'gflops_per_32x32', 'time_s', 'expected_loss_db',
              'realised_loss_db']
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(osp.join(args.output, 'curve.csv'), buffer.getvalue(), replace=args.overwrite)
    source = 'checkpoint' if thresholds is not None else 'per-image quantiles'
    lines = [f'{type(net).__name__} x{net.upscale} ({runtime}), {len(pairs)} image(s) from {args.hr}, '
             f'patch {policy.patch_size}, '
             f'overlap {policy.overlap}, thresholds: {source}, plans by {"time (this device)" if by_time else "FLOPs"}',
             '', '| setting | PSNR-Y (dB) | SSIM-Y | FLOPs (% of full) | GFLOPs / 32x32 LR | time (s) '
             '| expected loss (dB) | realised loss (dB) |', '|---|---|---|---|---|---|---|---|']
    lines += [f"| {r['setting']} | {r['psnr']:.3f} | {r['ssim']:.4f} | {r['flops_percent']:.1f} | "
              f"{r['gflops_per_32x32']:.2f} | {r['time_s']:.2f} | "
              f"{'-' if r.get('expected_loss_db') is None else format(r['expected_loss_db'], '.3f')} | "
              f"{r['realised_loss_db']:.3f} |" for r in rows]
    table = '\n'.join(lines) + '\n'
    atomic_write_text(osp.join(args.output, 'curve.md'), table, replace=args.overwrite)
    print(table)
    try:
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot as plt
    except ImportError:
        print('matplotlib is not installed: curve.png skipped (pip install matplotlib).', file=sys.stderr)
        return 0
    fig, ax = plt.subplots(figsize=(6, 4))
    budget_rows = [r for r in rows if r['setting'].startswith(('FLOPs budget', 'latency budget'))]
    subnet_rows = [r for r in rows if r['setting'].startswith('subnet')]
    ax.plot([r['flops_percent'] for r in budget_rows], [r['psnr'] for r in budget_rows], 'o-', label='dynamic (budget)')
    ax.plot([r['flops_percent'] for r in subnet_rows], [r['psnr'] for r in subnet_rows], 's', label='fixed subnets')
    ax.plot([rows[0]['flops_percent']], [rows[0]['psnr']], '*', markersize=12, label='full network')
    ax.set_xlabel('FLOPs (% of the full network on the whole image)')
    ax.set_ylabel('PSNR-Y (dB)')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(osp.join(args.output, 'curve.png'), replace=args.overwrite) as tmp:
        fig.savefig(tmp, format='png', dpi=120)
    return 0


def main(argv=None):
    """The command; Ctrl-C or SIGTERM ends it with status 130 and no unfinished file."""
    return run_interruptibly(run, argv, 'curve')


if __name__ == '__main__':
    sys.exit(main())
