"""The torch engine's planner: :class:`wbsr_runtime.planner.Planner` with its array operations on tensors, on the
input's device (the plan's only host read is the class histogram and, for per-image quantiles, the thresholds).
"""
import torch

from wbsr_plugin.data.difficulty import patch_difficulty, quantile_threshold_tensor, rgb_to_luma
from wbsr_plugin.utils.device_tensors import class_histogram
from wbsr_runtime import planner

from .projection import apply_levels, classify


def read_histogram(classes, num_classes, thresholds):
    """``(class counts, thresholds)`` as Python lists in one read from the device (the plan's only host sync):
    the patches of each class 1..K, and the thresholds (a tensor when they are the image's quantiles)."""
    counts = class_histogram(classes, num_classes + 1)[1:]
    if not torch.is_tensor(thresholds):
        return counts.tolist(), thresholds
    values = torch.cat([counts.to(thresholds.dtype), thresholds]).tolist()
    return [int(n) for n in values[:num_classes]], values[num_classes:]


class Planner(planner.Planner):
    """The plan policy of a :class:`~.engine.DynamicInferenceEngine`, on tensors.

    Args:
        net (SupernetMixin): The supernet (its subnets' costs).
        flops, and the rest: As :class:`wbsr_runtime.planner.Planner`'s.
    """

    def __init__(self, net, flops, **options):
        super().__init__([s.flops / 1e9 for s in net.subnets], flops, **options)

    def difficulty(self, lq, patch, tops, lefts):
        if lq.device.type == 'cpu' and len(tops) * len(lefts) == 1:
            # one patch on the CPU (tiny images): numpy's few operations, right after a subnet's call has taken the
            # caches, cost half of torch's (0.17 against 0.28 ms at 24x24)
            return torch.from_numpy(super().difficulty(lq.detach().float().numpy(), patch, tops, lefts))
        return patch_difficulty(rgb_to_luma(lq[0].detach().float()), patch, tops, lefts)

    def zeros(self, rows, cols, like):
        return torch.zeros(rows, cols, dtype=torch.float64, device=like.device)

    def full(self, shape, subnet, like):
        return torch.full(shape, subnet, dtype=torch.long, device=like.device)

    def classes(self, difficulty, thresholds):
        if thresholds is None:
            thresholds = quantile_threshold_tensor(difficulty, self.num_classes)
        classes = classify(difficulty, thresholds)
        return (classes, *read_histogram(classes, self.num_classes, thresholds))

    def apply_levels(self, classes, difficulty, levels, steps):
        return apply_levels(classes, difficulty, levels, steps)
