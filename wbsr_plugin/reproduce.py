"""Reproduce the paper's Tables 1-2 (plain network, ClassSR, ARM, +HES, +BDLoss, +WBSR, WBSR-dagger).

    python -m wbsr_plugin.reproduce --preset tiny --train-hr datasets/sun_hays80 \
        --test Set5=datasets/Set5/HR --test Set14=datasets/Set14/HR --out results/reproduce_tiny

Prepares the training data with the plugin's tools, trains every row through BasicSR's pipeline
(``python -m wbsr_plugin.train``; option files in ``<out>/runs/options``), evaluates every row
on every test folder (HR images; LR by MATLAB bicubic) and writes ``<out>/results.md`` and, with
matplotlib, ``<out>/psnr_vs_flops.png``. Finished steps are skipped on a rerun with the same
``--out``. Presets and rows: docs/reproduce.md.
"""
import argparse
import shlex
import sys
from os import path as osp

from wbsr_plugin.reproduce_util.pipeline import evaluate_all, log, prepare_data, train_all, write_json
from wbsr_plugin.reproduce_util.presets import PRESETS, get_preset
from wbsr_plugin.reproduce_util.report import write_plot, write_results


def test_set(text):
    name, sep, folder = text.partition('=')
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f'expected NAME=DIR, got {text!r}')
    return name, folder


def build_parser():
    parser = argparse.ArgumentParser(prog='python -m wbsr_plugin.reproduce', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', required=True, choices=sorted(PRESETS))
    parser.add_argument('--train-hr', required=True, help='folder of HR training images (a part is held out for ARM)')
    parser.add_argument('--test', type=test_set, action='append', required=True, metavar='NAME=DIR',
                        help='HR test folder (repeat for several)')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--iters', type=int, help='override the preset: iterations of every row')
    parser.add_argument('--seeds', type=int, nargs='+', help='override the preset: seeds')
    parser.add_argument('--skip-training', action='store_true', help='evaluate existing runs only')
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        parser.error(f'--iters must be at least 1, got {args.iters}')
    # training runs in subprocesses with their own working folder: every path must be absolute
    args.out, args.train_hr = osp.abspath(args.out), osp.abspath(args.train_hr)
    args.test = [(name, osp.abspath(folder)) for name, folder in args.test]
    test_sets = dict(args.test)
    if len(test_sets) != len(args.test):
        parser.error('test set names must be unique')
    for folder in [args.train_hr, *test_sets.values()]:
        if not osp.isdir(folder):
            parser.exit(2, f'error: {folder} is not a folder\n')
    preset = get_preset(args.preset, {'total_iter': args.iters, 'seeds': args.seeds})
    command = 'python -m wbsr_plugin.reproduce ' + ' '.join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    log(f"preset {preset['name']}: {preset['total_iter']} iterations x batch {preset['batch_size']}, "
        f"seeds {preset['seeds']}")
    write_json(osp.join(args.out, 'preset.json'), preset)
    data = prepare_data(preset, args.train_hr, args.out)
    timings = {} if args.skip_training else train_all(preset, data, args.out)
    results = evaluate_all(preset, data, test_sets, args.out)
    text = write_results(osp.join(args.out, 'results.md'), preset, data, test_sets, results, command, timings)
    write_plot(osp.join(args.out, 'psnr_vs_flops.png'), results, test_sets)
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
