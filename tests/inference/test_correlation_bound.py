"""The correlation term of the expected loss: a subnet's squared error is the full network's, plus its deviation from
the full network, plus twice their cross term; an image whose deviation runs along the full network's error loses
more. Checked against hand computations, plain-numpy loops and synthetic calibrations of known correlation."""
import math

import numpy as np
import pytest
import torch
from test_plan_targets import ERRORS, candidates
from test_time_rules import THRESHOLDS, image, tiny_net

from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_plugin.inference.calibration import patch_errors
from wbsr_runtime.class_errors import CORRELATION_FLOOR, MARGIN, ClassErrors, image_correlations
from wbsr_runtime.class_thresholds import ClassThresholds
from wbsr_runtime.expected_quality import error_bound, scaled_errors, untiled


def test_the_error_bound_adds_twice_the_correlation_times_the_root_of_excess_and_error_by_hand():
    errors = [[5., 3., 2.], [14., 11., 10.]]
    full = [2., 10.]  # the full network's error on the whole image, per class
    counts = [{0: 2, 2: 1}, {1: 3}]  # class 1: 2 patches through subnet 0, 1 through the full network; class 2: 3
    plain = 2 * 5 + 2 + 3 * 11
    assert error_bound(counts, errors) == plain
    # subnet 0: excess 2 * 3 over an error of 2 * 2; subnet 1: 3 * 1 over 3 * 10; the full network: nothing
    expected = plain + 2 * (0.5 * math.sqrt(6 * 4) + 0.25 * math.sqrt(3 * 30))
    assert error_bound(counts, errors, full_errors=full, correlations=[0.5, 0.25, 0.9]) == pytest.approx(expected)
    assert error_bound(counts, errors, full_errors=full, correlations=[0., 0., 0.]) == plain


def synthetic_calibration(rhos, patches=12, seed=0):
    """Per-patch errors of images whose deviation is proportional to the full network's error patch by patch, with
    the cross term ``rho sqrt(d e)``: each image's correlation is exactly its ``rho``."""
    rng = np.random.default_rng(seed)
    reference, deviation, errors, ids = [], [], [], []
    for image_id, rho in enumerate(rhos):
        e = rng.uniform(1, 10, patches)
        d = np.stack([0.3 * e, 0.05 * e, np.zeros(patches)], 1)  # subnets 0 and 1, the full network
        errors.append(e[:, None] + d + 2 * rho * np.sqrt(d * e[:, None]))
        reference.append(e)
        deviation.append(d)
        ids += [image_id] * patches
    return np.concatenate(errors), np.concatenate(reference), np.concatenate(deviation), np.array(ids)


def test_image_correlations_recover_each_images_known_correlation():
    rhos = [0.3, -0.2, 0.05, 0.6]
    errors, reference, deviation, ids = synthetic_calibration(rhos)
    found = image_correlations(errors, reference, deviation, ids)
    assert found[:, 0] == pytest.approx(rhos) and found[:, 1] == pytest.approx(rhos)
    assert (found[:, 2] == 0).all()  # no deviation: no correlation
    # an image of one patch says nothing of an image's correlation
    one = image_correlations(errors[:13], reference[:13], deviation[:13], np.r_[ids[:12], [7]])
    assert one == pytest.approx(found[:1])


def test_with_one_patch_per_image_every_patch_counts_as_an_image():
    """A calibration of as many images as patches: the correlation is taken over the patches (a wider bound),
    not silently 0, and the calibration says so."""
    rng = np.random.default_rng(3)
    e = rng.uniform(1, 10, 20)
    d = np.stack([rng.uniform(0.1, 1, 20), np.zeros(20)], 1)
    rho = rng.uniform(-0.5, 0.5, 20)  # each patch's own correlation
    errors = e[:, None] + d + 2 * rho[:, None] * np.sqrt(d * e[:, None])
    stats = ClassErrors.from_samples(np.ones(20, dtype=int), errors, np.arange(20), 1, in_context=e, deviation=d)
    assert stats.correlation == pytest.approx((sorted(rho)[math.ceil(0.9 * 19)], 0.))
    assert stats.source['correlation_over'] == '20 patches, one image each'
    assert 'over 20 patches, one image each)' in stats.reliability()


