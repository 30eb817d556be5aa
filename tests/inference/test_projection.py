"""Gradient projection (Eq. 15, Eq. 16, budgets) on hand-made cases whose answers are worked out by hand."""
import math
import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from wbsr_plugin.archs.wbsr_resnet_arch import WBSRResNet
from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_plugin.inference.projection import apply_levels, budget_subnets, class_to_subnet, cost_target_subnets
from wbsr_runtime.class_thresholds import check_thresholds
from wbsr_runtime.levels import budget_levels, calibrated_levels, class_subnet_table


def test_eq15_by_hand():
    # m = ceil(k M / K), 1-based; the table holds m - 1
    assert class_to_subnet(torch.arange(1, 11), 10, 9).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]
    assert class_to_subnet(torch.arange(1, 4), 3, 9).tolist() == [2, 5, 8]
    assert class_to_subnet(torch.arange(1, 13), 12, 4).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_eq16_by_hand():
    # class k aims at alpha k C_t / K; with costs 1, 2, 4, 8 and C_t = 4, K = 4 the aims are 1, 2, 3, 4
    # (3 lies between 2 and 4: a tie goes to the cheaper subnet); alpha 2 doubles them to 2, 4, 6, 8
    assert class_subnet_table(4, 4, [1, 2, 4, 8], 4) == [0, 1, 1, 2]
    assert class_subnet_table(4, 4, [1, 2, 4, 8], 4, alpha=2) == [1, 2, 2, 3]
    assert class_subnet_table(4, 4, [1, 2, 4, 8], 1) == [0, 0, 0, 0]


CLASSES = torch.tensor([1, 1, 2, 2])
DIFFICULTY = torch.tensor([0.1, 0.2, 0.9, 0.8], dtype=torch.float64)


@pytest.mark.parametrize('budget, expected', [
    (3, [0, 0, 0, 0]),  # below the cheapest plan: everything at the cheapest subnet
    (5, [0, 0, 1, 0]),  # one unit left: the hardest patch of the harder class moves up one subnet
    (9, [1, 1, 1, 1]),  # both classes one subnet up (8); the next step (class 2 to cost 4) costs 4
    (10, [1, 1, 2, 1]),  # ... and two units more move the hardest patch of class 2 there
    (16, [2, 2, 2, 2]),
])
def test_budget_by_hand(budget, expected):
    # costs 1, 2, 4; two classes of two patches. Eq. 16 moves class k from subnet j to j + 1 at alpha
    # (C_j + C_j+1) / 2 * K / (k C_full): class 2 to 1 at 0.375, class 1 to 1 at 0.75, class 2 to 2 at 0.75,
    # class 1 to 2 at 1.5 (ties by class); a step the budget cannot pay for in full moves the hardest patches
    subnets, _ = budget_subnets(CLASSES, DIFFICULTY, [1., 2., 4.], budget, 2)
    assert subnets.tolist() == expected


def test_calibrated_budget_by_hand():
    # costs 1, 2, 4; class errors (rows: classes, columns: subnets); budget 7, the cheapest plan costs 4.
    # Error saved per unit: class 2 to subnet 1 saves 2.0, so both its patches move (3 left -> 1 left); then
    # only class 1 to subnet 1 (0.1 per unit) fits, for one patch, its hardest. Exhaustively the best too.
    errors = [[1.0, 0.9, 0.85], [4.0, 2.0, 1.0]]
    levels, steps, _ = calibrated_levels([2, 2], [1., 2., 4.], 7, errors)
    subnets = apply_levels(CLASSES, DIFFICULTY, levels, steps).tolist()
    assert subnets == [0, 1, 1, 1]
    costs, per_class = [1, 2, 4], [errors[k - 1] for k in CLASSES.tolist()]
    best = min((sum(row[m] for row, m in zip(per_class, choice)), choice)
               for choice in np.ndindex(3, 3, 3, 3) if sum(costs[m] for m in choice) <= 7)
    assert list(best[1]) == subnets


# -- the engine on a hand-made image: two flat patches above, two striped ones below ---------------------------


def tiny_net():
    return WBSRResNet(num_feat=16, num_block=2, upscale=4, widths=[8, 16], depths=[1, 2]).eval()


def striped_image():
    """28 x 28 LR, tiled by 2 x 2 patches of 16 at 0 and 12: flat grey down to row 15 (the upper patches),
    vertical stripes below, faint up to column 15 and strong from column 16 (in the lower right patch only)."""
    lq = torch.full((1, 3, 28, 28), 0.5)
    stripes = torch.tensor([0.0, 1.0]).repeat(14)
    lq[..., 16:, :16] = 0.45 + 0.1 * stripes[:16]
    lq[..., 16:, 16:] = 0.1 + 0.8 * stripes[16:]
    return lq


