"""Training cost of every run kind of a reproduction preset: wall time side by side, or CPU time.

    python benchmarks/bench_reproduce_runs.py --preset tiny --train-hr /path/to/photos --work /tmp/bench_runs \
        [--jobs 2] [--iters 30] [--rows plain wbsr ...] [--cpu-time]

Prepares the data as ``python -m wbsr_plugin.reproduce`` does (in ``--work``, reused), then, for each
run kind the selected rows need:

* default: trains ``--jobs`` copies at once for ``--iters`` iterations through BasicSR's pipeline with
  the loader workers and CPU threads split as ``reproduce --jobs`` splits them (what ``--time-budget``
  measures, ``reproduce_util.pipeline.probe_speed``). Prints the steady-state seconds per iteration
  of the slowest copy (first quarter of the iterations left out), iterations per second of all
  copies together, and the start-up and saving time of a run.
* ``--cpu-time``: trains one run at a time with one thread, for 5 and for ``--iters`` iterations,
  and prints the CPU seconds (user + system) per iteration, from the difference of the two runs,
  and the CPU seconds of start-up and saving. CPU time hardly depends on other jobs sharing the
  machine, so it estimates a quiet machine from a busy one.
"""
import argparse
import resource
import sys
from os import path as osp

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

from wbsr_plugin.reproduce_util.jobs import run_jobs  # noqa: E402
from wbsr_plugin.reproduce_util.pipeline import prepare_data, probe_speed, subprocess_env, training_job  # noqa: E402
from wbsr_plugin.reproduce_util.presets import PRESETS, get_preset  # noqa: E402
from wbsr_plugin.reproduce_util.rows import run_kinds, training_options  # noqa: E402

SHORT_ITERS = 5


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_cost(preset, data, work, backbone, kind, iters):
    """(CPU seconds per iteration, CPU seconds of start-up and saving) of one run, one thread."""
    seconds = []
    for total in (SHORT_ITERS, iters):
        opt = training_options(dict(preset, total_iter=total), backbone, kind, 0, data)
        opt['name'] = f'cpu_{backbone}_{kind}_{total}'
        job = training_job(opt, osp.join(work, 'cpu'))
        before = children_cpu_seconds()
        run_jobs([job], 1, osp.join(work, 'cpu'), subprocess_env(1), log=lambda m: None)
        seconds.append(children_cpu_seconds() - before)
    per_iter = (seconds[1] - seconds[0]) / (iters - SHORT_ITERS)
    return per_iter, seconds[0] - SHORT_ITERS * per_iter


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--preset', required=True, choices=sorted(PRESETS))
    parser.add_argument('--train-hr', required=True, help='folder of HR training images')
    parser.add_argument('--work', required=True, help='work folder (data and runs)')
    parser.add_argument('--jobs', type=int, default=1, help='runs at once. Default: 1')
    parser.add_argument('--iters', type=int, help="iterations of each run. Default: the preset's probe_iter")
    parser.add_argument('--rows', nargs='+', help="rows whose run kinds are timed. Default: the preset's")
    parser.add_argument('--cpu-time', action='store_true', help='CPU time of one run at a time, one thread')
    args = parser.parse_args(argv)
    preset = get_preset(args.preset, {'rows': args.rows})
    if args.iters is not None:
        preset['probe_iter'] = args.iters
    work = osp.abspath(args.work)
    data = prepare_data(preset, osp.abspath(args.train_hr), work)
    if args.cpu_time and preset['probe_iter'] <= SHORT_ITERS:
        parser.error(f'--cpu-time needs --iters above {SHORT_ITERS}')
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'
    runs = [(b, k) for b in preset['backbones'] for k in run_kinds(b, preset['rows'])]
    if args.cpu_time:
        table = [(b, k, *cpu_cost(preset, data, work, b, k, preset['probe_iter'])) for b, k in runs]
        print(f"\npreset {preset['name']}, one run at a time, one thread, {SHORT_ITERS} and {preset['probe_iter']} "
              f"iterations, batch {preset['batch_size']} x {preset['gt_size']}x{preset['gt_size']}, "
              f'torch {torch.__version__}, {device}\n')
        print('| backbone | run | CPU s / iteration | CPU s of start-up + saving |')
        print('|---|---|---|---|')
        for backbone, kind, per_iter, startup in table:
            print(f'| {backbone} | {kind} | {per_iter:.3f} | {startup:.1f} |')
        return 0
    table = []
    for backbone, kind in runs:
        speed = probe_speed(preset, data, work, args.jobs, kinds={backbone: kind})[backbone]
        together = sum(1 / p['seconds_per_iter'] for p in speed['probes'])
        table.append((backbone, kind, speed['seconds_per_iter'], together, speed['startup_s']))
    print(f"\npreset {preset['name']}, {args.jobs} run(s) at a time, {preset['probe_iter']} iterations each, "
          f"batch {preset['batch_size']} x {preset['gt_size']}x{preset['gt_size']}, "
          f"torch {torch.__version__}, {device}\n")
    print('| backbone | run | s/iteration (slowest copy) | it/s, all copies | start-up + saving (s) |')
    print('|---|---|---|---|---|')
    for backbone, kind, per_iter, together, startup in table:
        print(f'| {backbone} | {kind} | {per_iter:.3f} | {together:.1f} | {startup:.1f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
