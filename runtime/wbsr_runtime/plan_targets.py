"""A latency budget and a quality target: the plan is searched among the FLOPs operating points.

The candidates are the tiled plans of every FLOPs budget (the same projection as ``budget``: by class errors
when the checkpoint has them, else Eq. 16's operating point), every subnet on the whole image, and the plain
network (loss 0).

* **Latency budget** (``budget_unit='time'``): a fraction of the fastest plain execution's predicted time. The
  plan with the best expected quality (:mod:`.expected_quality`) whose predicted time fits runs; when nothing
  fits, the fastest plan.
* **Quality target** (``max_loss``): an expected loss in dB of PSNR against the full network, from the class
  errors. The fastest plan (by predicted time, or without a cost table by FLOPs) whose expected loss fits runs.

Predicted time and expected quality both move monotonically with the FLOPs budget, so the tiled candidate
is found by bisection on it (``SEARCH_STEPS`` plans of the class histogram, no per-patch work).
"""
import dataclasses

from .expected_quality import loss_db, tiled_error, whole_error
from .time_rules import by_time, plain_plan, without_analysis

SEARCH_STEPS = 12
LEAST_BUDGET = 1e-6


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One plan considered: ``budget`` (tiled, a FLOPs budget) or ``subnet`` (whole image; the full one is the
    plain network), its predicted ``seconds`` (or FLOPs) and its expected ``error`` (lower is better)."""
    seconds: float
    error: float
    budget: float = None
    subnet: int = None
    loss_db: float = None


class TargetSearch:
    """The candidates of one analysed image.

    Args:
        planner (Planner): The engine's planner.
        analysis (ImageAnalysis): The image.
        timer (PlanTimer | None): Predicted times; None: FLOPs stand for time.
        flops (Callable[[int, int, int], int]): ``flops(h, w, s)``.
    """

    def __init__(self, planner, analysis, timer, flops):
        self.planner, self.analysis, self.timer, self.flops = planner, analysis, timer, flops
        self.errors, self.whole_errors = planner.image_tables(analysis)
        self.bound = planner.image_bound(self.whole_errors) if self.errors else {}
        self.full = planner.num_subnets - 1
        self.full_error = whole_error(analysis.class_counts, self.whole_errors, self.full) if self.errors else None
        # (seconds, whole image) of the fastest plain execution, measured once per image
        self.fastest = None if timer is None else timer.fastest_plain(analysis, planner.num_subnets)

    def _loss(self, error):
        return None if self.errors is None else loss_db(error, self.full_error)

    def tiled(self, budget):
        """The tiled candidate of a FLOPs ``budget``."""
        a = self.analysis
        levels, steps, _, histogram = self.planner.operating_point(a, budget)
        if self.errors is not None:
            error = tiled_error(a.class_counts, levels, steps, self.errors, **self.bound)
        else:  # quality from FLOPs: the share of the full network's FLOPs per patch
            error = -sum(n * c for n, c in zip(histogram, a.costs)) / (a.num_patches * a.costs[-1])
        if self.timer is not None:
            seconds = self.timer.tiled(histogram, a.patch_size, *a.lq_size)
        else:
            seconds = sum(n * c for n, c in zip(histogram, a.costs))
        return Candidate(seconds, error, budget=budget, loss_db=self._loss(error))

    def whole(self, subnet):
        """The candidate of ``subnet`` on the whole image (the full one runs as the plain network, tiled where that is
        its fastest execution: then it pays what tiling costs)."""
        (h, w), full = self.analysis.lq_size, self.full
        plain_tiled = subnet == full and self.fastest is not None and not self.fastest[1]
        if self.errors is not None:
            table = self.errors if plain_tiled else self.whole_errors
            error = whole_error(self.analysis.class_counts, table, subnet, **self.bound)
        else:
            error = -self.flops(h, w, subnet) / self.flops(h, w, full)
        if self.timer is None:
            seconds = self.flops(h, w, subnet)
        elif subnet == full:
            seconds = self.fastest[0]
        else:
            seconds = self.timer.whole(subnet, h, w)
        loss = self._loss(error) if subnet != full or (plain_tiled and self.errors is not None) else 0.
        return Candidate(seconds, error, subnet=subnet, loss_db=loss)

    def bisect(self, fits, largest):
        """The tiled candidate of the largest (``largest``) or smallest FLOPs budget that ``fits``, where
        ``fits`` holds for the small budgets (``largest``) or the large ones; None when no budget fits."""
        low, high = self.tiled(LEAST_BUDGET), self.tiled(1.)
        if fits(high if largest else low):
            return high if largest else low
        if not fits(low if largest else high):
            return None
        for _ in range(SEARCH_STEPS):
            middle = self.tiled((low.budget + high.budget) / 2)
            if fits(middle) == largest:
                low = middle
            else:
                high = middle
        return low if largest else high

    def plan(self, choice, reason):
        """The :class:`InferencePlan` of a candidate, with ``predicted_s`` (None without a timer) and ``reason``."""
        planner, analysis = self.planner, self.analysis
        if choice.subnet == self.full:
            if self.timer is None:
                plan = planner.fixed_plan(analysis, self.full, True)
            else:
                plan = plain_plan(planner, analysis, self.fastest, reason)
            return dataclasses.replace(plan, reason=reason, expected_loss_db=choice.loss_db)
        if choice.subnet is not None:
            plan = planner.fixed_plan(analysis, choice.subnet, True)
        else:
            plan = planner.choose(analysis, choice.budget, whole_image_fallback=False)
        return dataclasses.replace(plan, predicted_s=None if self.timer is None else choice.seconds, reason=reason,
                                   expected_loss_db=choice.loss_db)


def latency_plan(planner, analysis, timer, fraction, flops):
    """The plan of a latency budget: ``fraction`` of the fastest plain execution's predicted time."""
    search = TargetSearch(planner, analysis, timer, flops)
    allowed = fraction * search.fastest[0]
    candidates = [search.whole(m) for m in range(planner.num_subnets)]
    tiled = search.bisect(lambda c: c.seconds <= allowed, largest=True)
    candidates += [tiled] if tiled is not None else [search.tiled(LEAST_BUDGET)]
    fitting = [c for c in candidates if c.seconds <= allowed]
    if fitting:
        choice = min(fitting, key=lambda c: (c.error, c.seconds))
        reason = f'latency budget {fraction:g}: best expected quality predicted within {1e3 * allowed:.3g} ms'
    else:
        choice = min(candidates, key=lambda c: c.seconds)
        reason = f'latency budget {fraction:g}: no plan predicted within {1e3 * allowed:.3g} ms; the fastest'
    return search.plan(choice, reason)


