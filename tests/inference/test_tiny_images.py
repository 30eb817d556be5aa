"""Images that are one patch (or thinner than 2 pixels): their difficulty, class and subnet without the array path,
run on the image itself, and planned once per size where no content could change the plan."""
import numpy as np
import pytest
import torch
from test_engine import tiny_net

from wbsr_plugin.data.difficulty import patch_difficulty, rgb_to_luma
from wbsr_plugin.inference import DynamicInferenceEngine


def test_plan_of_patches_of_one_and_two_pixels():
    """Protects the difficulty of the smallest patches: measured from 2 pixels on, 0 (float64, one per patch) below."""
    engine = DynamicInferenceEngine(tiny_net())
    plan = engine.plan(torch.rand(1, 3, 1, 5))  # run() pads such images; the plan alone tiles 1-pixel patches
    assert plan.patch_size == 1 and plan.tops == [0] and plan.lefts == [0, 1, 2, 3, 4]
    assert plan.difficulty.dtype == torch.float64 and plan.difficulty.tolist() == [[0.] * 5]
    assert plan.subnets.shape == (1, 5)
    lq = torch.tensor([0., 1., 1., 0.]).view(1, 1, 2, 2).expand(1, 3, 2, 2)  # a checkerboard
    plan = DynamicInferenceEngine(tiny_net(), thresholds=list(range(1, 10))).plan(lq)  # one patch, measured
    assert plan.patch_size == 2 and plan.difficulty.dtype == torch.float64
    expected = patch_difficulty(rgb_to_luma(lq[0]), 2, [0], [0])
    assert float(plan.difficulty) == pytest.approx(float(expected)) and float(expected) > 0


@pytest.mark.parametrize('size', [(1, 1), (1, 3), (3, 1)])
def test_one_pixel_images_run_their_subnet_on_the_image_itself(size):
    """Images thinner than 2 pixels are padded only to be planned (the difficulty needs 2 pixels): the subnet runs
    on the image itself, and the FLOPs reported are that subnet's on it, never more than the full network's."""
    net = tiny_net()
    lq = torch.rand(1, 3, *size)
    with torch.no_grad():
        expected = net(lq)
    sr, report = DynamicInferenceEngine(net, subnet=-1).run(lq)
    assert report.lq_size == size and report.sr_size == (4 * size[0], 4 * size[1])
    torch.testing.assert_close(sr, expected, rtol=0, atol=1e-6)
    assert report.flops == report.full_flops == net.flops(*size, subnet=len(net.subnets) - 1)


def hand_difficulty(lq):
    """The difficulty of a whole (1, 3, h, w) image as one patch, in plain numpy: mean + population std of the
    horizontal and of the vertical gradient magnitudes of its luma."""
    rgb = lq[0].numpy()
    luma = ((rgb[0] * np.float32(0.299) + rgb[1] * np.float32(0.587) + rgb[2] * np.float32(0.114))
            * np.float32(255)).astype(np.float64)
    gx, gy = np.abs(np.diff(luma, axis=1)), np.abs(np.diff(luma, axis=0))
    return gx.mean() + gx.std() + gy.mean() + gy.std()


@pytest.mark.parametrize('engine_side', ['torch', 'numpy'])
def test_an_image_that_is_one_patch_gets_the_class_its_difficulty_falls_in(engine_side):
    """Protects the one-patch shortcut (one value read instead of the array path), in both planners: a threshold
    equal to the difficulty counts as below it, and the image's own quantiles put it in the top class unmeasured."""
    from wbsr_runtime.planner import Planner as NumpyPlanner

    torch.manual_seed(3)
    lq = torch.rand(1, 3, 20, 20)
    d = hand_difficulty(lq)
    net = tiny_net()
    for thresholds, expected in (([d - 2, d - 1, d, d + 1, d + 2, d + 3, d + 4, d + 5, d + 6], 4),
                                 ([d + k for k in range(1, 10)], 1), ([d - k for k in range(9, 0, -1)], 10),
                                 (None, 10)):
        engine = DynamicInferenceEngine(net, patch_size=32, thresholds=thresholds)
        planner = engine.planner
        if engine_side == 'numpy':
            planner = NumpyPlanner([s.flops for s in net.subnets], engine.subnets.flops, thresholds=planner.thresholds,
                                   num_classes=10, patch_size=32, overlap=4, trim=1, budget=None, target_gflops=None,
                                   alpha=None, subnet=None, class_errors=None, whole_image_fallback=True)
        analysis = planner.analyse(lq if engine_side == 'torch' else lq.numpy())
        # (its own quantiles need no difficulty: none is measured)
        assert float(analysis.difficulty[0, 0]) == (0 if thresholds is None else pytest.approx(d, rel=1e-12))
        assert int(analysis.classes[0, 0]) == expected and analysis.class_counts == [int(k == expected)
                                                                                       for k in range(1, 11)]


