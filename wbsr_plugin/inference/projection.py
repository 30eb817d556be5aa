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
import math

import torch

from wbsr_plugin.data.difficulty import difficulty_classes
from wbsr_plugin.utils.device_tensors import class_histogram, to_device


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


def class_subnet_table(num_classes, num_subnets, costs=None, target_cost=None, alpha=1.):
    """Subnet index of every class 1..K (a list): Eq. 15, or Eq. 16 when ``target_cost`` is given."""
    classes = torch.arange(1, num_classes + 1)
    if target_cost is None:
        return class_to_subnet(classes, num_classes, num_subnets).tolist()
    return cost_target_subnets(classes, costs, target_cost, alpha, num_classes).tolist()


def budget_levels(class_counts, costs, budget_cost):
    """The per-image operating point of a budget, from the class histogram alone (no per-patch work).

    Args:
        class_counts (Sequence[int]): Patches in each class 1..K.
        costs (Sequence[float]): Cost of one patch through each subnet, in cost order.
        budget_cost (float): Total cost allowed for all patches.

    Returns:
        tuple[list[int], list[tuple], float]: The subnet of every class; the partial upgrades (at most
        one here, ``(k, j, j + 1, n)``: the ``n`` hardest patches of class ``k``, 1-based, move up from
        subnet ``j`` to ``j + 1`` with the rest of the budget; see :func:`apply_levels`); and the
        ``alpha`` of Eq. 16 with ``C_t`` = the full subnet's cost at which the last whole step was taken
        (every ``alpha`` up to the next step gives the same levels; ``inf`` when every patch gets the full
        subnet).
    """
    costs = [float(c) for c in costs]
    num_classes, num_subnets = len(class_counts), len(costs)
    levels = [0] * num_classes
    spent = sum(class_counts) * costs[0]
    if num_subnets == 1:  # the one subnet is the full network
        return levels, [], math.inf
    if spent > budget_cost:
        return levels, [], 0.
    # Class k moves from subnet j to j + 1 when alpha k C_full / K passes (C_j + C_{j+1}) / 2.
    full = costs[-1]
    steps = sorted(((costs[j] + costs[j + 1]) / 2 * num_classes / (k * full), k, j)
                   for k in range(1, num_classes + 1) for j in range(num_subnets - 1))
    alpha = 0.
    for step_alpha, k, j in steps:
        if levels[k - 1] != j:
            continue
        extra = class_counts[k - 1] * (costs[j + 1] - costs[j])
        if spent + extra > budget_cost:
            upgrades = int((budget_cost - spent) // (costs[j + 1] - costs[j]))
            return levels, ([(k, j, j + 1, upgrades)] if upgrades > 0 else []), alpha
        spent += extra
        levels[k - 1] = j + 1
        alpha = step_alpha
    return levels, [], math.inf


def calibrated_levels(class_counts, costs, budget_cost, class_errors):
    """Subnets with the least expected error within a budget, from the class histogram alone.

    A greedy multiple-choice knapsack: every patch starts at the cheapest subnet; then, while the budget
    allows, the class whose move to a better subnet saves the most error per FLOP (among the moves still
    affordable) moves as many of its patches, the hardest first, as the remaining budget pays for. Only
    the patches that moved last in a class move again, so a class's subnets fall with its patches'
    difficulty. The spending is at most the budget.

    Args:
        class_counts (Sequence[int]): Patches in each class 1..K.
        costs (Sequence[float]): Cost of one patch through each subnet, in cost order.
        budget_cost (float): Total cost allowed for all patches.
        class_errors (Sequence[Sequence[float]]): Expected error of a class-k patch through subnet m,
            shape K x M (checkpoints store the mean squared error measured on training patches).

    Returns:
        tuple[list[int], list[tuple], float]: As :func:`budget_levels` (every class's level is the
        cheapest subnet, the upgrades say the rest); the last value is the error saved per unit of cost
        by the last move (0 when none was made).
    """
    costs = [float(c) for c in costs]
    errors = [[float(e) for e in row] for row in class_errors]
    levels = [0] * len(class_counts)
    remaining = budget_cost - sum(class_counts) * costs[0]
    reached = {k: (0, count) for k, count in enumerate(class_counts, start=1) if count > 0}  # (subnet, patches)
    steps, gain = [], 0.
    while remaining >= 0:
        best = None
        for k, (a, count) in reached.items():
            for b in range(a + 1, len(costs)):
                step_cost = costs[b] - costs[a]
                if 0 <= step_cost <= remaining and errors[k - 1][b] < errors[k - 1][a]:
                    saving = (errors[k - 1][a] - errors[k - 1][b]) / step_cost if step_cost else math.inf
                    if best is None or saving > best[0]:
                        best = (saving, k, a, b, min(count, int(remaining // step_cost)) if step_cost else count)
        if best is None:
            break
        gain, k, a, b, count = best
        remaining -= count * (costs[b] - costs[a])
        steps.append((k, a, b, count))
        reached[k] = (b, count)
    return levels, steps, gain


def apply_levels(classes, difficulty, levels, steps=()):
    """Subnet of every patch from per-class ``levels`` and partial upgrades (runs where ``classes`` lives).

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
    # per class: the step counts (non-increasing) and the subnet after each step
    width = max(sum(step[0] == k for step in steps) for k in range(1, len(levels) + 1))
    step_counts = [[0] * width for _ in levels]
    targets = [[level] * (width + 1) for level in levels]
    taken = [0] * len(levels)
    for k, _, target, count in steps:
        step_counts[k - 1][taken[k - 1]] = count
        targets[k - 1][taken[k - 1] + 1:] = [target] * (width - taken[k - 1])
        taken[k - 1] += 1
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