def quality_plan(planner, analysis, timer, max_loss, flops):
    """The plan of a quality target: the fastest whose expected loss is at most ``max_loss`` dB."""
    search = TargetSearch(planner, analysis, timer, flops)
    fits = lambda c: c.loss_db <= max_loss  # noqa: E731
    wholes = [search.whole(m) for m in range(planner.num_subnets)]
    candidates = [c for c in wholes if fits(c)]
    tiled = search.bisect(fits, largest=False)
    candidates += [tiled] if tiled is not None else []
    if not candidates:  # the plain network always fits, unless it runs tiled (then tiling alone may not)
        choice = min(wholes + [search.tiled(1.)], key=lambda c: (c.error, c.seconds))
        return search.plan(choice, f'quality target {max_loss:g} dB: no plan expected within it; the least expected '
                           f'loss ({choice.loss_db:.3f} dB)')
    choice = min(candidates, key=lambda c: (c.seconds, c.error))
    unit = 'predicted' if timer is not None else 'by FLOPs'
    ratios = analysis.detail_ratios or [1.]
    scale = 1.
    if min(ratios) < 1:  # the full network's error against its classes' (the same tables, unscaled)
        unscaled = planner.image_tables(dataclasses.replace(analysis, detail_ratios=None))[1]
        scale = search.full_error / max(whole_error(analysis.class_counts, unscaled, search.full), 1e-300)
    sharper = max(ratios)
    cleaner = (f'; the image holds less detail than its classes: the full network\'s error counted {scale:.2f} '
               'times theirs' if scale < 1 else '')
    cleaner += (f'; more detail than its classes: subnets\' excess counted up to {sharper:.2f} times theirs'
                if sharper > 1 else '')
    return search.plan(choice, f'quality target {max_loss:g} dB: fastest ({unit}) expected within it '
                       f'({choice.loss_db:.3f} dB){cleaner}')


def plan_strategy(planner, timer, target, flops):
    """The function ``lq -> InferencePlan`` of an engine, picked once for its ``target`` (a bound
    :class:`~.planning_target.PlanningTarget`): a latency budget or a quality target searched here, the FLOPs plan
    checked against predicted time (with a ``timer``, :mod:`.time_rules`), or the FLOPs plan."""
    if target.kind == 'latency':
        return lambda lq: latency_plan(planner, planner.analyse(lq), timer, target.latency, flops)
    if target.kind == 'quality':
        return lambda lq: quality_plan(planner, planner.analyse(lq), timer, target.max_loss, flops)
    if timer is None:
        return sized_memo(planner, lambda lq: planner.choose(planner.analyse(lq), target.budget))

    def timed_flops_plan(lq):
        budget = target.budget
        plain = without_analysis(planner, planner.analyse(lq, content=False), timer, budget=budget, flops=flops)
        if plain is not None:
            return plain
        analysis = planner.analyse(lq)
        return by_time(planner.choose(analysis, budget), timer, planner, analysis, budget=budget, flops=flops)

    return sized_memo(planner, timed_flops_plan, timer)


MEMO_PLANS = 64


def sized_memo(planner, strategy, timer=None):
    """``strategy`` with its plans kept per image size (and device) where no content could change them: an
    explicit subnet, or an image that is one patch without stored thresholds (its own top class). Tiny images then
    cost a dictionary read instead of a plan (0.1 ms right after a subnet's call, 2 % of SRResNet at 24x24). The
    plans are shared: callers replace them (``dataclasses.replace``), never change them. Nothing is kept while the
    ``timer`` has a memory limit (on CUDA: whether a whole image fits depends on the memory free now)."""
    memo = {}

    def plan(lq):
        h, w = lq.shape[-2:]
        if not planner.content_free(h, w) or (timer is not None and timer.memory_limit is not None
                                              and timer.memory_limit() is not None):
            return strategy(lq)
        key = (h, w, str(getattr(lq, 'device', 'cpu')))
        if key not in memo:
            if len(memo) >= MEMO_PLANS:
                memo.clear()
            memo[key] = strategy(lq)
        return memo[key]

    return plan