def patch_costs(net, side):
    """FLOPs of each subnet on one side x side patch, as torch counts them."""
    costs = []
    for index in range(len(net.subnets)):
        with FlopCounterMode(display=False) as counter:
            net(torch.zeros(1, 3, side, side), subnet=index)
        costs.append(counter.get_total_flops())
    return costs


def engine_plan(**options):
    net = tiny_net()
    engine = DynamicInferenceEngine(net, patch_size=16, overlap=4, **options)
    _, report = engine.run(striped_image())
    assert report.plan.patch_size == 16 and report.plan.tops == [0, 12] and report.plan.lefts == [0, 12]
    return net, report


def two_classes():
    """One threshold between the flat and the striped patches (K = 2)."""
    _, report = engine_plan()  # an explicit subnet needs no difficulty: the plan has none
    difficulty = report.plan.difficulty
    assert difficulty[0].max() == 0 and difficulty[1, 1] > difficulty[1, 0] > 0  # the strong stripes are the hardest
    return [float(difficulty[1].min() + difficulty[0].max()) / 2]


def test_engine_budget_on_a_hand_made_image():
    """Protects the budget: the plan spends what the budget allows, on the hardest patches first."""
    thresholds = two_classes()
    net = tiny_net()
    c0, c1, c2, _ = patch_costs(net, 16)
    full = patch_costs(net, 28)[-1]
    assert c1 - c0 < (c2 - c1) / 2  # class 1 steps to subnet 1 before class 2 steps to subnet 2 (Eq. 16)
    for budget_flops, expected in (
        (4 * c0 + 1.5 * (c1 - c0), [[0, 0], [0, 1]]),  # one upgrade: the striped patch on the right
        (4 * c1 + 1.5 * (c2 - c1), [[1, 1], [1, 2]]),  # all one subnet up, then the hardest one more
    ):
        _, report = engine_plan(thresholds=thresholds, budget=budget_flops / full)
        assert not report.whole_image
        assert report.plan.classes.tolist() == [[1, 1], [2, 2]]
        assert report.plan.subnets.tolist() == expected
        assert report.flops == sum([c0, c1, c2, c2][m] for m in sum(expected, [])) <= budget_flops


def test_engine_eq16_target_splits_the_classes():
    thresholds = two_classes()
    net = tiny_net()
    per_reference_patch = np.array(patch_costs(net, 32)) / 1e9
    target = per_reference_patch[-1]
    # class k aims at alpha k C_t / K: class 2 at the full subnet, class 1 at half its cost
    expected_class_1 = int(np.abs(per_reference_patch - target / 2).argmin())
    assert 0 < expected_class_1 < 3
    _, report = engine_plan(thresholds=thresholds, target_gflops=float(target))
    assert not report.whole_image
    assert report.plan.subnets.tolist() == [[expected_class_1] * 2, [3, 3]]


def test_calibrated_allocation_against_exhaustive_search():
    """The greedy never exceeds the budget and comes close to the best allocation (small cases, every choice)."""
    rng = np.random.default_rng(0)
    costs = [1., 1.6, 2.5, 4.]
    excess = []
    for _ in range(150):
        errors = np.sort(rng.uniform(0, 1, (5, 4)), axis=1)[:, ::-1].copy()  # bigger subnets err less
        budget = rng.uniform(5, 20)
        levels, steps, _ = calibrated_levels([1] * 5, costs, budget, errors.tolist())
        chosen = apply_levels(torch.arange(1, 6), torch.zeros(5, dtype=torch.float64), levels, steps).numpy()
        spent = sum(costs[m] for m in chosen)
        assert spent <= budget + 1e-9
        best = min(errors[np.arange(5), choice].sum() for choice in np.ndindex(4, 4, 4, 4, 4)
                   if sum(costs[m] for m in choice) <= budget)
        cheapest = errors[:, 0].sum()
        got = errors[np.arange(5), chosen].sum()
        excess.append((got - best) / max(cheapest - best, 1e-12))  # share of the attainable saving missed
    # measured: median 0, mean 0.7 %, 90th percentile 2.6 %, worst 18 %
    assert np.median(excess) < 0.005 and np.mean(excess) < 0.02


# -- the pieces of the projection, one by one, on hand-made cases --------------------------------------------------


def test_check_thresholds_allows_ties_and_names_what_is_wrong():
    """Protects the threshold checks: equal neighbours pass (as floats); a drop between neighbours or a
    non-finite value is refused with its message."""
    assert check_thresholds([1, 1, 2]) == [1., 1., 2.] and check_thresholds([]) == []
    for bad in ([1., 0., 2.], [2., 1.]):  # the drop is between neighbours only
        with pytest.raises(ValueError, match=re.escape(f'thresholds must be non-decreasing, got {bad}.')):
            check_thresholds(bad)
    with pytest.raises(ValueError, match=re.escape('thresholds must be finite numbers, got [1.0, inf].')):
        check_thresholds([1, float('inf')])


