"""An image cleaner than its classes: the patch detail, the image's error scale, and the quality target that uses
them, against plain-numpy loops and hand computations."""
import numpy as np
import pytest
import torch
from test_plan_targets import ERRORS, candidates
from test_time_rules import THRESHOLDS, image, table, tiny_net

from wbsr_plugin.data.difficulty import patch_detail as torch_patch_detail
from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_runtime.class_errors import ClassErrors
from wbsr_runtime.class_thresholds import ClassThresholds
from wbsr_runtime.difficulty import patch_detail
from wbsr_runtime.expected_quality import DETAIL_POWER, detail_ratios, scaled_errors


def loop_detail(luma, top, left, side):
    """Mean squared 4-neighbour Laplacian over the pixels of a patch whose neighbours lie in it, pixel by pixel."""
    values = []
    for r in range(top + 1, top + side - 1):
        for c in range(left + 1, left + side - 1):
            lap = 4 * luma[r, c] - luma[r - 1, c] - luma[r + 1, c] - luma[r, c - 1] - luma[r, c + 1]
            values.append(lap * lap)
    return sum(values) / len(values)


def luma_of(lq):
    """BasicSR-free luma in [0, 255] of a (1, 3, h, w) tensor, as float32 like the engine computes it."""
    x = lq[0].numpy().astype(np.float32)
    return (x[0] * np.float32(0.299) + x[1] * np.float32(0.587) + x[2] * np.float32(0.114)) * np.float32(255.)


def test_patch_detail_is_the_mean_squared_laplacian_inside_every_patch():
    rng = np.random.default_rng(0)
    luma = rng.integers(0, 256, (9, 11)).astype(np.float64)
    tops, lefts = [0, 3, 4], [0, 5, 6]
    expected = np.array([[loop_detail(luma, t, l, 5) for l in lefts] for t in tops])
    assert np.allclose(patch_detail(luma, 5, tops, lefts), expected, rtol=1e-12)
    assert np.allclose(torch_patch_detail(torch.from_numpy(luma), 5, tops, lefts).numpy(), expected, rtol=1e-12)
    assert patch_detail(np.full((6, 6), 7.), 6, [0], [0])[0, 0] == 0  # flat: no detail
    with pytest.raises(ValueError, match='at least 3 pixels'):
        patch_detail(luma, 2, [0], [0])


def test_the_detail_ratios_and_scaled_errors_by_hand():
    # patches per class (2, 1, 0), the classes' mean detail (10, 40, 5): 20 and 40 expected, 5 and 60 found; with the
    # detail of 8-bit rounding (20 / 12) added per patch: (5 + 10/3) / (2 (10 + 5/3)) = 5/14, (60 + 5/3) / (40 + 5/3)
    assert detail_ratios([5., 60., 0.], [2, 1, 0], [10., 40., 5.], power=1) == pytest.approx([5 / 14, 1.48, 1.])
    assert detail_ratios([5., 60., 0.], [2, 1, 0], [10., 40., 5.], power=2) == pytest.approx([25 / 196, 1.48**2, 1.])
    # a class stored without detail: (5 + 5/3) / (5/3) = 4; (3 + 10/3) / (2 (10 + 5/3)) = 19/70
    assert detail_ratios([5., 3.], [1, 2], [0., 10.], power=1) == pytest.approx([4., 19 / 70])
    assert detail_ratios([0.], [4], [5 / 3], power=1) == pytest.approx([0.5])  # flat patches: not error-free
    # less detail: the full network's error falls to a quarter, every subnet keeps its excess over it
    assert scaled_errors([[8., 3., 2.], [9., 4., 4.]], [0.25, 1.]) == [[6.5, 1.5, 0.5], [9., 4., 4.]]
    # more detail: the full network keeps its error, every subnet's excess doubles
    assert scaled_errors([[8., 3., 2.]], [2.]) == [[14., 4., 2.]]
    # with tiling's cost (1): only the full network's error on the whole image (2 - 1) is scaled
    assert scaled_errors([[8., 3., 2.]], [0.5], [1.]) == [[7.5, 2.5, 1.5]]
    errors = [[1., 2.]]
    assert scaled_errors(errors, [1.]) is errors and scaled_errors(errors, None) is errors


def planned(net, lq, max_loss, detail):
    thresholds = ClassThresholds.of(THRESHOLDS, class_errors=ERRORS, class_detail=detail)
    return DynamicInferenceEngine(net, thresholds=thresholds, patch_size=16, overlap=2, max_loss=max_loss).plan(lq)