def test_an_image_that_is_one_patch_runs_the_subnet_its_histogram_counts_under_every_budget():
    """Protects the one-patch shortcut of the subnet choice: with class errors (partial upgrades of a class) and
    without, the patch runs where the plan's histogram (counted from the class counts alone) puts it."""
    torch.manual_seed(4)
    net, lq = tiny_net(), torch.rand(1, 3, 20, 20)
    d = hand_difficulty(lq)
    errors = [[0.001 * (k + 1) * (4 - m) for m in range(4)] for k in range(10)]
    seen = set()
    for shift in (-3.5, -0.5, 0.5, 5):
        thresholds = [d + shift + 0.4 * k for k in range(9)]
        for budget in (0.05, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, None):
            for class_errors in (None, errors):
                engine = DynamicInferenceEngine(net, patch_size=32, thresholds=thresholds, budget=budget,
                                                class_errors=class_errors, whole_image_fallback=False)
                plan = engine.plan(lq)
                subnet = int(plan.subnets[0, 0])
                assert plan.histogram == [int(m == subnet) for m in range(4)]
                seen.add(subnet)
    assert {0, 1, 3} <= seen  # with class errors, one and two upgrades of its class (w8d1 -> w8d2 -> w16d2)


# -- caches -------------------------------------------------------------------------------------------------------


def test_plans_no_content_could_change_are_kept_per_image_size():
    """Protects the plan memo: an image that is one patch without thresholds (or any image under an explicit subnet)
    plans once per size; with thresholds its content is read every time."""
    torch.manual_seed(5)
    net = tiny_net()
    flat, busy = torch.full((1, 3, 20, 20), 0.5), torch.rand(1, 3, 20, 20)
    engine = DynamicInferenceEngine(net, patch_size=32)
    assert engine.plan(flat) is engine.plan(busy)  # its own top class, whatever it holds
    assert engine.plan(torch.rand(1, 3, 20, 24)) is not engine.plan(busy)  # another size
    assert engine.plan(torch.rand(1, 3, 40, 40)) is not engine.plan(torch.rand(1, 3, 40, 40))  # several patches
    fixed = DynamicInferenceEngine(net, subnet=1)
    assert fixed.plan(torch.rand(1, 3, 40, 40)) is fixed.plan(torch.rand(1, 3, 40, 40))
    measured = DynamicInferenceEngine(net, patch_size=32, thresholds=[0.5 * k for k in range(1, 10)])
    flat_plan, busy_plan = measured.plan(flat), measured.plan(busy)
    assert float(flat_plan.difficulty) == 0 and float(busy_plan.difficulty) > 0
    assert flat_plan.histogram != busy_plan.histogram


def test_plans_are_not_kept_while_a_whole_image_must_fit_in_the_memory_free_now():
    """On CUDA the time rules weigh a whole image against the memory free at each call: such plans are made anew."""
    from test_time_rules import linear

    net = tiny_net()
    lq = torch.rand(1, 3, 40, 40)
    engine = DynamicInferenceEngine(net, subnet=1, cost_table=linear(net, [1e-6, 2e-6, 3e-6, 4e-6]))
    assert engine.timer.memory_limit() is None and engine.plan(lq) is engine.plan(lq)  # CPU: no limit, kept
    free = [10**12]
    engine = DynamicInferenceEngine(net, subnet=1, cost_table=linear(net, [1e-6, 2e-6, 3e-6, 4e-6]))
    engine.timer.memory_limit = lambda: free[0]
    first = engine.plan(lq)
    free[0] = 10  # nothing fits whole any more
    assert engine.plan(lq) is not first
