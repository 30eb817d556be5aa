"""``reproduce --time-budget``: measure a short probe, then choose ``total_iter`` for every row.

The probe trains the most expensive run kind of each backbone (:data:`rows.COST_ORDER`) for
``probe_iter`` iterations, as many copies at once as ``--jobs``, so that the copies share the
GPU (or CPU) and the loader workers as the real runs will. From each probe's BasicSR log (one
line per iteration, millisecond timestamps) it takes the steady-state seconds per iteration
(the first quarter of the iterations is left out as warm-up) and the start-up (wall time of the
process minus its iterations: imports, data, network, checkpoint saves). The plan then assumes
every run of a backbone costs what its most expensive run costs and simulates the pool of
``--jobs`` slots over all runs in training order: ``total_iter`` is the largest count whose
simulated training time stays within ``safety`` x the budget. Runs cheaper than the probed one
and the last, less crowded wave make the real time shorter than planned, never longer, unless
the machine is busier than during the probe.
"""
import datetime
import heapq
import re

ITER_LINE = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO: \[.*?iter:\s*([\d,]+),', re.MULTILINE)
SAFETY = 0.9
MAX_TOTAL_ITER = 10**7


def iteration_times(log_text):
    """``[(iteration, seconds since the epoch), ...]`` of the iteration lines of a BasicSR log."""
    points = []
    for stamp, iteration in ITER_LINE.findall(log_text):
        when = datetime.datetime.strptime(stamp, '%Y-%m-%d %H:%M:%S,%f').timestamp()
        points.append((int(iteration.replace(',', '')), when))
    return points


def seconds_per_iteration(points):
    """Steady-state seconds per iteration from :func:`iteration_times` (first quarter left out).

    Raises:
        ValueError: Fewer than two usable iteration lines.
    """
    if not points:
        raise ValueError('no iteration lines in the probe log (is logger.print_freq 1?).')
    last_iter = points[-1][0]
    used = [p for p in points if p[0] >= max(1, last_iter // 4)]
    if len(used) < 2 or used[-1][0] == used[0][0]:
        raise ValueError(f'the probe log has {len(points)} iteration line(s); at least 2 after warm-up are needed '
                         '(raise probe_iter).')
    return max((used[-1][1] - used[0][1]) / (used[-1][0] - used[0][0]), 1e-6)


def probe_measurement(log_text, wall_s, probe_iter):
    """``{'seconds_per_iter', 'startup_s', 'wall_s', 'iterations'}`` of one probe run."""
    per_iter = seconds_per_iteration(iteration_times(log_text))
    return {'seconds_per_iter': per_iter, 'startup_s': max(0., wall_s - probe_iter * per_iter), 'wall_s': wall_s,
            'iterations': probe_iter}


def makespan(costs, total_iter, parallel):
    """Seconds for runs of ``(startup_s, seconds_per_iter)`` started in order on ``parallel`` slots."""
    slots = [0.] * min(parallel, max(1, len(costs)))
    for startup, per_iter in costs:
        heapq.heapreplace(slots, slots[0] + startup + total_iter * per_iter)
    return max(slots)


def plan_total_iter(costs, parallel, budget_s, safety=SAFETY):
    """The largest ``total_iter`` whose :func:`makespan` fits in ``safety * budget_s``.

    Args:
        costs (list[tuple[float, float]]): ``(startup_s, seconds_per_iter)`` of every run, in training order.
        parallel (int): Runs at once.
        budget_s (float): Seconds for all the training.
        safety (float): Fraction of the budget planned for. Default: :data:`SAFETY`.

    Returns:
        tuple[int, float]: ``total_iter`` and its planned seconds.

    Raises:
        ValueError: Even one iteration per run does not fit.
    """
    allowed = safety * budget_s
    if makespan(costs, 1, parallel) > allowed:
        startup = makespan([(s, 0.) for s, _ in costs], 0, parallel)
        raise ValueError(f'--time-budget {budget_s:g} s is too short: {len(costs)} run(s), {parallel} at a time, '
                         f'take {startup:.0f} s to start and save alone ({100 * safety:.0f} % of the budget is '
                         'planned for). Raise --time-budget or --jobs, or train fewer --rows/--seeds.')
    low, high = 1, MAX_TOTAL_ITER
    while low < high:
        mid = (low + high + 1) // 2
        if makespan(costs, mid, parallel) <= allowed:
            low = mid
        else:
            high = mid - 1
    return low, makespan(costs, low, parallel)