@pytest.mark.parametrize('count', [4, 12])
def test_calibration_stores_the_ninetieth_percentile_of_its_images_correlations(count):
    """Of 4 images the largest correlation, of 12 the 90 % quantile (the next value up, no interpolation); never
    below 0."""
    rhos = np.linspace(-0.3, 0.5, count)
    errors, reference, deviation, ids = synthetic_calibration(rhos, seed=count)
    classes = np.where(reference > 5, 2, 1)
    stats = ClassErrors.from_samples(classes, errors, ids, 3, {'channel': 'y'}, in_context=reference,
                                     deviation=deviation)
    expected = sorted(rhos)[math.ceil(0.9 * (count - 1))]
    assert stats.correlation == pytest.approx((expected, expected, 0.))
    errors_n, reference_n, deviation_n, ids_n = synthetic_calibration([-0.2, -0.1])
    negative = ClassErrors.from_samples(np.where(reference_n > 5, 2, 1), errors_n, ids_n, 3, in_context=reference_n,
                                        deviation=deviation_n)
    assert negative.correlation == (0., 0., 0.)
    # planned with at least the floor, the full network (tiling's deviation alone) as measured
    assert negative.planning_correlation() == (CORRELATION_FLOOR, CORRELATION_FLOOR, 0.)
    # per class, the mean deviation (class 3 has no patch: class 2's)
    for k in (1, 2):
        assert stats.deviation[k - 1] == pytest.approx(deviation[classes == k].mean(0))
    assert stats.deviation[2] == stats.deviation[1]


def test_the_planning_table_is_the_error_with_context_plus_the_deviation_by_hand():
    """Per class: the full network's error with context, plus MARGIN times every subnet's mean deviation or mean
    excess, whichever is larger, never below the full network run tiled (with context, plus what tiling changes)."""
    classes = np.array([1, 1, 2, 2, 3, 3])
    errors = np.array([[2.6, 2.3, 2.], [3.4, 3.3, 3.], [9., 8., 6.], [11., 9., 7.], [4.05, 4.05, 4.], [4.05, 4.05, 4.]])
    in_context = np.array([1.5, 2.5, 5.5, 6.5, 3.5, 3.5])
    deviation = np.array([[0.8, 0.1, 0.1], [1., 0.3, 0.3], [1., 0.5, 0.2], [2., 1.5, 0.4], [0.01, 0.01, 0.5],
                          [0.01, 0.01, 0.5]])
    stats = ClassErrors.from_samples(classes, errors, np.array([0, 1, 0, 1, 0, 1]), 3, {'channel': 'y'},
                                     np.array([1., 2., 30., 40., 9., 9.]), in_context, deviation)
    table = stats.planning_table(z=0)  # without the sampling term
    # class 1: deviations 0.9 and 0.2 against excesses 0.5 and 0.3 over the full network's 2.5
    assert table[0] == pytest.approx([2 + MARGIN * 0.9, 2 + MARGIN * 0.3, 2 + 0.2])
    # class 2: the excesses (3.5, 2) are the larger
    assert table[1] == pytest.approx([6 + MARGIN * 3.5, 6 + MARGIN * 2., 6 + 0.3])
    # class 3: deviation 0.01 and excess 0.05, below what tiling changes (0.5)
    assert table[2] == pytest.approx([4., 4., 4.])
    assert stats.tiling_table() == pytest.approx([0.2, 0.3, 0.5])  # what tiling changes in the full network
    # on the whole image no subnet is expected to beat the full network, and more detail never discounts
    for row, base in zip(untiled(table, stats.tiling_table()), [2., 6., 3.5]):
        assert row[-1] == pytest.approx(base) and min(row[:-1]) >= base - 1e-12
    sharper = scaled_errors(table, [3.] * 3, stats.tiling_table())
    assert all(s >= t - 1e-12 for srow, trow in zip(sharper, table) for s, t in zip(srow, trow))
    text = stats.reliability()
    assert f'x{MARGIN:g} deviation' in text and 'not stored' not in text
    assert f'measured up to {max(stats.correlation):.2f} over 2 images)' in text
    meta = stats.meta_entries()
    assert ClassErrors.from_meta(meta) == stats
    terms = stats.planning_terms()
    # planned with at least CORRELATION_FLOOR for every subnet but the full network (tiling's deviation alone)
    assert terms['subnet_correlation'] == tuple(max(r, CORRELATION_FLOOR) for r in stats.correlation[:2]) + (
        stats.correlation[2],)
    assert terms['class_tiling'] == stats.tiling_table()
    thresholds = ClassThresholds.from_meta({'thresholds': [1., 2.], **meta})
    assert thresholds.subnet_correlation == terms['subnet_correlation']
    for bad in ({'correlation': None}, {'correlation': [0.1, 2., 0.]}, {'deviation': [[1., 1.]] * 3}):
        with pytest.raises(ValueError, match='deviation .* and correlation'):
            ClassErrors.from_meta({**meta, 'calibration': {**meta['calibration'], **bad}})
    with pytest.raises(ValueError, match='subnet_correlation must hold 3 values in'):
        ClassThresholds.of([1., 2.], class_errors=table, subnet_correlation=[0.1, 0.1])
    with pytest.raises(ValueError, match='subnet_correlation needs class_errors'):
        ClassThresholds.of([1., 2.], subnet_correlation=[0.1, 0.1, 0.1])