@pytest.mark.parametrize('max_loss', [0.3, 1.0])
@pytest.mark.parametrize('expects', [4., 0.25])
def test_a_quality_target_scales_errors_by_the_images_detail(max_loss, expects):
    """The top class expects 4 times (or a quarter of) its patches' detail: there the full network's error falls to
    about a quarter of the class mean's, the excesses staying (or the excesses grow about 4 times, the full network's
    error staying); the plan is the one of fewest FLOPs whose loss so counted fits, never fewer FLOPs than without."""
    net, lq = tiny_net(), image()
    luma = luma_of(lq).astype(np.float64)
    plain = DynamicInferenceEngine(net, thresholds=THRESHOLDS, patch_size=16, overlap=2, class_errors=ERRORS,
                                   max_loss=max_loss).plan(lq)
    found = np.array([loop_detail(luma, t, l, plain.patch_size) for t in plain.tops for l in plain.lefts])
    classes = plain.classes.flatten().numpy() - 1
    present = np.unique(classes)
    top = present[-1]
    mean_found = {k: found[classes == k].mean() for k in present}
    assert len(present) >= 2 and mean_found[top] > 100
    detail = [expects * mean_found[k] if k == top else mean_found.get(k, 2.) for k in range(len(ERRORS))]
    rounding = 20 / 12  # 8-bit rounding's detail, added per patch
    # per patch, its class's ratio: the patches' detail over the class's
    ratio = np.array([((mean_found[k] + rounding) / (detail[k] + rounding)) ** DETAIL_POWER for k in classes])
    plan = planned(net, lq, max_loss, detail)
    errors = np.array(ERRORS)
    full = (np.minimum(ratio, 1) * errors[classes, 3]).sum()  # less detail: a lower full-network error

    def loss(p):
        subnets = (np.full(classes.shape, p.whole_image_subnet) if p.whole_image_subnet is not None
                   else p.subnets.flatten().numpy())
        excess = np.maximum(ratio, 1) * (errors[classes, subnets] - errors[classes, 3])  # more detail: more excess
        return 10 * np.log10((full + excess.sum()) / full)

    assert plan.expected_loss_db == pytest.approx(loss(plan), rel=1e-6) and loss(plan) <= max_loss + 1e-9
    flops = DynamicInferenceEngine(net, patch_size=16).flops
    fitting = [c for c in candidates(net, lq) if loss(c) <= max_loss]
    assert min(flops(c) for c in fitting) >= flops(plan) * (1 - 1e-9)
    assert flops(plan) >= flops(plain) and 'detail' not in plain.reason
    if expects > 1:
        assert f"counted {full / errors[classes, 3].sum():.2f} times theirs" in plan.reason
    else:
        assert f"excess counted up to {ratio.max():.2f} times theirs" in plan.reason


def test_an_image_at_least_as_detailed_as_its_classes_plans_as_without_detail():
    net, lq = tiny_net(), image()
    plain = DynamicInferenceEngine(net, thresholds=THRESHOLDS, patch_size=16, overlap=2, class_errors=ERRORS,
                                   max_loss=0.3).plan(lq)
    classes = plain.classes.flatten().numpy() - 1
    luma = luma_of(lq).astype(np.float64)
    detail = np.array([loop_detail(luma, t, l, plain.patch_size) for t in plain.tops for l in plain.lefts])
    per_class = [detail[classes == k].mean() if (classes == k).any() else 1. for k in range(len(ERRORS))]
    plan = planned(net, lq, 0.3, per_class)  # exactly as detailed as its classes
    assert plan.expected_loss_db == pytest.approx(plain.expected_loss_db)
    assert torch.equal(plan.subnets, plain.subnets) and plan.whole_image_subnet == plain.whole_image_subnet


