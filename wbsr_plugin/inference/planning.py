"""The plan of one image: its tiling, every patch's class and subnet, and whether the whole image runs instead.

Every patch's difficulty comes from :func:`wbsr_plugin.data.difficulty.patch_difficulty` in one
vectorised pass; thresholds turn it into a class and the projection (:mod:`.projection`) into a
subnet: Eq. 15 without a budget, Eq. 16 with ``target_gflops``, a budget with or without class
errors. Never more than the plain network: when the tiled plan would cost more FLOPs than the full
network on the whole image (with a budget: more than the budget), the whole image runs through one
subnet instead; with class errors, also when that is expected to do better (small images). A budget that
no plan of the image meets (even the cheapest subnet costs more) gets a note in the plan's ``reason``.
"""
from dataclasses import dataclass

import torch

from wbsr_plugin.data.difficulty import patch_difficulty, quantile_threshold_tensor, rgb_to_luma
from wbsr_plugin.utils.device_tensors import class_histogram

from .expected_quality import tiled_error, whole_error
from .projection import apply_levels, budget_levels, calibrated_levels, class_subnet_table, classify
from .tiling import tile_geometry


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
        expected_loss_db (float | None): With a latency budget or a quality target and class errors: the
            expected loss against the full network in dB of PSNR.
    """
    lq_size: tuple
    patch_size: int
    tops: list
    lefts: list
    difficulty: torch.Tensor
    classes: torch.Tensor
    subnets: torch.Tensor
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
    """
    lq_size: tuple
    patch_size: int
    tops: list
    lefts: list
    trim: int
    difficulty: torch.Tensor
    classes: torch.Tensor
    class_counts: list
    thresholds: list
    threshold_source: str
    costs: list
    full_flops: int

    @property
    def num_patches(self):
        return len(self.tops) * len(self.lefts)


def read_histogram(classes, num_classes, thresholds):
    """``(class counts, thresholds)`` as Python lists in one read from the device (the plan's only host sync):
    the patches of each class 1..K, and the thresholds (a tensor when they are the image's quantiles)."""
    counts = class_histogram(classes, num_classes + 1)[1:]
    if not torch.is_tensor(thresholds):
        return counts.tolist(), thresholds
    values = torch.cat([counts.to(thresholds.dtype), thresholds]).tolist()
    return [int(n) for n in values[:num_classes]], values[num_classes:]


class Planner:
    """The plan policy of a :class:`~.engine.DynamicInferenceEngine` (whose options it takes, validated).

    Args:
        net (SupernetMixin): The supernet (its subnets' costs).
        flops (Callable[[int, int, int], int]): FLOPs of subnet ``s`` on an h x w LR input, ``flops(h, w, s)``.
        thresholds (ClassThresholds | None): Class thresholds; None: per-image quantiles.
        num_classes (int): K.
        patch_size, overlap, trim (int): The tiling (:func:`~.tiling.tile_geometry`).
        budget, target_gflops, alpha, subnet, class_errors, whole_image_fallback: As the engine's.
    """

    def __init__(self, net, flops, *, thresholds, num_classes, patch_size, overlap, trim, budget, target_gflops,
                 alpha, subnet, class_errors, whole_image_fallback):
        self.flops = flops
        self.num_subnets = len(net.subnets)
        self.thresholds = thresholds
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.overlap = overlap
        self.trim = trim
        self.budget = budget
        self.subnet = subnet
        self.class_errors = class_errors
        self.whole_image_fallback = whole_image_fallback
        if target_gflops is not None:
            self.class_table = class_subnet_table(num_classes, self.num_subnets, [s.flops / 1e9 for s in net.subnets],
                                                  target_gflops, alpha)
        else:
            self.class_table = class_subnet_table(num_classes, self.num_subnets)

    def analyse(self, lq, content=True):
        """Tile ``lq`` (1, c, h, w) and classify its patches (on ``lq``'s device): what every plan of it shares.
        Without ``content`` (and for an explicit subnet, which needs none), only the tiling: no difficulty."""
        if lq.dim() != 4 or lq.shape[0] != 1:
            raise ValueError(f'expected an LR tensor of shape (1, c, h, w), got {tuple(lq.shape)}.')
        h, w = lq.shape[-2:]
        patch, tops, lefts, trim = tile_geometry(h, w, self.patch_size, self.overlap, self.trim)
        content = content and self.subnet is None
        if content and patch >= 2:
            difficulty = patch_difficulty(rgb_to_luma(lq[0].detach().float()), patch, tops, lefts)
        else:
            difficulty = torch.zeros(len(tops), len(lefts), dtype=torch.float64, device=lq.device)
        thresholds, source, classes, class_counts = None, 'none', None, None
        if content:
            if self.thresholds is not None:
                thresholds, source = self.thresholds.at(patch), self.thresholds.source
            else:
                thresholds, source = quantile_threshold_tensor(difficulty, self.num_classes), 'image-quantiles'
            classes = classify(difficulty, thresholds)
            class_counts, thresholds = read_histogram(classes, self.num_classes, thresholds)
        costs = [self.flops(patch, patch, s) for s in range(self.num_subnets)]
        return ImageAnalysis((h, w), patch, tops, lefts, trim, difficulty, classes, class_counts, thresholds, source,
                             costs, self.flops(h, w, self.num_subnets - 1))

    def operating_point(self, analysis, budget):
        """``(levels, steps, alpha, histogram)`` of the tiled plan under a FLOPs ``budget`` (None: Eq. 15 or
        Eq. 16) from the class histogram alone (see :func:`~.projection.apply_levels`)."""
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
            subnets = torch.full(analysis.difficulty.shape, self.subnet, dtype=torch.long,
                                 device=analysis.difficulty.device)
        else:
            subnets = apply_levels(analysis.classes, analysis.difficulty, levels, steps)
        (h, w), full_flops = analysis.lq_size, analysis.full_flops
        tiled_flops = sum(n * cost for n, cost in zip(histogram, analysis.costs))
        whole = None
        if self.whole_image_fallback if whole_image_fallback is None else whole_image_fallback:
            whole = self._whole_image_subnet(h, w, tiled_flops, full_flops, budget)
            if whole is None and budget is not None and self.class_errors is not None and self.subnet is None:
                whole = self._better_whole_image_subnet(h, w, analysis.class_counts, levels, steps, budget)
        return InferencePlan((h, w), analysis.patch_size, analysis.tops, analysis.lefts, analysis.difficulty,
                             analysis.classes, subnets, analysis.thresholds, analysis.threshold_source,
                             analysis.trim, alpha, histogram, tiled_flops, whole,
                             reason=self._budget_out_of_reach(h, w, tiled_flops, full_flops, budget, whole))

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
        subnets = torch.full(analysis.difficulty.shape, subnet, dtype=torch.long, device=analysis.difficulty.device)
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

    def _better_whole_image_subnet(self, h, w, class_counts, levels, steps, budget):
        """The subnet within the budget whose expected error on the whole image (``class_errors`` over the
        patches) is below the tiled plan's, else None (small images: the tiling's overlaps eat the budget)."""
        errors = self.class_errors
        tiled = tiled_error(class_counts, levels, steps, errors)
        allowed = budget * self.flops(h, w, self.num_subnets - 1)
        best, best_error = None, tiled
        for m in range(self.num_subnets):
            if self.flops(h, w, m) <= allowed:
                error = whole_error(class_counts, errors, m)
                if error < best_error:
                    best, best_error = m, error
        return best
