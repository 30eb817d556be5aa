"""Super-resolve images with a WBSR supernet by gradient-projection dynamic inference.

    python -m wbsr_plugin.infer -i inputs/ -o results/ --model net_g_ema.pth --budget 0.6 --save-map

Each image is tiled, every patch is sent to the subnet its difficulty calls for (or chosen to
meet ``--budget``, a fraction of the full network's FLOPs, or with ``--budget-unit time`` of the plain
network's time on this device; or to keep the expected loss within ``--max-loss`` dB, the default with
checkpoints that store class errors), and the outputs are blended.
One summary line per image: size, subnet histogram, FLOPs and time. Unreadable inputs are
skipped with a warning, and the exit status is 1 if any image failed. ``--skip-existing`` leaves
out inputs whose output is already written (see :mod:`wbsr_runtime.output_names`). ``--plan-by time``
lets this device's measured costs choose the plan (never slower than the plain network); the default,
``flops``, gives the same plan on every machine (docs/inference.md says why). On a GPU (or with a CPU core to
spare) the next images are decoded and the finished ones written in background threads while the network runs
(:mod:`wbsr_plugin.cli.image_pipeline`); ``--pipeline serial`` does one step after another.

Under ``torchrun --nproc_per_node=N -m wbsr_plugin.infer ...`` the folder is shared between the N
processes (:mod:`wbsr_plugin.cli.sharding`): each writes its own files, on its own GPU when
there is one per process, else on the CPU; rank 0 prints the totals.
"""
import sys
import time
from os import path as osp

import torch

import wbsr_plugin  # noqa: F401  (registers the architectures)
from wbsr_plugin.cli.common_args import (
    CommandParser,
    add_device_arguments,
    add_model_arguments,
    add_planning_arguments,
    planning_target,
    runtime_of,
)
from wbsr_plugin.cli.folder_inference import DiskFull, WriterSettings, status_line, super_resolve
from wbsr_plugin.cli.options_yaml import USAGE_ERROR, network_options_from_yaml
from wbsr_plugin.cli.sharding import (
    DistContext,
    barrier,
    broadcast_object,
    cpu_threads_per_rank,
    dist_context_from_env,
    gather_objects,
    plan_work,
    process_group,
    rank_device,
)
from wbsr_plugin.inference.checkpoint import CheckpointError, engine_options, load_supernet
from wbsr_plugin.inference.cost_model import load_or_measure
from wbsr_plugin.inference.engine import DynamicInferenceEngine
from wbsr_plugin.utils.memory import bound_onednn_cache
from wbsr_runtime.class_errors import ClassErrors
from wbsr_runtime.files import list_images
from wbsr_runtime.interrupts import INTERRUPTED, sigterm_as_interrupt
from wbsr_runtime.output_folders import OutputFolderError, check_output_folder
from wbsr_runtime.output_names import (
    OutputConflict,
    OutputNames,
    add_output_arguments,
    outputs_among_inputs,
)
from wbsr_runtime.planning_target import checkpoint_policy
from wbsr_runtime.run_totals import RankTotals, totals_summary


