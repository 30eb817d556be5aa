"""Super-resolve images with a dynamic export, without torch: ``wbsr-run`` (or ``python -m wbsr_runtime``).

    wbsr-run -i inputs/ -o results/ --model net_g.wbsr --budget 0.6

The export is what ``wbsr-export --dynamic`` writes. Each image is tiled, every patch goes to the subnet its
difficulty calls for (or the plan meets ``--budget``, a share of the full network's FLOPs, or keeps the expected
loss within ``--max-loss`` dB, the default with exports that hold class errors), and the outputs are blended: the
torch engine's plan (``infer``). ``--plan-by time`` and latency budgets (``--budget-unit time``) use the cost table
of this machine that the export carries. The output policy is ``infer``'s
(:mod:`wbsr_runtime.output_names`): nothing is replaced without ``--overwrite``, ``--skip-existing`` goes on where a
run stopped, files are published only when complete. One line per image; unreadable inputs are skipped with a
warning and the exit status is 1 if any image failed; 2 for usage errors; 130 after Ctrl-C or SIGTERM.
"""
import argparse
import errno
import sys
import time
from os import path as osp

import numpy as np

from . import __version__
from .arg_types import positive_int
from .class_errors import ClassErrors
from .engine import DynamicModel
from .files import list_images
from .images import ImageInfo, ImageReadError, NonFiniteOutput, opencv, read_rgb, rgb_to_image, write_image_atomic
from .interrupts import INTERRUPTED, interrupts_deferred, sigterm_as_interrupt
from .manifest import ManifestError
from .output_folders import OutputFolderError, check_output_folder
from .output_names import OutputConflict, OutputNames, add_output_arguments, output_extension, outputs_among_inputs
from .planning_target import BUDGET_UNITS, PLAN_BY, PlanningTarget, PlanningTargetError
from .run_totals import RankTotals, totals_summary
from .sessions import PRECISIONS, RUNTIMES, RuntimeUnavailable, installed
from .subnet_maps import subnet_map_legend, subnet_map_overlay

USAGE_ERROR = 2


class Parser(argparse.ArgumentParser):
    """One ``wbsr-run: error: ...`` line (exit status 2) for every usage error."""

    def error(self, message):
        self.exit(USAGE_ERROR, f'{self.prog}: error: {message}\n')