def test_eq16_on_any_shape_with_exact_costs():
    """Protects Eq. 16 beyond a vector of classes: a grid keeps its shape, and FLOP counts beyond float32's
    24-bit mantissa are told apart."""
    # aims 1, 2, 3, 4 (costs 1, 2, 4, 8, C_t 4, K 4); 3 lies halfway between 2 and 4: the cheaper wins
    grid = torch.tensor([[1, 2], [3, 4]])
    assert cost_target_subnets(grid, [1., 2., 4., 8.], 4., 1., 4).tolist() == [[0, 1], [1, 2]]
    # 2**25 + 2 is a float32 tie between 2**25 and 2**25 + 4; in float64 it is subnet 1's cost exactly
    assert cost_target_subnets(torch.tensor([1]), [2.**25, 2.**25 + 2], 2.**25 + 2, 1., 1).tolist() == [1]


def test_projection_stays_on_the_device_of_the_classes():
    """Protects "runs where ``classes`` lives": no tensor is made on torch's default device (here 'meta',
    standing in for a GPU input while the default is elsewhere)."""
    classes, difficulty = torch.tensor([1, 1, 2, 2]), torch.tensor([0.1, 0.2, 0.9, 0.8], dtype=torch.float64)
    with torch.device('meta'):
        upgraded = apply_levels(classes, difficulty, [0, 1], [(2, 1, 2, 1)])
        plain = apply_levels(classes, difficulty, [0, 1])
        eq16 = cost_target_subnets(classes, [1., 2., 4.], 4., 1., 2)
    for result in (upgraded, plain, eq16):
        assert result.device.type == 'cpu'
    assert upgraded.tolist() == [0, 0, 2, 1] and plain.tolist() == [0, 0, 1, 1] and eq16.tolist() == [1, 1, 2, 2]


def test_apply_levels_follows_many_steps_of_one_class():
    """Protects the per-class step table: three steps of one class (K = 1) and a step on no patch."""
    # 5 patches, hardest first: 2, 4, 0, 3, 1; three upgrades on 3, 2 and 1 of them
    difficulty = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7], dtype=torch.float64)
    steps = [(1, 0, 1, 3), (1, 1, 2, 2), (1, 2, 3, 1)]
    assert apply_levels(torch.ones(5, dtype=torch.long), difficulty, [0], steps).tolist() == [1, 0, 3, 0, 2]
    # class 1: both up one subnet, its hardest (patch 1) one more; class 2: a step on no patch changes nothing
    steps = [(1, 0, 1, 2), (1, 1, 2, 1), (2, 0, 1, 0)]
    assert apply_levels(CLASSES, DIFFICULTY, [0, 0], steps).tolist() == [1, 2, 0, 0]


def test_equal_difficulties_upgrade_in_grid_order():
    """Protects reproducible plans on flat images: among equally difficult patches of a class, the first ones
    in row-major order are upgraded."""
    classes = torch.ones(5, 8, dtype=torch.long)
    subnets = apply_levels(classes, torch.zeros(5, 8, dtype=torch.float64), [0], [(1, 0, 1, 5)])
    assert subnets.flatten().tolist() == [1] * 5 + [0] * 35


@pytest.mark.parametrize('budget, levels, steps, alpha', [
    (3, [0, 0], [], 0.),  # below the cheapest plan (4)
    (4, [0, 0], [], 0.),  # exactly the cheapest plan: no step, no empty upgrade
    (5, [0, 0], [(2, 0, 1, 1)], 0.),  # one unit: the hardest patch of class 2
    (6, [0, 1], [], 0.375),  # exactly class 2's whole step: taken in full, alpha at that step
    (9, [1, 1], [], 0.75),  # class 1 too; class 2's next step (4) does not fit, nor does one patch of it (2 > 1)
    (10, [1, 1], [(2, 1, 2, 1)], 0.75),
    (16, [2, 2], [], math.inf),
])
def test_budget_levels_by_hand(budget, levels, steps, alpha):
    """Protects the alpha sweep: levels, partial upgrade and the alpha returned, at and between step boundaries."""
    # costs 1, 2, 4 (C_full 4); K = 2, two patches per class. Class k leaves subnet j at alpha
    # (C_j + C_j+1) / 2 * K / (k C_full): class 2 at 0.375 (j 0) and 0.75 (j 1), class 1 at 0.75 and 1.5
    assert budget_levels([2, 2], [1., 2., 4.], budget) == (levels, steps, alpha)


