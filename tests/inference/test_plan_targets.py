"""A latency budget and a quality target, checked against exhaustive search over plans by FLOPs budget (numpy)."""
import dataclasses

import numpy as np
import pytest
import torch
from test_time_rules import THRESHOLDS, engine, image, linear, tiny_net

from wbsr_plugin.inference import DynamicInferenceEngine

RATES = [1e-6, 2e-6, 3e-6, 4e-6]  # seconds per LR pixel of every subnet
# expected error of class k (rows) through subnet m (columns): harder classes err more, bigger subnets less
ERRORS = (np.arange(1, 11)[:, None]**1.5 * np.array([1.0, 0.8, 0.7, 0.5])).tolist()


def numpy_error(plan):
    """Expected error of a plan, summed over its patches, from its classes and subnets."""
    classes = plan.classes.flatten().numpy() - 1
    errors = np.array(ERRORS)
    if plan.whole_image_subnet is not None:
        return errors[classes, plan.whole_image_subnet].sum()
    return errors[classes, plan.subnets.flatten().numpy()].sum()


def hand_seconds(plan):
    """Seconds of a plan under ``linear(RATES)`` (no analysis, tiling or call costs)."""
    h, w = plan.lq_size
    if plan.whole_image_subnet is not None:
        return h * w * RATES[plan.whole_image_subnet]
    return sum(n * plan.patch_size**2 * r for n, r in zip(plan.histogram, RATES))


def candidates(net, lq):
    """Every tiled plan of 200 FLOPs budgets and every subnet on the whole image."""
    plans = [DynamicInferenceEngine(net, thresholds=THRESHOLDS, patch_size=16, overlap=2, budget=float(b),
                                    class_errors=ERRORS, whole_image_fallback=False).plan(lq)
             for b in np.linspace(0.005, 1, 200)]
    return plans + [dataclasses.replace(plans[0], whole_image_subnet=m) for m in range(4)]


@pytest.mark.parametrize('fraction', [0.3, 0.6, 0.9])
def test_a_latency_budget_gives_the_best_expected_quality_predicted_within_it(fraction):
    net, lq = tiny_net(), image()
    plan = engine(net, linear(net, RATES), budget=fraction, budget_unit='time', class_errors=ERRORS).plan(lq)
    allowed = fraction * 48 * 64 * RATES[3]  # the plain network on the whole image is the fastest plain execution
    assert plan.predicted_s == pytest.approx(hand_seconds(plan)) and plan.predicted_s <= allowed
    assert plan.reason.startswith(f'latency budget {fraction:g}: best expected quality')
    best = numpy_error(plan)
    fitting = [c for c in candidates(net, lq) if hand_seconds(c) <= allowed]
    assert fitting and min(numpy_error(c) for c in fitting) >= best - 1e-9
    full_error = np.array(ERRORS)[plan.classes.flatten().numpy() - 1, 3].sum()
    assert plan.expected_loss_db == pytest.approx(10 * np.log10(best / full_error))


@pytest.mark.parametrize('max_loss', [0.05, 0.5, 2.0])
def test_a_quality_target_gives_the_fastest_plan_expected_within_it(max_loss):
    net, lq = tiny_net(), image()
    plan = engine(net, linear(net, RATES), max_loss=max_loss, class_errors=ERRORS).plan(lq)
    full_error = np.array(ERRORS)[plan.classes.flatten().numpy() - 1, 3].sum()
    loss = lambda p: 10 * np.log10(numpy_error(p) / full_error)  # noqa: E731
    assert plan.expected_loss_db == pytest.approx(loss(plan)) and loss(plan) <= max_loss + 1e-9
    assert plan.predicted_s == pytest.approx(hand_seconds(plan))
    fitting = [c for c in candidates(net, lq) if loss(c) <= max_loss]
    assert min(hand_seconds(c) for c in fitting) >= plan.predicted_s * (1 - 1e-9)
    assert plan.reason.startswith(f'quality target {max_loss:g} dB: fastest (predicted)')
    # without a cost table: the fewest FLOPs
    by_flops = engine(net, None, max_loss=max_loss, class_errors=ERRORS)
    chosen = by_flops.plan(lq)
    assert loss(chosen) <= max_loss + 1e-9 and chosen.predicted_s is None
    assert min(by_flops.flops(c) for c in fitting) >= by_flops.flops(chosen)


