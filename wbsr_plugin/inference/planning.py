"""The torch engine's planner: :class:`wbsr_runtime.planner.Planner` with its array operations on tensors, on the
input's device (the plan's only host read is the class histogram and, for per-image quantiles, the thresholds, and
with the classes' detail the image's detail summed per class).
"""
import torch

from wbsr_plugin.data.difficulty import patch_detail, patch_difficulty, quantile_threshold_tensor, rgb_to_luma
from wbsr_plugin.utils.device_tensors import class_histogram
from wbsr_runtime import planner

from .projection import apply_levels, classify


def read_histogram(classes, num_classes, thresholds, detail=None):
    """``(class counts, thresholds, detail per class)`` in one read from the device (a plan's only host sync): the
    patches of each class 1..K as a list, the thresholds (a tensor when they are the image's quantiles) as a list,
    and ``detail`` summed over each class's patches (None without)."""
    counts = class_histogram(classes, num_classes + 1)[1:]
    parts = [counts.double()]
    if torch.is_tensor(thresholds):
        parts.append(thresholds.double())
    if detail is not None:
        sums = torch.zeros(num_classes + 1, dtype=torch.float64, device=classes.device)
        parts.append(sums.scatter_add_(0, classes.reshape(-1), detail.reshape(-1).double())[1:])
    values = torch.cat(parts).tolist() if len(parts) > 1 else counts.tolist()
    counts_read = [int(n) for n in values[:num_classes]]
    thresholds_read = values[num_classes:num_classes + len(thresholds)] if torch.is_tensor(thresholds) else thresholds
    return counts_read, thresholds_read, None if detail is None else values[-num_classes:]


class Planner(planner.Planner):
    """The plan policy of a :class:`~.engine.DynamicInferenceEngine`, on tensors.

    Args:
        net (SupernetMixin): The supernet (its subnets' costs).
        flops, and the rest: As :class:`wbsr_runtime.planner.Planner`'s.
    """

    def __init__(self, net, flops, **options):
        super().__init__([s.flops / 1e9 for s in net.subnets], flops, **options)

    def measure(self, lq, patch, tops, lefts, with_detail=False):
        if lq.device.type == 'cpu' and len(tops) * len(lefts) == 1:
            # one patch on the CPU (tiny images): numpy's few operations, right after a subnet's call has taken the
            # caches, cost half of torch's (0.17 against 0.28 ms at 24x24)
            values = super().measure(lq.detach().float().numpy(), patch, tops, lefts, with_detail)
            return tuple(None if v is None else torch.from_numpy(v) for v in values)
        luma = rgb_to_luma(lq[0].detach().float())
        return (patch_difficulty(luma, patch, tops, lefts),
                patch_detail(luma, patch, tops, lefts) if with_detail else None)

    def first_values(self, *arrays):
        return torch.stack([a.reshape(-1)[0].double() for a in arrays]).tolist()

    def zeros(self, rows, cols, like):
        return torch.zeros(rows, cols, dtype=torch.float64, device=like.device)

    def full(self, shape, subnet, like):
        return torch.full(shape, subnet, dtype=torch.long, device=like.device)

    def classes(self, difficulty, thresholds, detail=None):
        if thresholds is None:
            thresholds = quantile_threshold_tensor(difficulty, self.num_classes)
        classes = classify(difficulty, thresholds)
        return (classes, *read_histogram(classes, self.num_classes, thresholds, detail))

    def apply_levels(self, classes, difficulty, levels, steps):
        return apply_levels(classes, difficulty, levels, steps)
