"""Plans chosen by predicted time (a :class:`~.cost_model.CostTable`), never slower than the plain network.

The candidates are the FLOPs plan (tiled, or a whole-image subnet), the full network on the whole image and
the full network tiled (the faster of those two is the fastest plain execution), and each whole-image subnet:

* Eq. 15, Eq. 16 and FLOPs budgets: a plan predicted slower than the fastest plain execution does not run.
  The fastest plain execution runs instead; under a FLOPs budget, the largest whole-image subnet within the
  budget that is predicted faster than it, when there is one. When even the cheapest tiled plan is predicted
  slower and nothing else could run, the plain network runs without any analysis of the image (tiny images).
* An explicit subnet runs tiled or whole, whichever is predicted faster.

Predicted times are those of the whole run: the difficulty analysis (not for the plain network or an explicit
subnet, which need none), the subnet forwards, and gathering and stitching the patches.
"""
import dataclasses
import math

MEMO_ENTRIES = 4096  # predictions kept per timer (they depend on the image size and histogram only)


@dataclasses.dataclass
class PlanTimer:
    """Predicted seconds of plans on one device; each prediction is computed once per image size and histogram,
    so that planning a folder of same-sized images costs dictionary reads.

    Args:
        cost (CostTable): Measured costs of the device.
        batch_sizes (Callable[[int], list[int]]): Patches per forward call of every subnet, by patch side (fixed
            once seen).
        memory_limit (Callable[[], int] | None): Bytes a forward may take now (on CUDA); a whole image whose
            predicted peak memory exceeds it is predicted to take forever, so it is never chosen. None: no limit.
    """
    cost: object
    batch_sizes: object
    memory_limit: object = None
    memo: dict = dataclasses.field(default_factory=dict, repr=False)

    def _memoized(self, key, predict):
        if key not in self.memo:
            if len(self.memo) >= MEMO_ENTRIES:
                self.memo.clear()
            self.memo[key] = predict()
        return self.memo[key]

    def tiled(self, histogram, side, h, w, analysed=True):
        """Seconds of ``histogram[m]`` patches of ``side`` through subnet m on an h x w LR image (an image that is
        one patch runs whole, as the engine runs it)."""
        if side == h == w and sum(histogram) == 1:
            return self.whole(histogram.index(1), h, w, analysed)

        def predict():
            seconds = self.cost.forward_seconds(histogram, side, self.batch_sizes(side))
            seconds += self.cost.tiling_seconds(sum(histogram), side)
            return seconds + (self.cost.analysis_seconds(h, w) if analysed else 0.)
        return self._memoized(('tiled', tuple(histogram), side, h, w, analysed), predict)

    def whole(self, subnet, h, w, analysed=True):
        """Seconds of ``subnet`` on the whole h x w LR image (inf when it is predicted not to fit in memory)."""
        peak = self.cost.whole_peak_bytes(subnet, h, w)
        limit = None if peak is None or self.memory_limit is None else self.memory_limit()
        if limit is not None and peak > limit:
            return math.inf
        return self._memoized(('whole', subnet, h, w, analysed), lambda: self.cost.whole_seconds(subnet, h, w) + (
            self.cost.analysis_seconds(h, w) if analysed else 0.))

    def of(self, plan, analysed=True):
        """Seconds of ``plan`` (tiled, or its whole-image subnet)."""
        h, w = plan.lq_size
        if plan.whole_image_subnet is not None:
            return self.whole(plan.whole_image_subnet, h, w, analysed)
        return self.tiled(plan.histogram, plan.patch_size, h, w, analysed)

    def fastest_plain(self, analysis, num_subnets):
        """``(seconds, whole_image)`` of the fastest plain execution (no analysis): whole image or tiled."""
        full, (h, w) = num_subnets - 1, analysis.lq_size
        tiled = self.tiled([0] * full + [analysis.num_patches], analysis.patch_size, h, w, analysed=False)
        whole = self.whole(full, h, w, analysed=False)
        return (whole, True) if whole <= tiled else (tiled, False)


def plain_plan(planner, analysis, fastest, reason, plan=None):
    """The fastest plain execution (``fastest``: :meth:`PlanTimer.fastest_plain`) as a plan, with ``predicted_s``
    and ``reason`` (run whole, it keeps the tiled ``plan`` it replaces, when given, for the report)."""
    seconds, whole_image = fastest
    if whole_image and plan is not None:
        plan = dataclasses.replace(plan, whole_image_subnet=planner.num_subnets - 1)
    else:
        plan = planner.fixed_plan(analysis, planner.num_subnets - 1, whole_image)
    what = 'full network on the whole image' if whole_image else 'full network tiled'
    loss = planner.plain_loss(analysis, whole_image)
    return dataclasses.replace(plan, predicted_s=seconds, reason=f'{what}: {reason}', expected_loss_db=loss)


def without_analysis(planner, geometry, timer, *, budget, flops):
    """The plain plan when no analysis of the image could change it (Eq. 15 and Eq. 16 modes, or a FLOPs budget
    whose whole-image subnets are all predicted slower than the plain network, and every tiled plan predicted
    slower too); else None."""
    if planner.subnet is not None:
        return None
    (h, w), full = geometry.lq_size, planner.num_subnets - 1
    fastest = timer.fastest_plain(geometry, planner.num_subnets)
    plain_s = fastest[0]
    cheapest = timer.tiled([geometry.num_patches] + [0] * full, geometry.patch_size, h, w,
                           analysed=not planner.content_free(h, w))
    if cheapest < plain_s:
        return None
    if budget is not None and any(flops(h, w, m) <= budget * flops(h, w, full) and timer.whole(m, h, w) < plain_s
                                  for m in range(full)):
        return None
    return plain_plan(planner, geometry, fastest, 'every other plan was predicted slower (no analysis needed)')


def by_time(plan, timer, planner, analysis, *, budget, flops):
    """The plan to run instead of ``plan`` (the FLOPs plan of ``analysis``), with ``predicted_s`` and ``reason``."""
    (h, w), num_subnets = plan.lq_size, planner.num_subnets
    full = num_subnets - 1
    if planner.subnet is not None:
        tiled = dataclasses.replace(plan, whole_image_subnet=None)
        as_whole = dataclasses.replace(plan, whole_image_subnet=planner.subnet)
        t_tiled, t_whole = timer.of(tiled, analysed=False), timer.of(as_whole, analysed=False)
        if t_whole < t_tiled:
            return dataclasses.replace(as_whole, predicted_s=t_whole, reason='subnet: whole image predicted faster')
        return dataclasses.replace(tiled, predicted_s=t_tiled, reason='subnet: tiled predicted faster')
    fastest = timer.fastest_plain(analysis, num_subnets)
    plain_s = fastest[0]
    own = timer.of(plan, analysed=not planner.content_free(h, w))
    if own <= plain_s:
        return dataclasses.replace(plan, predicted_s=own, reason='plan predicted faster than the plain network')
    if budget is not None:
        allowed = budget * flops(h, w, full)
        faster = [m for m in range(num_subnets) if flops(h, w, m) <= allowed and timer.whole(m, h, w) < plain_s]
        if faster:
            m = faster[-1]
            return dataclasses.replace(plan, whole_image_subnet=m, predicted_s=timer.whole(m, h, w),
                                       reason='whole-image subnet within the budget predicted faster than the plan '
                                       'and the plain network',
                                       expected_loss_db=planner.whole_image_loss(analysis, m))
    return plain_plan(planner, analysis, fastest, f'the plan was predicted slower ({own:.3g} s > {plain_s:.3g} s)',
                      plan)