def test_a_latency_budget_weighs_quality_by_class_errors_else_by_flops():
    net, lq = tiny_net(), image()
    cost = linear(net, RATES, tiling=1.)  # tiled plans are far too slow: whole-image subnets within 0.6 are w8d1, w8d2
    plan = engine(net, cost, budget=0.6, budget_unit='time').plan(lq)
    assert plan.whole_image_subnet == 1  # the most FLOPs that fit
    odd = [[0.5, 0.8, 0.7, 0.5]] * 10  # w8d1 is expected to do better than w8d2
    assert engine(net, cost, budget=0.6, budget_unit='time', class_errors=odd).plan(lq).whole_image_subnet == 0
    sr, report = engine(net, cost, budget=0.6, budget_unit='time').run(lq)
    with torch.no_grad():
        torch.testing.assert_close(sr, net(lq, subnet=1), rtol=0, atol=1e-5)
    # nothing fits: the fastest plan
    tight = engine(net, cost, budget=0.01, budget_unit='time').plan(lq)
    assert tight.whole_image_subnet == 0 and 'no plan predicted within' in tight.reason


@pytest.mark.parametrize('options, message', [
    ({'max_loss': 0.1}, 'max_loss (a quality target) needs class errors'),
    ({'max_loss': -1, 'class_errors': ERRORS}, "max_loss must be a loss in dB >= 0 or 'off', got -1"),
    ({'max_loss': 0.1, 'budget': 0.5, 'class_errors': ERRORS}, 'set at most one of'),
    ({'budget': 0.5, 'budget_unit': 'time'}, 'latency budget 0.5 plans by time: it needs a cost_table'),
    ({'budget_unit': 'time'}, 'budget_unit time needs a budget'),
    ({'budget': 0.5, 'budget_unit': 'seconds'}, "budget_unit must be one of flops, time, got 'seconds'"),
])
def test_bad_target_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
        DynamicInferenceEngine(tiny_net(), **options)


@pytest.mark.parametrize('options', [{'budget': 0.4}, {'budget': 0.05}, {}, {'budget': 0.7, 'rates': RATES},
                                     {'rates': RATES}, {'budget': 0.5, 'rates': [1e-6, 5e-6, 5e-6, 5e-6]}], ids=str)
def test_every_plan_with_class_errors_reports_its_expected_loss(options):
    """Budgets and Eq. 15 too (what curve prints beside the realised loss): the loss of the plan's own patches
    through the subnets it runs, against the full network on them, computed here in numpy."""
    net, lq = tiny_net(), image()
    rates = options.pop('rates', None)
    if rates:  # with a cost table: the plan predicted fastest (the last case: a whole-image subnet)
        plan = engine(net, linear(net, rates), class_errors=ERRORS, **options).plan(lq)
    else:
        plan = DynamicInferenceEngine(net, thresholds=THRESHOLDS, patch_size=16, overlap=2, class_errors=ERRORS,
                                      **options).plan(lq)
    full = np.array(ERRORS)[plan.classes.flatten().numpy() - 1, 3].sum()
    assert plan.expected_loss_db == pytest.approx(10 * np.log10(numpy_error(plan) / full))


@pytest.mark.parametrize('max_loss', [0.3, 1.0])
def test_a_quality_target_with_class_spreads_bounds_the_images_own_spread(max_loss):
    """With spreads the expected loss adds 1.2816 sd of the image's own patches (numpy here): the plan found is the
    one of fewest FLOPs whose loss so counted fits, more than without them."""
    from wbsr_runtime.class_thresholds import ClassThresholds

    net, lq = tiny_net(), image()
    spreads = (np.array(ERRORS) * 0.8).tolist()
    for row in spreads:
        row[-1] = 0.
    thresholds = ClassThresholds.of(THRESHOLDS, class_errors=ERRORS, class_spreads=spreads)
    plan = DynamicInferenceEngine(net, thresholds=thresholds, patch_size=16, overlap=2, max_loss=max_loss).plan(lq)
    classes = plan.classes.flatten().numpy() - 1

    def loss(p):
        subnets = (np.full(classes.shape, p.whole_image_subnet) if p.whole_image_subnet is not None
                   else p.subnets.flatten().numpy())
        error = np.array(ERRORS)[classes, subnets].sum()
        error += 1.2816 * np.sqrt((np.array(spreads)[classes, subnets]**2).sum())
        return 10 * np.log10(error / np.array(ERRORS)[classes, 3].sum())

    assert plan.expected_loss_db == pytest.approx(loss(plan)) and loss(plan) <= max_loss + 1e-9
    flops = DynamicInferenceEngine(net, patch_size=16).flops
    fitting = [c for c in candidates(net, lq) if loss(c) <= max_loss]
    assert min(flops(c) for c in fitting) >= flops(plan) * (1 - 1e-9)
    without = engine(net, None, max_loss=max_loss, class_errors=ERRORS).plan(lq)
    assert flops(plan) > flops(without)
