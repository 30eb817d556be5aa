"""The plan of one image: its tiling, every patch's class and subnet, and whether the whole image runs instead.

Every patch's difficulty comes from :func:`wbsr_plugin.data.difficulty.patch_difficulty` in one
vectorised pass; thresholds turn it into a class and the projection (:mod:`.projection`) into a
subnet: Eq. 15 without a budget, Eq. 16 with ``target_gflops``, a budget with or without class
errors. Never more than the plain network: when the tiled plan would cost more FLOPs than the full
network on the whole image (with a budget: more than the budget), the whole image runs through one
subnet instead; with class errors, also when that is expected to do better (small images).
"""
from dataclasses import dataclass

import torch

from wbsr_plugin.data.difficulty import patch_difficulty, quantile_threshold_tensor, rgb_to_luma

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
        reason (str | None): With a cost table: why this plan runs (see :mod:`.time_rules`).
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

    def plan(self, lq):
        """Tile ``lq`` (1, c, h, w) and choose the subnet of every patch (on ``lq``'s device)."""
        if lq.dim() != 4 or lq.shape[0] != 1:
            raise ValueError(f'expected an LR tensor of shape (1, c, h, w), got {tuple(lq.shape)}.')
        h, w = lq.shape[-2:]
        device = lq.device
        patch, tops, lefts, trim = tile_geometry(h, w, self.patch_size, self.overlap, self.trim)
        if patch >= 2:
            difficulty = patch_difficulty(rgb_to_luma(lq[0].detach().float()), patch, tops, lefts)
        else:
            difficulty = torch.zeros(len(tops), len(lefts), dtype=torch.float64, device=device)
        num_subnets = self.num_subnets
        costs = [self.flops(patch, patch, s) for s in range(num_subnets)]
        full_flops = self.flops(h, w, num_subnets - 1)
        thresholds, source, classes, alpha = None, 'none', None, None
        if self.subnet is not None:
            subnets = torch.full(difficulty.shape, self.subnet, dtype=torch.long, device=device)
            histogram = [0] * num_subnets
            histogram[self.subnet] = difficulty.numel()
        else:
            if self.thresholds is not None:
                thresholds, source = self.thresholds.at(patch), self.thresholds.source
            else:
                thresholds, source = quantile_threshold_tensor(difficulty, self.num_classes), 'image-quantiles'
            classes = classify(difficulty, thresholds)
            class_counts = torch.bincount(classes.flatten(), minlength=self.num_classes + 1)[1:].tolist()
            if torch.is_tensor(thresholds):  # after the histogram's transfer, this waits for nothing
                thresholds = thresholds.tolist()
            steps = []
            if self.budget is not None:
                if self.class_errors is not None:
                    levels, steps, alpha = calibrated_levels(class_counts, costs, self.budget * full_flops,
                                                             self.class_errors)
                else:
                    levels, steps, alpha = budget_levels(class_counts, costs, self.budget * full_flops)
            else:
                levels = self.class_table
            subnets = apply_levels(classes, difficulty, levels, steps)
            histogram = [0] * num_subnets
            for level, count in zip(levels, class_counts):
                histogram[level] += count
            for _, source, target, count in steps:
                histogram[source] -= count
                histogram[target] += count
        tiled_flops = sum(n * cost for n, cost in zip(histogram, costs))
        whole = self._whole_image_subnet(h, w, tiled_flops, full_flops)
        if whole is None and self.budget is not None and self.class_errors is not None and classes is not None:
            whole = self._better_whole_image_subnet(h, w, class_counts, levels, steps, full_flops)
        return InferencePlan((h, w), patch, tops, lefts, difficulty, classes, subnets, thresholds, source, trim, alpha,
                             histogram, tiled_flops, whole)

    def _whole_image_subnet(self, h, w, tiled_flops, full_flops):
        """The subnet that runs the whole image when tiling costs more than allowed, else None."""
        if not self.whole_image_fallback:
            return None
        allowed = full_flops if self.budget is None else self.budget * full_flops
        if tiled_flops <= allowed:
            return None
        if self.subnet is not None:
            return self.subnet
        if self.budget is None:
            return self.num_subnets - 1
        fitting = [s for s in range(self.num_subnets) if self.flops(h, w, s) <= allowed]
        return fitting[-1] if fitting else 0

    def _better_whole_image_subnet(self, h, w, class_counts, levels, steps, full_flops):
        """The subnet within the budget whose expected error on the whole image (``class_errors`` over the
        patches) is below the tiled plan's, else None (small images: the tiling's overlaps eat the budget)."""
        errors = self.class_errors
        at_level = [{level: count} for level, count in zip(levels, class_counts)]
        for k, source, target, count in steps:
            at_level[k - 1][source] -= count
            at_level[k - 1][target] = at_level[k - 1].get(target, 0) + count
        tiled = sum(n * errors[k][m] for k, counts in enumerate(at_level) for m, n in counts.items())
        allowed = self.budget * full_flops
        best, best_error = None, tiled
        for m in range(self.num_subnets):
            if self.flops(h, w, m) <= allowed:
                error = sum(n * row[m] for n, row in zip(class_counts, errors))
                if error < best_error:
                    best, best_error = m, error
        return best
