"""Per-class subnet levels of the gradient projection (WBSR Sec. 4.2), from the class histogram alone.

Classes are numbered 1..K, subnets 0..M-1 in cost order (0 is the cheapest). Eq. 15 and Eq. 16 give every class
one subnet (:func:`class_subnet_table`); a FLOPs budget picks the operating point per image (:func:`budget_levels`,
or :func:`calibrated_levels` with class errors). Which patches of a class move up is the array code's part
(``apply_levels`` in numpy or torch): the hardest first.
"""
import math

import numpy as np


def class_subnet_table(num_classes, num_subnets, costs=None, target_cost=None, alpha=1.):
    """Subnet index of every class 1..K (a list): Eq. 15 (``ceil(k M / K) - 1``), or Eq. 16 when ``target_cost``
    is given (``argmin_m |C_m - alpha k C_t / K|``, ties to the cheaper subnet)."""
    classes = range(1, num_classes + 1)
    if target_cost is None:
        return [(k * num_subnets + num_classes - 1) // num_classes - 1 for k in classes]
    costs = [float(c) for c in costs]
    aims = [alpha * float(k) * target_cost / num_classes for k in classes]
    return [min(range(len(costs)), key=lambda m: abs(aim - costs[m])) for aim in aims]


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


def step_tables(levels, steps):
    """``(step counts, targets)``, one row per class: the patch counts of its steps (non-increasing, zero-padded)
    and the subnet after 0, 1, ... steps; a patch of rank ``r`` in its class (the hardest is 0) ends at
    ``targets[k][number of step counts > r]``."""
    width = max(sum(step[0] == k for step in steps) for k in range(1, len(levels) + 1))
    step_counts = [[0] * width for _ in levels]
    targets = [[level] * (width + 1) for level in levels]
    taken = [0] * len(levels)
    for k, _, target, count in steps:
        step_counts[k - 1][taken[k - 1]] = count
        targets[k - 1][taken[k - 1] + 1:] = [target] * (width - taken[k - 1])
        taken[k - 1] += 1
    return step_counts, targets


def classify(difficulty, thresholds):
    """The paper's class ``k`` in 1..K of every difficulty value (``k - 1`` thresholds are <= it)."""
    return np.searchsorted(np.asarray(thresholds, dtype=np.float64), np.asarray(difficulty, dtype=np.float64),
                           side='right') + 1


def apply_levels(classes, difficulty, levels, steps=()):
    """Subnet of every patch (an int64 array, shape of ``classes``) from per-class ``levels`` and partial
    upgrades ``steps`` (``(k, j, j2, n)``: the ``n`` hardest patches of class ``k`` move from ``j`` to ``j2``)."""
    subnets = np.asarray(levels, dtype=np.int64)[classes - 1]
    if not steps:
        return subnets
    flat = classes.reshape(-1)
    by_difficulty = np.argsort(-np.asarray(difficulty, dtype=np.float64).reshape(-1), kind='stable')
    order = by_difficulty[np.argsort(flat[by_difficulty], kind='stable')]  # by class, the hardest first
    counts = np.bincount(flat, minlength=len(levels) + 1)[1:]
    starts = np.cumsum(counts) - counts
    rank = np.empty_like(flat)
    rank[order] = np.arange(flat.size) - starts[flat[order] - 1]
    step_counts, targets = step_tables(levels, steps)
    step_counts = np.asarray(step_counts, dtype=np.int64)[flat - 1]
    targets = np.asarray(targets, dtype=np.int64)[flat - 1]
    done = (rank[:, None] < step_counts).sum(-1, keepdims=True)
    return np.take_along_axis(targets, done, -1).reshape(subnets.shape)