def build_parser():
    parser = Parser(prog='wbsr-run', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--version', action='version', version=f'wbsr_runtime {__version__}')
    parser.add_argument('-i', '--input', required=True, help='input image or folder')
    parser.add_argument('-o', '--output', default='results', help='output folder. Default: results')
    parser.add_argument('--model', required=True, help='a dynamic export (the folder wbsr-export --dynamic writes)')
    plan = parser.add_argument_group('planning (default: the export\'s quality target with class errors, else Eq. 15)')
    plan.add_argument('--budget', metavar='B', help="a share in (0, 1] of the full network's FLOPs")
    plan.add_argument('--max-loss', metavar='DB', help='quality target: the fastest plan (by FLOPs) whose expected '
                      'loss against the full network is at most DB dB (needs class errors)')
    plan.add_argument('--subnet', help='every patch through this subnet: an index (0 = cheapest) or a name (w52d8)')
    plan.add_argument('--budget-unit', choices=BUDGET_UNITS, help="flops (default); time: a share of the plain "
                      "network's predicted time (a latency budget; needs the export's cost table of this machine)")
    plan.add_argument('--plan-by', choices=PLAN_BY, help='flops (default): the same plan on every machine; time: '
                      "the export's cost table of this machine, runtime and thread count decides")
    plan.add_argument('-t', '--patch-size', '--tile', dest='patch_size', type=positive_int,
                      help="largest LR patch side (>= 2). Default: the export's own")
    plan.add_argument('--overlap', type=int, help='least LR overlap between patches. Default: 4')
    device = parser.add_argument_group('runtime')
    device.add_argument('--runtime', choices=RUNTIMES, help='Default: onnxruntime when installed, else openvino')
    device.add_argument('--precision', choices=PRECISIONS, default='fp32', help='bf16: OpenVINO on CPUs with native '
                        'bfloat16. Default: fp32')
    device.add_argument('--threads', type=positive_int, help='CPU threads. Default: every CPU this process may use')
    add_output_arguments(parser)
    return parser


def plan_outputs(args, parser):
    """``(inputs, OutputNames, existing files)``, checked before any computation (``infer``'s policy)."""
    try:
        paths = list_images(args.input)
    except FileNotFoundError as err:
        parser.exit(USAGE_ERROR, f'error: -i: {err}\n')
    paths, left_out = outputs_among_inputs(paths, args.input, args.output, args.suffix)
    if not paths:
        parser.exit(USAGE_ERROR, f'error: -i: no images in {args.input}\n')
    try:
        names = OutputNames(args.output, paths, args.suffix, args.ext, args.save_map)
        check_output_folder(args.output)
        existing = names.check_existing(paths, args.overwrite, args.skip_existing)
    except (OutputFolderError, OutputConflict) as err:
        parser.exit(USAGE_ERROR, f'error: {err}\n')
    if left_out:
        print(f'note: left out {len(left_out)} file(s) of {args.input} that look like outputs of this command '
              f'(-o lies in -i)', file=sys.stderr)
    return paths, names, frozenset(existing)


def load_model(args, parser):
    """The :class:`DynamicModel` of the command line; a bad export or option exits with one line."""
    runtime = args.runtime or ('onnxruntime' if installed('onnxruntime') or not installed('openvino') else 'openvino')
    try:
        target = PlanningTarget.from_options(budget=args.budget, budget_unit=args.budget_unit, max_loss=args.max_loss,
                                             subnet=args.subnet, plan_by=args.plan_by)
        return DynamicModel.load(args.model, runtime=runtime, precision=args.precision, threads=args.threads,
                                 target=target, patch_size=args.patch_size, overlap=args.overlap,
                                 plan_by=args.plan_by)
    except (ManifestError, PlanningTargetError, RuntimeUnavailable, ValueError) as err:
        parser.error(str(err))


def is_image_failure(err):
    """True for an error that fails its image only: an unreadable input, a failed write (but a full disk), out of
    memory, an output that is not finite."""
    if isinstance(err, OSError):
        return err.errno != errno.ENOSPC
    return isinstance(err, (ImageReadError, NonFiniteOutput, MemoryError))


def write_outputs(path, sr, info, report, model, names, args, existing):
    """Publish the SR image of ``path`` (and its subnet map with ``--save-map``); returns the files another
    process wrote meanwhile (kept). Under ``--skip-existing`` only the missing files are written."""
    if not np.isfinite(sr).all():
        raise NonFiniteOutput(f'{path}: the network gave values that are not finite (NaN or Inf); the image is not '
                              'written')
    targets = (names.image_path(path, output_extension(path, args.ext, info)),
               names.map_path(path) if args.save_map else None)
    target, map_target = (t if t is not None and (args.overwrite or t not in existing) else None for t in targets)
    rgb, taken = np.clip(sr[0], 0, 1).transpose(1, 2, 0), []
    for file, image in ((target, lambda: rgb_to_image(rgb, info)), (map_target, lambda: map_image(rgb, report, model))):
        if file is not None:
            try:
                write_image_atomic(file, image(), replace=args.overwrite)
            except FileExistsError:
                taken.append(file)
    return taken


def map_image(rgb, report, model):
    """The subnet map of an SR image (RGB float in [0, 1]) with its legend, as infer draws it."""
    legend = subnet_map_legend(report, model.manifest.flops)
    return subnet_map_overlay(rgb_to_image(rgb, ImageInfo('rgb', 255)), report.plan, model.scale, len(model.runners),
                              legend=legend)


def super_resolve(paths, model, names, args, existing, totals):
    """Run and write every image of ``paths``; an interrupt while an image is written takes effect once it is
    published and counted."""
    for path in paths:
        try:
            lq, info = read_rgb(path)
            sr, report = model.run(lq[None])
        except Exception as err:
            if not is_image_failure(err):
                raise
            print(f'warning: skipped {err if isinstance(err, ImageReadError) else f"{path}: {err}"}', file=sys.stderr)
            totals.failed.append(path)
            continue
        with interrupts_deferred():
            try:
                taken = write_outputs(path, sr, info, report, model, names, args, existing)
            except Exception as err:
                if isinstance(err, OSError) and not is_image_failure(err):
                    raise OSError(errno.ENOSPC, f'-o: no space left on the device of {args.output}') from None
                if not is_image_failure(err):
                    raise
                print(f'warning: skipped {err}', file=sys.stderr)
                totals.failed.append(path)
                continue
            if taken:
                print(f"warning: {', '.join(taken)} appeared while this run computed it (another run writing into "
                      "-o?); kept it, and this run's output of it is not written", file=sys.stderr)
                totals.taken.append(path)
                continue
            totals.add(report)
            print(f'{osp.basename(path)}: {report.summary()}', flush=True)


def run(args, parser):
    paths, names, existing = plan_outputs(args, parser)
    model = load_model(args, parser)
    print(f'policy: {model.policy} | runtime: {model.runtime}', file=sys.stderr)
    errors = ClassErrors.from_meta(model.manifest.wbsr)
    if errors is not None and model.target.kind in ('quality', 'latency', 'budget'):
        print(f'expected loss: {errors.reliability(model.policy.patch_size)}', file=sys.stderr)
    if model.thresholds is None and model.target.subnet is None:
        print('note: the export stores no class thresholds; using per-image quantiles of the patch difficulties.',
              file=sys.stderr)
    skipped = 0
    if args.skip_existing:
        todo = [p for p in paths if not names.finished(p)]
        skipped = len(paths) - len(todo)
        if skipped:
            print(f'{skipped} of {len(paths)} image(s) skipped: their output exists (--skip-existing).')
        paths = todo
    totals, start = RankTotals(), time.perf_counter()
    try:
        super_resolve(paths, model, names, args, existing, totals)
    except KeyboardInterrupt:
        print(f'\ninterrupted: {totals.images} image(s) written, the others not started or removed unfinished; '
              'run again with --skip-existing to go on.', file=sys.stderr)
        return INTERRUPTED
    except OSError as err:
        print(f'error: {err.strerror or err}; {totals.images} image(s) written.', file=sys.stderr)
        return 1
    totals.wall_s = time.perf_counter() - start
    if len(paths) + skipped > 1:
        print(totals_summary([totals], skipped))
    if totals.failed:
        print(f'{len(totals.failed)} of {len(paths) + skipped} image(s) failed.', file=sys.stderr)
    if totals.taken:
        print(f'error: {len(totals.taken)} image(s) not written: another process wrote their files into '
              f'{args.output} while this run computed them, and those files were kept.', file=sys.stderr)
    return 1 if totals.failed or totals.taken else 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        opencv()
    except ImportError as err:
        parser.error(str(err))
    with sigterm_as_interrupt():
        try:
            return run(args, parser)
        except KeyboardInterrupt:
            print('\ninterrupted before any image was written.', file=sys.stderr)
            return INTERRUPTED


if __name__ == '__main__':
    sys.exit(main())
