"""Super-resolve images with a WBSR supernet by gradient-projection dynamic inference.

    python -m wbsr_plugin.infer -i inputs/ -o results/ --model net_g_ema.pth --budget 0.6 --save-map

Each image is tiled, every patch is sent to the subnet its difficulty calls for (or chosen to
meet ``--budget``, a fraction of the full network's FLOPs, or with ``--budget-unit time`` of the plain
network's time on this device; or to keep the expected loss within ``--max-loss`` dB, the default with
checkpoints that store class errors), and the outputs are blended.
One summary line per image: size, subnet histogram, FLOPs and time. Unreadable inputs are
skipped with a warning, and the exit status is 1 if any image failed. ``--skip-existing`` leaves
out inputs whose output is already written (see :mod:`wbsr_plugin.cli.output_names`). ``--plan-by time``
lets this device's measured costs choose the plan (never slower than the plain network); the default,
``flops``, gives the same plan on every machine (docs/inference.md says why). On a GPU (or with a CPU core to
spare) the next images are decoded and the finished ones written in background threads while the network runs
(:mod:`wbsr_plugin.cli.image_pipeline`); ``--pipeline serial`` does one step after another.

Under ``torchrun --nproc_per_node=N -m wbsr_plugin.infer ...`` the folder is shared between the N
processes (:mod:`wbsr_plugin.cli.sharding`): each writes its own files, on its own GPU when
there is one per process, else on the CPU; rank 0 prints the totals.
"""
import argparse
import sys
import time
from os import path as osp

import torch

import wbsr_plugin  # noqa: F401  (registers the architectures)
from wbsr_plugin.archs.supernet_util import supernet_types
from wbsr_plugin.cli.arg_types import positive_int
from wbsr_plugin.cli.folder_inference import DiskFull, status_line, super_resolve
from wbsr_plugin.cli.interrupts import INTERRUPTED, sigterm_as_interrupt
from wbsr_plugin.cli.options_yaml import network_options_from_yaml
from wbsr_plugin.cli.output_folders import OutputFolderError, check_output_folder
from wbsr_plugin.cli.output_names import (
    OUTPUT_EXTENSIONS,
    OutputConflict,
    OutputNames,
    outputs_among_inputs,
)
from wbsr_plugin.cli.sharding import (
    DistContext,
    RankTotals,
    barrier,
    broadcast_object,
    cpu_threads_per_rank,
    dist_context_from_env,
    gather_objects,
    plan_work,
    process_group,
    rank_device,
    totals_summary,
)
from wbsr_plugin.inference.checkpoint import CheckpointError, engine_options, load_supernet
from wbsr_plugin.inference.cost_model import load_or_measure
from wbsr_plugin.inference.engine import DynamicInferenceEngine
from wbsr_plugin.inference.tiling import DEFAULT_OVERLAP, DEFAULT_PATCH_SIZE
from wbsr_plugin.utils.files import list_images
from wbsr_plugin.utils.memory import bound_onednn_cache


def budget_fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'budget must be a number in (0, 1], got {text!r}') from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f'budget must be a fraction of the full FLOPs in (0, 1], got {value}')
    return value


# infer's default quality target with a checkpoint that stores class errors: the largest target that lost no more
# than Eq. 15 on held-out photos (docs/RESULTS.md, "Quality target against Eq. 15 on held-out photos")
DEFAULT_MAX_LOSS = 0.03


def loss_db(text):
    if text == 'off':
        return 'off'
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a loss in dB >= 0 or 'off', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a loss in dB >= 0 or 'off', got {value}")
    return value


