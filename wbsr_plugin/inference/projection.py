"""Gradient projection: patch difficulty -> class -> subnet (WBSR Sec. 4.2, Eq. 15-16).

Classes are numbered 1..K, subnets 0..M-1 in cost order (0 is the cheapest), as in
``SupernetMixin.subnets``; the paper's 1-based subnet number ``m`` is ``index + 1``.

* Eq. 15 (no budget): ``m = ceil(k M / K)``.
* Eq. 16 (a cost target ``C_t`` and a trade-off ``alpha``). Read literally,
  ``m = argmin_m |alpha k C_m / K - C_t|`` gives the hardest patches the cheapest subnets
  (``C_m ~ K C_t / (alpha k)``), the opposite of Eq. 15 and of the paper's intent. We use the
  reading that keeps the projection monotone: ``m = argmin_m |C_m - alpha k C_t / K|``, i.e.
  class ``k`` aims at the cost ``alpha k C_t / K``.
* Budget (our user-facing knob): a fraction of the FLOPs of the full network on the whole
  image. Per image, the largest ``alpha`` of Eq. 16 (with ``C_t`` = the full subnet's cost)
  whose spending stays within the budget is chosen; the remaining budget upgrades the hardest
  patches (by scalar difficulty) of the class whose next step would overshoot. The spending is
  then at most the budget and below it by less than one patch's upgrade step.
* Budget with measured class errors (:func:`calibrated_levels`): FLOPs go where they save the most
  expected error per FLOP, class by class, the hardest patches of a class first.
"""
import torch

from wbsr_plugin.data.difficulty import difficulty_classes
from wbsr_plugin.utils.device_tensors import class_histogram, to_device
from wbsr_runtime.levels import budget_levels, step_tables


def classify(difficulty, thresholds):
    """The paper's class ``k`` in 1..K of every difficulty value (``k - 1`` thresholds are <= it)."""
    return difficulty_classes(difficulty.double(), thresholds) + 1


def class_to_subnet(classes, num_classes, num_subnets):
    """Eq. 15: subnet index ``ceil(k M / K) - 1`` of every class ``k`` in 1..K."""
    return (classes * num_subnets + num_classes - 1) // num_classes - 1


def cost_target_subnets(classes, costs, target_cost, alpha, num_classes):
    """Eq. 16 (monotone reading): ``argmin_m |C_m - alpha k C_t / K|`` for every class ``k``.

    Args:
        classes (Tensor): Classes in 1..K (any shape).
        costs (Sequence[float]): Cost C_m of every subnet in cost order (any unit).
        target_cost (float): C_t in the unit of ``costs``.
        alpha (float): Quality/cost trade-off (larger spends more).
        num_classes (int): K.

    Returns:
        Tensor: Subnet indices, shape of ``classes``; ties go to the cheaper subnet.
    """
    costs = to_device(costs, classes.device, torch.float64)
    aim = alpha * classes.double() * target_cost / num_classes
    return (aim.unsqueeze(-1) - costs).abs().argmin(dim=-1)


def apply_levels(classes, difficulty, levels, steps=()):
    """Subnet of every patch from per-class ``levels`` and partial upgrades (runs where ``classes`` lives; numpy:
    :func:`wbsr_runtime.levels.apply_levels`).

    Args:
        classes (Tensor): Classes in 1..K (any shape).
        difficulty (Tensor): Scalar difficulties, shape of ``classes``: the hardest patches of a class
            are upgraded first.
        levels (Sequence[int]): Subnet of every class.
        steps (Sequence[tuple]): ``(k, j, j2, n)``: the ``n`` hardest patches of class ``k`` move from
            subnet ``j`` to ``j2``; the steps of one class come in order, each on at most as many patches
            as the one before (:func:`budget_levels`, :func:`calibrated_levels`).

    Returns:
        Tensor: Subnet indices, shape of ``classes``.
    """
    device = classes.device
    subnets = to_device(levels, device, torch.long)[classes - 1]
    if not steps:
        return subnets
    flat_classes = classes.reshape(-1)
    # rank of every patch inside its class, the hardest first
    by_difficulty = difficulty.reshape(-1).double().argsort(descending=True, stable=True)
    order = by_difficulty[flat_classes[by_difficulty].argsort(stable=True)]
    counts = class_histogram(flat_classes, len(levels) + 1)[1:]
    starts = counts.cumsum(0) - counts
    rank = torch.empty_like(flat_classes)
    rank[order] = torch.arange(flat_classes.numel(), device=device) - starts[flat_classes[order] - 1]
    step_counts, targets = step_tables(levels, steps)
    step_counts = to_device(step_counts, device, torch.long)[flat_classes - 1]
    targets = to_device(targets, device, torch.long)[flat_classes - 1]
    done = (rank.unsqueeze(-1) < step_counts).sum(-1, keepdim=True)
    return targets.gather(-1, done).view_as(subnets)


def budget_subnets(classes, difficulty, costs, budget_cost, num_classes):
    """Subnet of every patch spending at most ``budget_cost`` (the per-image operating point).

    Args:
        classes (Tensor): Classes in 1..K, shape (N,).
        difficulty (Tensor): Scalar difficulties, shape (N,) (breaks ties inside a class).
        costs (Sequence[float]): Cost of one patch through each subnet, in cost order.
        budget_cost (float): Total cost allowed for the N patches.
        num_classes (int): K.

    Returns:
        tuple[Tensor, float]: Subnet indices (N,) and the chosen ``alpha`` of Eq. 16 with
        ``C_t`` = the full subnet's cost (``inf`` when every patch gets the full subnet).
    """
    classes = classes.flatten()
    counts = class_histogram(classes, num_classes + 1)[1:].tolist()
    levels, steps, alpha = budget_levels(counts, costs, budget_cost)
    return apply_levels(classes, difficulty.flatten(), levels, steps), alpha