def test_patch_errors_measure_every_subnets_deviation_from_the_full_network_with_context():
    net = tiny_net()
    s = net.upscale
    generator = torch.Generator().manual_seed(6)
    crops = torch.rand(2, 3, 12, 12, generator=generator)  # 8 px patches, 2 px of context
    gt = torch.rand(2, 3, 8 * s, 8 * s, generator=generator)
    _, errors, in_context, deviation = patch_errors(net, crops, gt, ClassThresholds.of([0.5]), border=0)
    weights = np.array([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        seen = net(crops, subnet=len(net.subnets) - 1).clamp(0, 1).numpy()[..., 2 * s:10 * s, 2 * s:10 * s]
        for m in range(len(net.subnets)):
            alone = net(crops[..., 2:10, 2:10], subnet=m).clamp(0, 1).numpy()
            expected = (((alone - seen) * weights).sum(1) ** 2).mean((1, 2))
            assert deviation[:, m] == pytest.approx(expected, rel=1e-4, abs=1e-12)
    # the identity the correlation rests on: error = error with context + deviation + 2 cross; |cross| bounded
    cross = (errors - in_context[:, None] - deviation) / 2
    assert (np.abs(cross) <= np.sqrt(deviation * in_context[:, None]) * (1 + 1e-4) + 1e-9).all()


@pytest.mark.parametrize('max_loss', [0.3, 1.0])
def test_a_quality_target_counts_the_correlation_term(max_loss):
    """The plan of fewest FLOPs whose loss, counted with the correlation term in numpy, fits; never fewer FLOPs than
    without the term."""
    net, lq = tiny_net(), image()
    rho = [0.3, 0.2, 0.1, 0.]
    thresholds = ClassThresholds.of(THRESHOLDS, class_errors=ERRORS, subnet_correlation=rho)
    plan = DynamicInferenceEngine(net, thresholds=thresholds, patch_size=16, overlap=2, max_loss=max_loss).plan(lq)
    without = DynamicInferenceEngine(net, thresholds=THRESHOLDS, patch_size=16, overlap=2, class_errors=ERRORS,
                                     max_loss=max_loss).plan(lq)
    errors = np.array(ERRORS)

    def loss(p):
        classes = p.classes.flatten().numpy() - 1
        subnets = (np.full(classes.shape, p.whole_image_subnet) if p.whole_image_subnet is not None
                   else p.subnets.flatten().numpy())
        full = errors[classes, 3]
        error = errors[classes, subnets].sum()
        for m in range(3):
            on = subnets == m
            error += 2 * rho[m] * np.sqrt((errors[classes[on], m] - full[on]).sum() * full[on].sum())
        return 10 * np.log10(error / full.sum())

    assert plan.expected_loss_db == pytest.approx(loss(plan), rel=1e-6) and loss(plan) <= max_loss + 1e-9
    flops = DynamicInferenceEngine(net, patch_size=16).flops
    fitting = [c for c in candidates(net, lq) if loss(c) <= max_loss]
    assert min(flops(c) for c in fitting) >= flops(plan) * (1 - 1e-9)
    assert flops(plan) >= flops(without)


def test_both_planners_count_the_correlation_alike():
    """The torch engine and the torch-free runtime's numpy planner expect the same loss of the same plan."""
    from wbsr_runtime.planner import Planner as NumpyPlanner

    net, lq = tiny_net(), image()
    thresholds = ClassThresholds.of(THRESHOLDS, class_errors=ERRORS, subnet_correlation=[0.3, 0.2, 0.1, 0.])
    engine = DynamicInferenceEngine(net, thresholds=thresholds, patch_size=16, overlap=2, budget=0.5)
    numpy_planner = NumpyPlanner([s.flops for s in net.subnets], engine.subnets.flops, thresholds=thresholds,
                                 num_classes=10, patch_size=16, overlap=2, trim=1, budget=0.5, target_gflops=None,
                                 alpha=None, subnet=None, class_errors=ERRORS, whole_image_fallback=False,
                                 subnet_correlation=thresholds.subnet_correlation_list())
    plan, numpy_plan = engine.plan(lq), numpy_planner.plan(lq.numpy())
    assert np.array_equal(plan.subnets.numpy(), numpy_plan.subnets)
    assert plan.expected_loss_db == pytest.approx(numpy_plan.expected_loss_db, rel=1e-9)
    assert plan.expected_loss_db > DynamicInferenceEngine(net, thresholds=THRESHOLDS, patch_size=16, overlap=2,
                                                          class_errors=ERRORS, budget=0.5).plan(lq).expected_loss_db