def test_budget_levels_with_two_subnets_and_an_empty_class():
    # costs 1, 3: class 2 leaves subnet 0 at alpha 2 * 2 / (2 * 3) = 2 / 3, class 1 at 4 / 3
    levels, steps, alpha = budget_levels([1, 1], [1., 3.], 4)
    assert (levels, steps) == ([0, 1], []) and alpha == pytest.approx(2 / 3)
    # a class without patches moves for free, even when the budget is exactly the cheapest plan
    assert budget_levels([2, 0], [1., 2., 4.], 2) == ([0, 1], [], 0.375)


def test_budget_subnets_counts_every_class_even_empty_ones():
    """Protects the class histogram of K classes (empty top classes included): K enters every step's alpha."""
    # K = 4, costs 1, 2, 4, patches in classes 1 and 2 only. Steps at (C_j + C_j+1) / (2 k): class 4 at 0.375
    # and 0.75, class 3 at 0.5 and 1, class 2 at 0.75 and 1.5, class 1 at 1.5 and 3. A budget of 6 pays for
    # class 2's step (2); the empty classes 3 and 4 climb for free up to alpha 1; class 1's step does not fit.
    subnets, alpha = budget_subnets(CLASSES, DIFFICULTY, [1., 2., 4.], 6, 4)
    assert subnets.tolist() == [0, 0, 1, 1] and alpha == 1.
    # K = 1: one class, a partial upgrade of its two hardest patches
    subnets, alpha = budget_subnets(torch.ones(4, dtype=torch.long), DIFFICULTY, [1., 2., 4.], 6, 1)
    assert subnets.tolist() == [0, 0, 1, 1] and alpha == 0.


def test_budgets_are_met_in_exact_arithmetic():
    """Protects "at most the budget" where floats round: 10 steps of 0.1 cost more than 1 (0.1 is a little
    more than a tenth), so a budget of 1 pays for 9 of them."""
    assert Fraction(10) * Fraction(0.1) > 1 >= Fraction(9) * Fraction(0.1)
    assert budget_levels([11], [0., 0.1], 1.) == ([0], [(1, 0, 1, 9)], 0.)
    assert calibrated_levels([11], [0., 0.1], 1., [[1., 0.]])[1] == [(1, 0, 1, 9)]


def test_calibrated_levels_by_hand():
    """Protects the greedy knapsack: empty classes never move, the gain is the saving per unit of the last
    move (0 without one), unaffordable or useless moves are skipped, equal costs do not divide by zero."""
    costs = [1., 2., 4.]
    # class 2 has no patch (its saving per unit, 4, would be the best); class 1 saves 0.2 per unit to subnet 1
    # (both patches, the budget's 2 units) and 0.1 per unit to subnet 2 (costs 3: unaffordable)
    errors = [[1.0, 0.8, 0.7], [5.0, 1.0, 0.0]]
    assert calibrated_levels([2, 0], costs, 4, errors) == ([0, 0], [(1, 0, 1, 2)], pytest.approx(0.2))
    # nothing affordable, nothing better, or a budget below the cheapest plan: no move, gain 0
    assert calibrated_levels([2, 2], costs, 4, errors) == ([0, 0], [], 0.)
    assert calibrated_levels([2], costs, 10, [[1.0, 1.0, 1.0]]) == ([0], [], 0.)
    assert calibrated_levels([2], costs, 1, [[1.0, 0.5, 0.0]]) == ([0], [], 0.)
    # the hand case above: class 2's move saves 2.0 per unit, then class 1's 0.1 per unit (the last move)
    assert calibrated_levels([2, 2], costs, 7, [[1.0, 0.9, 0.85], [4.0, 2.0, 1.0]])[2] == pytest.approx(0.1)
    # two subnets of equal cost: a free move is not a step (no division by zero); the budget is kept
    equal = [1., 1., 3.]
    _, steps, _ = calibrated_levels([2], equal, 4, [[1.0, 0.5, 0.2]])
    assert sum(n * (equal[b] - equal[a]) for _, a, b, n in steps) <= 4 - 2 * equal[0]


def test_one_subnet_is_the_full_network_at_any_budget():
    """Protects the reported alpha: with one subnet every patch gets the full network (alpha inf)."""
    assert budget_levels([3], [5.], 15) == ([0], [], math.inf)
    assert budget_levels([3], [5.], 1) == ([0], [], math.inf)


def test_a_free_move_that_errs_less_is_taken_first():
    """Protects the error-per-FLOP rule at zero cost: two subnets of equal cost, the second erring less."""
    levels, steps, gain = calibrated_levels([2, 1], [1., 1., 3.], 3, [[1.0, 0.5, 0.1], [2.0, 2.0, 1.0]])
    assert steps[0] == (1, 0, 1, 2) and gain == math.inf  # both class-1 patches move for free, then nothing fits
    assert steps == [(1, 0, 1, 2)]