def test_calibration_statistics_store_the_classes_mean_detail_and_what_tiling_costs():
    classes = np.array([1, 1, 3, 3, 3])
    errors = np.array([[2., 1.], [4., 1.], [5., 2.], [6., 2.], [7., 2.]])
    detail = np.array([1., 3., 10., 20., 60.])
    in_context = np.array([0.2, 0.4, 1., 1.5, 2.])  # the full network's error with context
    stats = ClassErrors.from_samples(classes, errors, np.arange(5), 4, {'channel': 'y'}, detail, in_context)
    assert stats.detail == (2., 2., 30., 30.)  # empty classes take the nearest class's (the lower on a tie)
    assert stats.in_context == pytest.approx((0.3, 0.3, 1.5, 1.5))
    assert stats.tiling_table() == pytest.approx([0.7, 0.7, 0.5, 0.5])  # full network alone less with context
    meta = stats.meta_entries()
    assert meta['calibration']['detail'] == [2., 2., 30., 30.]
    assert meta['calibration']['full_in_context'] == pytest.approx([0.3, 0.3, 1.5, 1.5])
    assert ClassErrors.from_meta(meta) == stats
    read = ClassThresholds.from_meta({'thresholds': [1., 2., 3.], **meta})
    assert read.class_detail == stats.detail and read.class_tiling == pytest.approx((0.7, 0.7, 0.5, 0.5))
    without = ClassErrors.from_samples(classes, errors, np.arange(5), 4)
    assert without.detail is None and without.tiling_table() is None
    assert set(without.meta_entries()['calibration']) >= {'counts', 'excess_sd'}
    assert not {'detail', 'full_in_context'} & set(without.meta_entries()['calibration'])
    assert ("not stored: class detail, tiling's cost, deviations, luma errors (measured in RGB)"
            in without.reliability())
    assert "not stored: deviations (clean" in stats.reliability()
    for key in ('detail', 'full_in_context'):
        bad = {**meta, 'calibration': {**meta['calibration'], key: [1., float('nan'), 1., 1.]}}
        with pytest.raises(ValueError, match=f'{key} must hold 4 finite values'):
            ClassErrors.from_meta(bad)


def test_class_detail_is_checked():
    with pytest.raises(ValueError, match='class_detail needs class_errors'):
        ClassThresholds.of(THRESHOLDS, class_detail=[1.] * 10)
    with pytest.raises(ValueError, match='class_detail must hold 10 finite values'):
        ClassThresholds.of(THRESHOLDS, class_errors=ERRORS, class_detail=[1.] * 9)
    kept = ClassThresholds.of(THRESHOLDS, class_errors=ERRORS, class_detail=[1.] * 10)
    assert ClassThresholds.of(kept).class_detail == (1.,) * 10
    assert ClassThresholds.of(kept, class_errors=ERRORS).class_detail is None  # new errors, new detail
    assert kept.without_class_errors().class_detail is None


def test_calibration_measures_every_patchs_detail_as_the_engine_does():
    from wbsr_plugin.inference.calibration import measure_class_errors, patch_errors

    net, generator = tiny_net(), torch.Generator().manual_seed(1)
    lq = (torch.rand(12, 3, 16, 16, generator=generator) * 255).round().to(torch.uint8)
    lq[:6] = lq[:6] // 8 + 100  # six low-contrast patches beside six textured ones
    gt = (torch.rand(12, 3, 64, 64, generator=generator) * 255).round().to(torch.uint8)
    thresholds = ClassThresholds.of(THRESHOLDS)
    stats = measure_class_errors(net, lq, gt, thresholds)
    classes, _, _, _ = patch_errors(net, lq, gt, thresholds)
    details = np.array([loop_detail(luma_of(lq[i:i + 1].float() / 255.).astype(np.float64), 0, 0, 16)
                        for i in range(12)])
    for k in np.unique(classes):
        assert stats.detail[k - 1] == pytest.approx(details[classes == k].mean(), rel=1e-9)