def select_device(name, ctx=DistContext()):
    try:
        return rank_device(name, ctx)
    except ValueError as err:
        raise SystemExit(f'error: --device: {err}') from None


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-i', '--input', required=True, help='input image or folder')
    parser.add_argument('-o', '--output', default='results', help='output folder. Default: results')
    parser.add_argument('--model', required=True, help='checkpoint (.pth) of a WBSR supernet')
    parser.add_argument('--arch', choices=supernet_types(),
                        help='expected architecture (checked against the checkpoint)')
    parser.add_argument('--opt', help="training YAML whose network_g builds the network (for checkpoints "
                        "without 'wbsr' metadata and non-default sizes)")
    parser.add_argument('-s', '--scale', type=int, choices=(2, 3, 4, 8), help='expected upscale factor (checked)')
    parser.add_argument('--budget', type=budget_fraction,
                        help='target fraction of the full network FLOPs (or time, see --budget-unit), in (0, 1]; '
                        'default: Eq. 15 projection')
    parser.add_argument('--budget-unit', choices=('flops', 'time'), default='flops',
                        help='flops: --budget is a share of the FLOPs (default); time: a latency budget, a share of '
                        'the plain network\'s time on this device (implies --plan-by time)')
    parser.add_argument('--max-loss', type=loss_db, metavar='DB',
                        help='quality target: the fastest plan whose expected loss against the full network is at '
                        'most DB dB of PSNR (needs the checkpoint\'s class errors); off: Eq. 15. Default: '
                        f'{DEFAULT_MAX_LOSS} with class errors and without --budget or --subnet, else Eq. 15')
    parser.add_argument('--subnet', type=int, help='run every patch through this subnet index (0 = cheapest)')
    parser.add_argument('-t', '--tile', '--patch-size', dest='patch_size', type=int, default=DEFAULT_PATCH_SIZE,
                        help=f'LR patch size. Default: {DEFAULT_PATCH_SIZE}')
    parser.add_argument('--overlap', type=int, default=DEFAULT_OVERLAP,
                        help=f'least LR overlap between patches. Default: {DEFAULT_OVERLAP}')
    parser.add_argument('--fp32', action='store_true', help='full precision on CUDA (CPU is always fp32)')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto', help='Default: auto')
    parser.add_argument('--save-map', action='store_true', help='also write NAME_map.png: subnet per patch')
    parser.add_argument('--suffix', default='out', help='output name suffix: NAME_SUFFIX.EXT. Default: out')
    parser.add_argument('--ext', choices=OUTPUT_EXTENSIONS, default='auto',
                        help='output format; auto keeps the input format (png for 16-bit/alpha). Default: auto')
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument('--skip-existing', action='store_true',
                          help='leave out inputs whose output (and map, with --save-map) already exists; of the '
                          'others, write only the missing files')
    existing.add_argument('--overwrite', action='store_true',
                          help='replace files this run writes that exist already (without it, or --skip-existing, '
                          'the run stops before computing when one exists)')
    parser.add_argument('--plan-by', choices=('flops', 'time'),
                        help='flops: the same plan on every machine (the default); time: this device\'s measured '
                        'costs decide, never slower than the plain network (measured once and cached; '
                        'docs/inference.md)')
    parser.add_argument('--refresh-costs', action='store_true',
                        help='with --plan-by time: measure this device\'s costs again')
    parser.add_argument('--threads', type=positive_int,
                        help='CPU threads per process. Default: torch\'s, or the cores split between the '
                        'processes of a torchrun launch on the CPU')
    parser.add_argument('--pipeline', choices=('auto', 'overlapped', 'serial'), default='auto',
                        help='overlapped: read the next images and write the finished ones in background threads '
                        'while the network runs; serial: one step after another. Default: auto (overlapped on a '
                        'GPU, or on a CPU when the network\'s threads leave a core free; else serial, since the '
                        'background threads would only take cores from the network)')
    return parser


def plan_outputs(args, parser, ctx):
    """``(inputs, OutputNames)`` of the run, checked before any computation (the policy of
    :mod:`wbsr_plugin.cli.output_names`); a conflict exits with one ``error:`` line on every rank."""
    try:
        paths = list_images(args.input)
    except FileNotFoundError as err:
        parser.exit(2, f'error: -i: {err}\n')
    paths, left_out = outputs_among_inputs(paths, args.input, args.output, args.suffix)
    if not paths:
        parser.exit(2, f'error: -i: no images in {args.input}\n')
    problem = None
    try:
        names = OutputNames(args.output, paths, args.suffix, args.ext, args.save_map)
    except OutputConflict as err:
        problem = str(err)
    if ctx.is_main and problem is None:  # rank 0 looks at the folder before any rank writes into it
        try:
            check_output_folder(args.output)
            names.check_existing(paths, args.overwrite, args.skip_existing)
        except (OutputFolderError, OutputConflict) as err:
            problem = str(err)
    problem = broadcast_object(problem, ctx)
    if problem is not None:
        parser.exit(2, f'error: {problem}\n')
    if ctx.is_main and left_out:
        print(f'note: left out {len(left_out)} file(s) of {args.input} that look like outputs of this command '
              f'(-o lies in -i): {", ".join(osp.basename(p) for p in left_out[:5])}'
              + (' ...' if len(left_out) > 5 else ''), file=sys.stderr)
    return paths, names