def select_device(name, ctx=DistContext()):
    """The device of ``--device`` on this rank; one line and exit status 2 when it is not available here."""
    try:
        return rank_device(name, ctx)
    except ValueError as err:
        print(f'error: --device: {err}', file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None


def build_parser():
    parser = CommandParser('infer', __doc__)
    parser.add_argument('-i', '--input', required=True, help='input image or folder')
    parser.add_argument('-o', '--output', default='results', help='output folder. Default: results')
    add_model_arguments(parser)
    add_planning_arguments(parser)
    add_device_arguments(parser)
    output = add_output_arguments(parser)
    output.add_argument('--pipeline', choices=('auto', 'overlapped', 'serial'), default='auto',
                        help='overlapped: read the next images and write the finished ones in background threads '
                        'while the network runs; serial: one step after another. Default: auto (overlapped on a '
                        'GPU, or on a CPU when the network\'s threads leave a core free; else serial, since the '
                        'background threads would only take cores from the network)')
    return parser


def plan_outputs(args, parser, ctx):
    """``(inputs, OutputNames, existing)`` of the run, checked before any computation (the policy of
    :mod:`wbsr_runtime.output_names`; ``existing``: the run's files that exist, which ``--skip-existing``
    keeps); a conflict exits with one ``error:`` line on every rank."""
    try:
        paths = list_images(args.input)
    except FileNotFoundError as err:
        parser.exit(2, f'error: -i: {err}\n')
    paths, left_out = outputs_among_inputs(paths, args.input, args.output, args.suffix)
    if not paths:
        parser.exit(2, f'error: -i: no images in {args.input}\n')
    problem, existing = None, []
    try:
        names = OutputNames(args.output, paths, args.suffix, args.ext, args.save_map)
    except OutputConflict as err:
        problem = str(err)
    if ctx.is_main and problem is None:  # rank 0 looks at the folder before any rank writes into it
        try:
            check_output_folder(args.output)
            existing = names.check_existing(paths, args.overwrite, args.skip_existing)
        except (OutputFolderError, OutputConflict) as err:
            problem = str(err)
    problem, existing = broadcast_object((problem, existing), ctx)
    if problem is not None:
        parser.exit(2, f'error: {problem}\n')
    if ctx.is_main and left_out:
        print(f'note: left out {len(left_out)} file(s) of {args.input} that look like outputs of this command '
              f'(-o lies in -i): {", ".join(osp.basename(p) for p in left_out[:5])}'
              + (' ...' if len(left_out) > 5 else ''), file=sys.stderr)
    return paths, names, frozenset(existing)


def build_engine(args, parser, device, network_opt):
    """``(engine, net, meta, policy)`` of the command line; a bad checkpoint or option exits with its message. The
    policy is the checkpoint's default (:func:`~wbsr_runtime.planning_target.inference_policy`) where the
    command line is silent. Planning by time reads this device's cost table, or measures it (by rank 0 under
    torchrun) and caches it."""
    target = planning_target(args, parser)
    try:
        net, meta = load_supernet(args.model, arch=args.arch, scale=args.scale, network_opt=network_opt,
                                  device=device)
        if device.type == 'cuda' and not args.fp32:
            net = net.half()
        policy = checkpoint_policy(meta, target=target, patch_size=args.patch_size, overlap=args.overlap,
                                   plan_by=args.plan_by)

        def on_measure(path):
            status_line(f"measuring this device's costs (a few seconds, once; kept in {path})", file=sys.stderr)

        runtime, why = runtime_of(args, parser, net, device, on_measure)
        cost_table = None
        if policy.target.by_time:
            cost_table = load_or_measure(net, device, next(net.parameters()).dtype, refresh=args.refresh_costs,
                                         on_measure=on_measure, runtime=runtime)
        engine = DynamicInferenceEngine(net, **engine_options(meta), **policy.engine_options(), cost_table=cost_table,
                                        runtime=runtime, watch_weights=False)  # the weights stay as loaded
        if not runtime.is_default:
            status_line(f'runtime: {runtime} ({why})', file=sys.stderr)
    except (CheckpointError, ValueError, TypeError) as err:
        parser.exit(2, f'{parser.prog}: error: {err}\n')
    return engine, net, meta, policy


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    bound_onednn_cache()
    with sigterm_as_interrupt():  # SIGTERM ends the run as Ctrl-C does
        try:
            return run(args, parser)
        except KeyboardInterrupt:  # before the first image: nothing was written
            print('\ninterrupted before any image was written.', file=sys.stderr)
            return INTERRUPTED


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
        paths, names, existing = plan_outputs(args, parser, ctx)
        engine, net, meta, policy = build_engine(args, parser, device, network_opt)
        if ctx.is_main:
            print(f'policy: {policy}', file=sys.stderr)
            errors = ClassErrors.from_meta(meta)
            if errors is not None and policy.target.kind in ('quality', 'latency', 'budget'):
                print(f'expected loss: {errors.reliability(policy.patch_size)}', file=sys.stderr)
            if meta.get('thresholds') is None and policy.target.subnet is None:
                print('note: the checkpoint stores no class thresholds; using per-image quantiles of the patch '
                      'difficulties.', file=sys.stderr)
        is_done = names.finished if args.skip_existing else None
        shares, skipped = broadcast_object(plan_work(paths, ctx.world_size, is_done) if ctx.is_main else None, ctx)
        if ctx.is_main and skipped:
            print(f'{skipped} of {len(paths)} image(s) skipped: their output exists (--skip-existing).')
        start = time.perf_counter()
        prefix = f'[rank {ctx.rank}] ' if ctx.distributed else ''
        try:
            settings = WriterSettings(args.output, args.ext, args.save_map, args.overwrite, args.pipeline,
                                      skip_existing=args.skip_existing, existing=existing)
            super_resolve(shares[ctx.rank], engine, net, names, settings, totals, prefix)
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
        taken = sum(len(t.taken) for t in all_totals)
        if ctx.is_main:
            if ctx.distributed or len(paths) > 1:
                print(totals_summary(all_totals, skipped))
            for t in all_totals:
                if t.error is not None and ctx.distributed:
                    print(f'error: rank {t.rank} stopped early: {t.error}', file=sys.stderr)
            if failed:
                print(f'{failed} of {len(paths)} image(s) failed.', file=sys.stderr)
            if taken:
                print(f'error: {taken} of {len(paths)} image(s) not written: another process wrote their files into '
                      f'{args.output} while this run computed them, and those files were kept; the run went on with '
                      'the other images.', file=sys.stderr)
        sys.stdout.flush()
        barrier(ctx)  # a failing rank exits only after rank 0 has reported (torchrun then stops the others)
    if crash is not None:
        raise crash
    return 1 if failed or taken or any(t.error is not None for t in all_totals) else 0


if __name__ == '__main__':
    sys.exit(main())
