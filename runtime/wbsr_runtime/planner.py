"""The plan of one image: its tiling, every patch's class and subnet, and whether the whole image runs instead.

Every patch's difficulty comes from :func:`.difficulty.patch_difficulty` in one vectorised pass; thresholds
turn it into a class and the levels (:mod:`.levels`) into a subnet: Eq. 15 without a budget, Eq. 16 with
``target_gflops``, a budget with or without class errors. Never more than the plain network: when the tiled
plan would cost more FLOPs than the full network on the whole image (with a budget: more than the budget), the
whole image runs through one subnet instead; with class errors, also when that is expected to do better (small
images). A budget that no plan of the image meets (even the cheapest subnet costs more) gets a note in the
plan's ``reason``.
"""
import bisect
from dataclasses import dataclass

import numpy as np

from .difficulty import patch_detail, patch_difficulty, quantile_thresholds, rgb_to_luma
from .expected_quality import detail_ratios, loss_db, scaled_errors, tiled_error, untiled, whole_error
from .levels import apply_levels, budget_levels, calibrated_levels, class_subnet_table, classify, step_tables
from .tile_geometry import tile_geometry


@dataclass
class InferencePlan:
    """Where the patches lie, which subnet serves each, and whether the whole image runs instead.

    Attributes:
        lq_size (tuple[int, int]): LR height and width.
        patch_size (int): Patch side actually used (smaller than asked for small images).
        tops (list[int]): Row offsets of the patch grid.
        lefts (list[int]): Column offsets of the patch grid.
        difficulty (Tensor): Scalar difficulty, shape (len(tops), len(lefts)), on the input's device.
        classes (Tensor | None): Class 1..K per patch (None for a fixed subnet).
        subnets (Tensor): Subnet index per patch, shape (len(tops), len(lefts)).
        thresholds (list[float] | None): Thresholds used (at ``patch_size``).
        threshold_source (str): 'model', 'model-by-patch-size', 'image-quantiles' or 'none'.
        trim (int): Blending trim actually used (smaller for small patches).
        alpha (float | None): Operating point chosen for a budget.
        histogram (list[int]): Patches per subnet of the tiled plan, in cost order.
        tiled_flops (int): FLOPs the tiled plan costs (overlaps counted every time they run).
        whole_image_subnet (int | None): When set, the tiled plan would cost more than allowed (the full
            network on the whole image, or the budget), or is expected to do worse (``class_errors``), and
            the whole image runs through this subnet.
        predicted_s (float | None): With a cost table: the predicted seconds of the subnet forwards that run.
        reason (str | None): With a cost table, a latency budget or a quality target: why this plan runs (see
            :mod:`.time_rules` and :mod:`.plan_targets`).
        expected_loss_db (float | None): With class errors (and classes): the expected loss against the full
            network in dB of PSNR, by the class errors the plan was made with.
    """
    lq_size: tuple
    patch_size: int
    tops: list
    lefts: list
    difficulty: object
    classes: object
    subnets: object
    thresholds: list
    threshold_source: str
    trim: int
    alpha: float = None
    histogram: list = None
    tiled_flops: int = None
    whole_image_subnet: int = None
    predicted_s: float = None
    reason: str = None
    expected_loss_db: float = None


@dataclass
class ImageAnalysis:
    """What every plan of one image shares: its tiling and its patches' difficulties and classes.

    Attributes:
        lq_size, patch_size, tops, lefts, trim, difficulty, classes, thresholds, threshold_source: As in
            :class:`InferencePlan` (``classes`` is None for an explicit subnet).
        class_counts (list[int] | None): Patches in each class 1..K (None for an explicit subnet).
        costs (list[int]): FLOPs of one patch through each subnet.
        full_flops (int): FLOPs of the full network on the whole image.
        detail_ratios (list[float] | None): Per class, the detail of the image's patches over the class's
            (:func:`~.expected_quality.detail_ratios`); None without the classes' detail.
    """
    lq_size: tuple
    patch_size: int
    tops: list
    lefts: list
    trim: int
    difficulty: object
    classes: object
    class_counts: list
    thresholds: list
    threshold_source: str
    costs: list
    full_flops: int
    detail_ratios: list = None

    @property
    def num_patches(self):
        return len(self.tops) * len(self.lefts)