@pytest.mark.parametrize('side', [12, 48])  # one patch, and a tiled image
def test_both_planners_scale_alike(side):
    """The torch engine and the torch-free runtime's numpy planner find the same per-class scales."""
    from wbsr_runtime.planner import Planner as NumpyPlanner

    net, generator = tiny_net(), torch.Generator().manual_seed(5)
    lq = torch.rand(1, 3, side, side if side < 16 else side + 8, generator=generator)
    lq[..., :side // 2, :] = lq[..., :side // 2, :] * 0.1 + 0.4  # calmer top half: other classes
    thresholds = ClassThresholds.of(THRESHOLDS, class_errors=ERRORS, class_detail=[1e5 * (k + 1) for k in range(10)])
    engine = DynamicInferenceEngine(net, thresholds=thresholds, patch_size=16, overlap=2, max_loss=0.1)
    planner = engine.planner
    numpy_planner = NumpyPlanner([s.flops for s in net.subnets], engine.subnets.flops, thresholds=thresholds,
                                 num_classes=10, patch_size=16, overlap=2, trim=1, budget=None, target_gflops=None,
                                 alpha=None, subnet=None, class_errors=ERRORS, whole_image_fallback=True,
                                 class_detail=thresholds.class_detail_list())
    analysis = planner.analyse(lq)
    assert (analysis.num_patches == 1) == (side < 16)
    scales = analysis.detail_ratios
    assert scales == pytest.approx(numpy_planner.analyse(lq.numpy()).detail_ratios, rel=1e-9)
    assert min(scales) < 1


@pytest.mark.parametrize('max_loss', [0.05, 0.2, 0.6])
def test_what_tiling_costs_counts_against_tiled_plans_only(max_loss):
    """Tiling adds 2 % of the full network's error in every class: every tiled plan, the full network tiled
    included (0.088 dB), is expected to lose against the full network on the whole image; subnets run whole are not
    charged. The plan is the one of fewest FLOPs whose loss so counted fits (numpy here)."""
    net, lq = tiny_net(), image()
    errors = np.array(ERRORS)
    tiling = (0.02 * errors[:, 3]).tolist()
    thresholds = ClassThresholds.of(THRESHOLDS, class_errors=ERRORS, class_tiling=tiling)
    plan = DynamicInferenceEngine(net, thresholds=thresholds, patch_size=16, overlap=2, max_loss=max_loss).plan(lq)
    classes = plan.classes.flatten().numpy() - 1
    reference = (errors[classes, 3] - np.array(tiling)[classes]).sum()

    def loss(p):
        if p.whole_image_subnet is not None:
            return 10 * np.log10((errors[classes, p.whole_image_subnet] - np.array(tiling)[classes]).sum() / reference)
        return 10 * np.log10(errors[classes, p.subnets.flatten().numpy()].sum() / reference)

    assert plan.expected_loss_db == pytest.approx(loss(plan), rel=1e-6, abs=1e-12) and loss(plan) <= max_loss + 1e-9
    assert 10 * np.log10(errors[classes, 3].sum() / reference) == pytest.approx(-10 * np.log10(0.98))
    flops = DynamicInferenceEngine(net, patch_size=16).flops
    fitting = [c for c in candidates(net, lq) if loss(c) <= max_loss]
    assert min(flops(c) for c in fitting) >= flops(plan) * (1 - 1e-9)
    # under 0.088 dB no tiled plan fits (a subnet runs whole); at 0.6 dB a tiled one, charged with tiling, costs least
    assert (plan.whole_image_subnet is None) == (max_loss == 0.6)
    with pytest.raises(ValueError, match='class_tiling must hold 10 finite values'):
        ClassThresholds.of(THRESHOLDS, class_errors=ERRORS, class_tiling=[-1.] * 10)


@pytest.mark.parametrize('max_loss', [0.05, 0.1])
def test_the_plain_network_run_tiled_pays_what_tiling_costs(max_loss):
    """A cost table where the plain network is fastest tiled (one small patch per call, the whole image slow): its
    expected loss is tiling's, 0.088 dB at 2 %; under it nothing fits and the least expected loss runs."""
    net, lq = tiny_net(), image()
    errors = np.array(ERRORS)
    thresholds = ClassThresholds.of(THRESHOLDS, class_errors=ERRORS, class_tiling=(0.02 * errors[:, 3]).tolist())
    cost = table(net, [(1e-4, 1.), (1e-4, 1.), (1e-4, 1.), (1e-4, 10.)])
    engine = DynamicInferenceEngine(net, thresholds=thresholds, patch_size=16, overlap=2, cost_table=cost,
                                    max_batch_pixels=256, max_loss=max_loss)
    plan = engine.plan(lq)
    assert plan.whole_image_subnet is None and (plan.subnets == 3).all()  # the full network, tiled
    assert plan.expected_loss_db == pytest.approx(-10 * np.log10(0.98))
    if max_loss < 0.088:
        assert 'no plan expected within it; the least expected loss (0.088 dB)' in plan.reason
    else:
        assert 'fastest (predicted) expected within it (0.088 dB)' in plan.reason


def test_an_image_that_is_one_patch_pays_no_tiling_and_reads_the_device_once():
    from test_host_syncs import HostSyncRecorder

    net, lq = tiny_net(), image()[..., :12, :12]
    errors = np.array(ERRORS)
    thresholds = ClassThresholds.of(THRESHOLDS, class_errors=ERRORS, class_tiling=(0.5 * errors[:, 3]).tolist(),
                                    class_detail=[1.] * len(ERRORS))
    engine = DynamicInferenceEngine(net, thresholds=thresholds, patch_size=16, overlap=2, budget=1.)
    engine.run(lq)
    with HostSyncRecorder() as recorder:
        plan = engine.plan(lq)
    assert plan.subnets.numel() == 1 and plan.expected_loss_db == 0.  # the full network, whole: nothing lost
    # the patch's difficulty and detail in one read ('numpy': the CPU's shortcut for one patch, already on the host)
    assert [call for call in recorder.calls if call != 'numpy'] == ['tolist']
