"""Reproduce the paper's Tables 1-2 (plain network, ClassSR, ARM, +HES, +BDLoss, +WBSR, WBSR-dagger).

    python -m wbsr_plugin.reproduce --preset tiny --train-hr datasets/sun_hays80 \
        --test Set5=datasets/Set5/HR --test Set14=datasets/Set14/HR --out results/reproduce_tiny
    python -m wbsr_plugin.reproduce --preset small --jobs 4 --time-budget 420 --train-hr ... --test ... --out ...

Prepares the training data with the plugin's tools, trains every run of the selected rows
through BasicSR's pipeline (``python -m wbsr_plugin.train``; option files in
``<out>/runs/options``, ``--jobs`` at a time), evaluates every row on every test folder (HR
images; LR by MATLAB bicubic) and writes ``<out>/results.md`` and, with matplotlib,
``<out>/psnr_vs_flops.png``. Finished steps are skipped on a rerun with the same ``--out``.
Presets, rows, ``--jobs`` and ``--time-budget``: docs/reproduce.md.
"""
import argparse
import shlex
import sys
import time
from os import path as osp

from wbsr_plugin.cli.common_args import CommandParser
from wbsr_plugin.reproduce_util.jobs import JobsFailed
from wbsr_plugin.reproduce_util.pipeline import (
    evaluate_all,
    fit_time_budget,
    log,
    prepare_data,
    read_json,
    train_all,
    write_json,
)
from wbsr_plugin.reproduce_util.presets import PRESETS, get_preset
from wbsr_plugin.reproduce_util.report import write_plot, write_results
from wbsr_plugin.reproduce_util.rows import TABLE_ROWS


def test_set(text):
    name, sep, folder = text.partition('=')
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f'expected NAME=DIR, got {text!r}')
    return name, folder


def positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'expected a positive {kind.__name__}, got {text!r}') from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f'expected a positive {kind.__name__}, got {text!r}')
        return value

    return parse


def build_parser():
    parser = CommandParser('reproduce', __doc__)
    parser.add_argument('--preset', required=True, choices=sorted(PRESETS))
    parser.add_argument('--train-hr', required=True, help='folder of HR training images (a part is held out for ARM)')
    parser.add_argument('--test', type=test_set, action='append', required=True, metavar='NAME=DIR',
                        help='HR test folder (repeat for several)')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--rows', nargs='+', metavar='ROW',
                        help=f"override the preset: table rows to train and evaluate, of {', '.join(TABLE_ROWS)}")
    iterations = parser.add_mutually_exclusive_group()
    iterations.add_argument('--iters', type=positive(int), help='override the preset: iterations of every row')
    iterations.add_argument('--time-budget', type=positive(float), metavar='SECONDS',
                            help='choose the iterations of every row (the same for all) so that the training '
                            'fits in SECONDS; a short probe measures the speed first')
    parser.add_argument('--seeds', type=int, nargs='+', help='override the preset: seeds')
    parser.add_argument('--jobs', type=positive(int), default=1,
                        help='training runs at once, sharing loader workers and CPU threads; with CUDA each run '
                        'sees one GPU (run i of the pool: GPU i %% G). Default: 1')
    parser.add_argument('--skip-training', action='store_true', help='evaluate existing runs only')
    return parser


def reuse_time_budget(out_dir, request):
    """The ``--time-budget`` plan of an earlier invocation with the same request, or None."""
    path = osp.join(out_dir, 'preset.json')
    if not osp.isfile(path):
        return None
    plan = read_json(path).get('time_budget')
    return plan if plan and plan.get('request') == request else None


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.skip_training and args.time_budget is not None:
        parser.error('--time-budget chooses the iterations of training; it cannot go with --skip-training')
    # training runs in subprocesses with their own working folder: every path must be absolute
    args.out, args.train_hr = osp.abspath(args.out), osp.abspath(args.train_hr)
    args.test = [(name, osp.abspath(folder)) for name, folder in args.test]
    test_sets = dict(args.test)
    if len(test_sets) != len(args.test):
        parser.error('test set names must be unique')
    try:
        preset = get_preset(args.preset, {'total_iter': args.iters, 'seeds': args.seeds, 'rows': args.rows})
    except ValueError as err:
        parser.error(f'--rows: {err}' if args.rows else str(err))
    for folder in [args.train_hr, *test_sets.values()]:
        if not osp.isdir(folder):
            parser.exit(2, f'error: {folder} is not a folder\n')
    preset['jobs'] = args.jobs
    command = 'python -m wbsr_plugin.reproduce ' + ' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    data = prepare_data(preset, args.train_hr, args.out)
    plan, order = None, None
    if args.time_budget is not None:
        request = {'budget_s': args.time_budget, 'jobs': args.jobs, 'rows': preset['rows'], 'seeds': preset['seeds']}
        plan = reuse_time_budget(args.out, request)
        try:
            if plan is None:
                plan = dict(fit_time_budget(preset, data, args.out, args.jobs, args.time_budget), request=request)
            else:
                log(f"time budget: the probe of an earlier run chose total_iter {plan['total_iter']}; reused")
        except (ValueError, JobsFailed) as err:
            parser.exit(1, f'error: {err}\n')
        preset['total_iter'], order = plan['total_iter'], plan['order']
        preset['time_budget'] = plan
    log(f"preset {preset['name']}: {preset['total_iter']} iterations x batch {preset['batch_size']}, "
        f"seeds {preset['seeds']}, rows {' '.join(preset['rows'])}")
    write_json(osp.join(args.out, 'preset.json'), preset)
    timings, train_s = {}, None
    if not args.skip_training:
        start = time.perf_counter()
        try:
            timings = train_all(preset, data, args.out, args.jobs, order)
        except JobsFailed as err:
            parser.exit(1, f'error: training failed:\n{err}\n')
        train_s = time.perf_counter() - start
        if timings:
            log(f'training: {train_s:.0f} s' + (f' of the {args.time_budget:g} s budget' if plan else ''))
    results = evaluate_all(preset, data, test_sets, args.out)
    text = write_results(osp.join(args.out, 'results.md'), preset, data, test_sets, results, command, timings,
                         time_budget=plan, train_s=train_s)
    write_plot(osp.join(args.out, 'psnr_vs_flops.png'), results, test_sets)
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