class Planner:
    """The plan policy of a dynamic engine (whose options it takes, validated), on numpy arrays.

    The torch engine's planner (``wbsr_plugin.inference.planning``) is this one with its array operations on
    tensors, on the input's device: the methods marked "array" below.

    Args:
        subnet_gflops (Sequence[float]): GFLOPs of every subnet on the reference patch, in cost order (Eq. 16).
        flops (Callable[[int, int, int], int]): FLOPs of subnet ``s`` on an h x w LR input, ``flops(h, w, s)``.
        thresholds (ClassThresholds | None): Class thresholds; None: per-image quantiles.
        num_classes (int): K.
        patch_size, overlap, trim (int): The tiling (:func:`~.tiling.tile_geometry`).
        budget, target_gflops, alpha, subnet, class_errors, whole_image_fallback: As the engine's.
        class_spreads (list[list[float]] | None): With ``class_errors``: the spread of one patch's excess error
            (:func:`~.expected_quality.error_bound`), so that expected losses bound one image's. Default: None.
        class_detail (list[float] | None): With ``class_errors``: the mean detail of every class's calibration
            patches, so that an image cleaner than its classes is expected to lose more
            (:func:`~.expected_quality.detail_ratios`). Default: None.
        class_tiling (list[float] | None): With ``class_errors``: what tiling adds to the full network's error in
            every class, against the whole image (:func:`~.expected_quality.untiled`). Default: None.
        subnet_correlation (list[float] | None): With ``class_errors``: per subnet, how far an image's deviation
            from the full network may run along the full network's own error (:func:`~.expected_quality.error_bound`).
            Default: None.
    """

    def __init__(self, subnet_gflops, flops, *, thresholds, num_classes, patch_size, overlap, trim, budget,
                 target_gflops, alpha, subnet, class_errors, whole_image_fallback, class_spreads=None,
                 class_detail=None, class_tiling=None, subnet_correlation=None):
        self.flops = flops
        self.num_subnets = len(subnet_gflops)
        self.thresholds = thresholds
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.overlap = overlap
        self.trim = trim
        self.budget = budget
        self.subnet = subnet
        self.class_errors = class_errors
        self.class_spreads = class_spreads if class_errors is not None else None
        self.class_detail = class_detail if class_errors is not None else None
        self.class_tiling = class_tiling if class_errors is not None else None
        self.subnet_correlation = subnet_correlation if class_errors is not None else None
        self.whole_image_fallback = whole_image_fallback
        if target_gflops is not None:
            self.class_table = class_subnet_table(num_classes, self.num_subnets, list(subnet_gflops),
                                                  target_gflops, alpha)
        else:
            self.class_table = class_subnet_table(num_classes, self.num_subnets)

    # array operations (numpy here; tensors on the input's device in the torch engine)
    def measure(self, lq, patch, tops, lefts, with_detail=False):
        """``(difficulty, detail or None)`` (float64, (len(tops), len(lefts))) of the patches of ``lq`` (1, c, h, w)
        in [0, 1], both from one luma; the detail only ``with_detail``."""
        luma = rgb_to_luma(np.asarray(lq[0], dtype=np.float32))
        return (patch_difficulty(luma, patch, tops, lefts),
                patch_detail(luma, patch, tops, lefts) if with_detail else None)

    def zeros(self, rows, cols, like):
        return np.zeros((rows, cols), dtype=np.float64)

    def first_values(self, *arrays):
        """The first value of every array, as floats (one read from the device)."""
        return [float(a.reshape(-1)[0]) for a in arrays]

    def full(self, shape, subnet, like):
        return np.full(shape, subnet, dtype=np.int64)

    def classes(self, difficulty, thresholds, detail=None):
        """``(classes 1..K, class counts, thresholds as a list, detail summed per class or None)``; ``thresholds``
        None: the image's quantiles; ``detail``: the patches' detail (None: none)."""
        if thresholds is None:
            thresholds = quantile_thresholds(difficulty, self.num_classes)
        classes = classify(difficulty, thresholds)
        bins = self.num_classes + 1
        return (classes, np.bincount(classes.ravel(), minlength=bins)[1:].tolist(), thresholds,
                None if detail is None else np.bincount(classes.ravel(), detail.ravel(), bins)[1:].tolist())

    def apply_levels(self, classes, difficulty, levels, steps):
        return apply_levels(classes, difficulty, levels, steps)

    def analyse(self, lq, content=True):
        """Tile ``lq`` (1, c, h, w) and classify its patches (on ``lq``'s device): what every plan of it shares.
        Without ``content`` (and for an explicit subnet, which needs none), only the tiling: no difficulty (zeros).
        An image that is one patch, without stored thresholds, is in the top class: no difficulty either."""
        if lq.ndim != 4 or lq.shape[0] != 1:
            raise ValueError(f'expected an LR tensor of shape (1, c, h, w), got {tuple(lq.shape)}.')
        h, w = lq.shape[-2:]
        patch, tops, lefts, trim = tile_geometry(h, w, self.patch_size, self.overlap, self.trim)
        content = content and self.subnet is None
        one_patch = len(tops) * len(lefts) == 1
        # one patch classed by the image's own quantiles is in the top class whatever its difficulty: none measured
        if content and patch >= 2 and not (one_patch and self.thresholds is None):
            with_detail = self.class_detail is not None and self.thresholds is not None and patch >= 3
            difficulty, detail = self.measure(lq, patch, tops, lefts, with_detail)
        else:
            difficulty, detail = self.zeros(len(tops), len(lefts), lq), None
        thresholds, source, classes, class_counts, ratios = None, 'none', None, None, None
        if content:
            if self.thresholds is not None:
                thresholds, source = self.thresholds.at(patch), self.thresholds.source
            else:
                source = 'image-quantiles'
            classes, class_counts, thresholds, detail_sums = (
                self._one_patch_classes if one_patch else self.classes)(difficulty, thresholds, detail)
            if detail_sums is not None:
                ratios = detail_ratios(detail_sums, class_counts, self.class_detail)
        costs = [self.flops(patch, patch, s) for s in range(self.num_subnets)]
        return ImageAnalysis((h, w), patch, tops, lefts, trim, difficulty, classes, class_counts, thresholds, source,
                             costs, self.flops(h, w, self.num_subnets - 1), ratios)

    def content_free(self, h, w):
        """True when no content of an h x w image can change its plan: an explicit subnet, or an image that is one
        patch without stored thresholds."""
        if self.subnet is not None:
            return True
        if self.thresholds is not None:  # (no tiling to compute: planned per image, every time)
            return False
        _, tops, lefts, _ = tile_geometry(h, w, self.patch_size, self.overlap, self.trim)
        return len(tops) * len(lefts) == 1

    def _one_patch_classes(self, difficulty, thresholds, detail=None):
        """:meth:`classes` of an image that is one patch, from one read of its difficulty (tiny images: a dozen
        array operations fewer). Its own quantiles are its difficulty, so it is in the top class."""
        value, *found = self.first_values(difficulty, *([] if detail is None else [detail]))
        thresholds = [value] * (self.num_classes - 1) if thresholds is None else [float(t) for t in thresholds]
        k = bisect.bisect_right(thresholds, value) + 1
        counts = [0] * self.num_classes
        counts[k - 1] = 1
        detail_sums = None
        if detail is not None:
            detail_sums = [0.] * self.num_classes
            detail_sums[k - 1] = found[0]
        return self.full(difficulty.shape, k, difficulty), counts, thresholds, detail_sums

    def operating_point(self, analysis, budget):
        """``(levels, steps, alpha, histogram)`` of the tiled plan under a FLOPs ``budget`` (None: Eq. 15 or
        Eq. 16) from the class histogram alone (see :func:`~.levels.apply_levels`)."""
        steps, alpha = [], None
        if self.subnet is not None:
            levels = [self.subnet] * (1 if analysis.class_counts is None else len(analysis.class_counts))
            histogram = [0] * self.num_subnets
            histogram[self.subnet] = analysis.num_patches
            return levels, steps, alpha, histogram
        counts, costs = analysis.class_counts, analysis.costs
        if budget is None:
            levels = self.class_table
        elif self.class_errors is not None:
            levels, steps, alpha = calibrated_levels(counts, costs, budget * analysis.full_flops, self.class_errors)
        else:
            levels, steps, alpha = budget_levels(counts, costs, budget * analysis.full_flops)
        histogram = [0] * self.num_subnets
        for level, count in zip(levels, counts):
            histogram[level] += count
        for _, source, target, count in steps:
            histogram[source] -= count
            histogram[target] += count
        return levels, steps, alpha, histogram

    def choose(self, analysis, budget, whole_image_fallback=None):
        """The :class:`InferencePlan` of ``analysis`` under a FLOPs ``budget`` (None: Eq. 15 or Eq. 16, or the
        explicit subnet), the whole-image rule included unless ``whole_image_fallback`` is False."""
        levels, steps, alpha, histogram = self.operating_point(analysis, budget)
        if analysis.classes is None:
            subnets = self.full(analysis.difficulty.shape, self.subnet, analysis.difficulty)
        elif analysis.num_patches == 1:  # one patch, the hardest of its class: every step of its class moves it
            k = analysis.class_counts.index(1) + 1
            step_counts, targets = step_tables(levels, steps)
            subnet = targets[k - 1][sum(count > 0 for count in step_counts[k - 1])]
            subnets = self.full(analysis.difficulty.shape, subnet, analysis.difficulty)
        else:
            subnets = self.apply_levels(analysis.classes, analysis.difficulty, levels, steps)
        (h, w), full_flops = analysis.lq_size, analysis.full_flops
        tiled_flops = sum(n * cost for n, cost in zip(histogram, analysis.costs))
        whole = None
        if self.whole_image_fallback if whole_image_fallback is None else whole_image_fallback:
            whole = self._whole_image_subnet(h, w, tiled_flops, full_flops, budget)
            if whole is None and budget is not None and self.class_errors is not None and self.subnet is None:
                whole = self._better_whole_image_subnet(analysis, levels, steps, budget)
        return InferencePlan((h, w), analysis.patch_size, analysis.tops, analysis.lefts, analysis.difficulty,
                             analysis.classes, subnets, analysis.thresholds, analysis.threshold_source,
                             analysis.trim, alpha, histogram, tiled_flops, whole,
                             reason=self._budget_out_of_reach(h, w, tiled_flops, full_flops, budget, whole),
                             expected_loss_db=self._expected_loss(analysis, levels, steps, whole))

    def image_tables(self, analysis):
        """``(tiled, whole)``: the class errors of ``analysis``'s image for patches run tiled and for subnets run on
        the whole image (:func:`~.expected_quality.untiled`), its full network's error scaled by its detail
        (:attr:`ImageAnalysis.detail_ratios`); ``(None, None)`` without class errors."""
        if self.class_errors is None:
            return None, None
        # an image that is one patch runs whole: no tiling to pay
        tiling = None if analysis.num_patches == 1 else self.class_tiling
        tiled = scaled_errors(self.class_errors, analysis.detail_ratios, tiling)
        return tiled, untiled(tiled, tiling)

    def image_bound(self, whole):
        """The terms that make an expected error a bound for one image (:func:`~.expected_quality.error_bound`),
        ``whole`` its class errors on the whole image (:meth:`image_tables`)."""
        return {'class_spreads': self.class_spreads, 'correlations': self.subnet_correlation,
                'full_errors': None if self.subnet_correlation is None else [row[-1] for row in whole]}

    def _expected_loss(self, analysis, levels, steps, whole):
        """Expected loss in dB against the full network (from the class errors) of the tiled plan of ``levels`` and
        ``steps``, or of ``whole`` on the whole image; None without class errors or classes."""
        class_counts = analysis.class_counts
        if whole is not None or self.class_errors is None or class_counts is None:
            return self.whole_image_loss(analysis, whole)
        tiled, whole = self.image_tables(analysis)
        full_error = whole_error(class_counts, whole, self.num_subnets - 1)
        return loss_db(tiled_error(class_counts, levels, steps, tiled, **self.image_bound(whole)), full_error)

    def plain_loss(self, analysis, whole_image):
        """Expected loss in dB of the plain network on ``analysis``'s image, run whole (0) or tiled (what tiling
        costs); None without class errors or classes."""
        full = self.num_subnets - 1
        if whole_image or self.class_errors is None or analysis.class_counts is None:
            return self.whole_image_loss(analysis, full)
        tiled, whole = self.image_tables(analysis)
        return loss_db(whole_error(analysis.class_counts, tiled, full, **self.image_bound(whole)),
                       whole_error(analysis.class_counts, whole, full))

    def whole_image_loss(self, analysis, subnet):
        """Expected loss in dB against the full network of ``subnet`` on the whole image of ``analysis``; None
        without class errors or classes."""
        class_counts = analysis.class_counts
        if subnet is None or self.class_errors is None or class_counts is None:
            return None
        whole = self.image_tables(analysis)[1]
        return loss_db(whole_error(class_counts, whole, subnet, **self.image_bound(whole)),
                       whole_error(class_counts, whole, self.num_subnets - 1))

    def _budget_out_of_reach(self, h, w, tiled_flops, full_flops, budget, whole):
        """A note when the plan costs more than the FLOPs ``budget`` allows (no plan of the image fits), else None."""
        if budget is None or self.subnet is not None:
            return None
        spent = tiled_flops if whole is None else self.flops(h, w, whole)
        if spent <= budget * full_flops:
            return None
        return f'budget {budget:g} out of reach for this image: ran at {100 * spent / full_flops:.1f}% of full'

    def fixed_plan(self, analysis, subnet, whole_image):
        """The plan of ``analysis`` that runs ``subnet`` on every patch, or on the whole image."""
        counts = [0] * self.num_subnets
        counts[subnet] = analysis.num_patches
        subnets = self.full(analysis.difficulty.shape, subnet, analysis.difficulty)
        return InferencePlan(analysis.lq_size, analysis.patch_size, analysis.tops, analysis.lefts,
                             analysis.difficulty, analysis.classes, subnets, analysis.thresholds,
                             analysis.threshold_source, analysis.trim, None, counts,
                             analysis.num_patches * analysis.costs[subnet], subnet if whole_image else None)

    def plan(self, lq):
        """Tile ``lq`` (1, c, h, w) and choose the subnet of every patch (on ``lq``'s device)."""
        return self.choose(self.analyse(lq), self.budget)

    def _whole_image_subnet(self, h, w, tiled_flops, full_flops, budget):
        """The subnet that runs the whole image when tiling costs more than allowed, else None."""
        allowed = full_flops if budget is None else budget * full_flops
        if tiled_flops <= allowed:
            return None
        if self.subnet is not None:
            return self.subnet
        if budget is None:
            return self.num_subnets - 1
        fitting = [s for s in range(self.num_subnets) if self.flops(h, w, s) <= allowed]
        return fitting[-1] if fitting else 0

    def _better_whole_image_subnet(self, analysis, levels, steps, budget):
        """The subnet within the budget whose expected error on the whole image (``class_errors`` over the
        patches, the bound the plans report) is below the tiled plan's, else None (small images: the tiling's
        overlaps eat the budget)."""
        (h, w), class_counts = analysis.lq_size, analysis.class_counts
        tiled_errors, whole_errors = self.image_tables(analysis)
        bound = self.image_bound(whole_errors)
        tiled = tiled_error(class_counts, levels, steps, tiled_errors, **bound)
        allowed = budget * self.flops(h, w, self.num_subnets - 1)
        best, best_error = None, tiled
        for m in range(self.num_subnets):
            if self.flops(h, w, m) <= allowed:
                error = whole_error(class_counts, whole_errors, m, **bound)
                if error < best_error:
                    best, best_error = m, error
        return best