def build_engine(args, parser, device, network_opt):
    """``(engine, net, meta)`` of the command line; a bad checkpoint or option exits with its message. With
    ``--plan-by time`` this device's cost table is read, or measured (by rank 0 under torchrun) and cached."""
    try:
        net, meta = load_supernet(args.model, arch=args.arch, scale=args.scale, network_opt=network_opt,
                                  device=device)
        if device.type == 'cuda' and not args.fp32:
            net = net.half()
        stored = engine_options(meta)
        has_class_errors = stored['thresholds'] is not None and stored['thresholds'].class_errors is not None
        max_loss = None if args.max_loss == 'off' else args.max_loss
        if args.max_loss is None and args.budget is None and args.subnet is None and has_class_errors:
            max_loss = DEFAULT_MAX_LOSS
        cost_table = None
        if args.plan_by == 'time':
            cost_table = load_or_measure(net, device, next(net.parameters()).dtype, refresh=args.refresh_costs,
                                         on_measure=lambda path: status_line(
                                             f"measuring this device's costs (a few seconds, once; kept in {path})",
                                             file=sys.stderr))
        engine = DynamicInferenceEngine(
            net,
            **stored,
            cost_table=cost_table,
            patch_size=args.patch_size,
            overlap=args.overlap,
            budget=args.budget,
            budget_unit=args.budget_unit,
            max_loss=max_loss,
            subnet=args.subnet)
    except (CheckpointError, ValueError, TypeError) as err:
        parser.exit(2, f'error: {err}\n')
    return engine, net, meta


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.budget_unit == 'time':
        if args.plan_by == 'flops':
            parser.error('--budget-unit time is a latency budget: it plans by time (drop --plan-by flops)')
        if args.budget is None:
            parser.error('--budget-unit time needs --budget (a share of the plain network\'s time)')
        args.plan_by = 'time'
    args.plan_by = args.plan_by or 'flops'
    bound_onednn_cache()
    with sigterm_as_interrupt():  # SIGTERM ends the run as Ctrl-C does
        return run(args, parser)


def run(args, parser):
    """The run of parsed arguments; its exit status (0, 1 when an image failed, 130 when interrupted)."""
    try:
        ctx = dist_context_from_env()
    except ValueError as err:
        parser.exit(2, f'error: {err}\n')
    device = select_device(args.device, ctx)
    threads = args.threads or cpu_threads_per_rank(ctx, device)
    if threads:
        torch.set_num_threads(threads)
    network_opt = network_options_from_yaml(args.opt) if args.opt else None
    totals = RankTotals(rank=ctx.rank)
    crash = None
    with process_group(ctx, device):  # joined first: under torchrun one rank measures this device's costs
        paths, names = plan_outputs(args, parser, ctx)
        engine, net, meta = build_engine(args, parser, device, network_opt)
        if ctx.is_main and meta.get('thresholds') is None and args.subnet is None:
            print('note: the checkpoint stores no class thresholds; using per-image quantiles of the patch '
                  'difficulties.', file=sys.stderr)
        is_done = names.finished if args.skip_existing else None
        shares, skipped = broadcast_object(plan_work(paths, ctx.world_size, is_done) if ctx.is_main else None, ctx)
        if ctx.is_main and skipped:
            print(f'{skipped} of {len(paths)} image(s) skipped: their output exists (--skip-existing).')
        start = time.perf_counter()
        prefix = f'[rank {ctx.rank}] ' if ctx.distributed else ''
        try:
            super_resolve(shares[ctx.rank], engine, net, names, args, totals, prefix)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the file being written was removed
            print(f'\n{prefix}interrupted: {totals.images} image(s) written, the others not started or removed '
                  'unfinished; run again with --skip-existing to go on.', file=sys.stderr)
            return INTERRUPTED
        except DiskFull as err:
            print(f'{prefix}error: {err}; {totals.images} image(s) written.', file=sys.stderr)
            return 1
        except Exception as err:  # the other ranks still get this rank's totals; re-raised below
            crash, totals.error = err, f'{type(err).__name__}: {err}'
        totals.wall_s = time.perf_counter() - start
        all_totals = gather_objects(totals, ctx)
        failed = sum(len(t.failed) for t in all_totals)
        if ctx.is_main:
            if ctx.distributed or len(paths) > 1:
                print(totals_summary(all_totals, skipped))
            for t in all_totals:
                if t.error is not None and ctx.distributed:
                    print(f'error: rank {t.rank} stopped early: {t.error}', file=sys.stderr)
            if failed:
                print(f'{failed} of {len(paths)} image(s) failed.', file=sys.stderr)
        sys.stdout.flush()
        barrier(ctx)  # a failing rank exits only after rank 0 has reported (torchrun then stops the others)
    if crash is not None:
        raise crash
    return 1 if failed or any(t.error is not None for t in all_totals) else 0


if __name__ == '__main__':
    sys.exit(main())
