"""The dynamic inference engine on hand-made inputs: its options, plans, whole-image rules, caches, batches and
reports, each checked against values worked out by hand, torch's own FLOP counter or the supernet run directly."""
import re
import time
import types

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from wbsr_plugin.archs.supernet_util import supernet_types
from wbsr_plugin.archs.wbsr_resnet_arch import WBSRResNet
from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_plugin.inference.tiling import extract_patches
from wbsr_runtime.class_thresholds import check_threshold_table
from wbsr_runtime.planner import InferencePlan
from wbsr_runtime.report import InferenceReport

CPU = torch.device('cpu')


def tiny_net(widths=(8, 16)):
    """Subnets in cost order: w8d1, w8d2, w16d1, w16d2 (the default widths)."""
    return WBSRResNet(num_feat=16, num_block=2, upscale=4, widths=list(widths), depths=[1, 2]).eval()


def counted_flops(net, h, w, subnet):
    """FLOPs of one subnet on an h x w LR input, as torch counts them."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.zeros(1, 3, h, w), subnet=subnet)
    return counter.get_total_flops()


def striped_image():
    """28 x 28 LR, tiled by 2 x 2 patches of 16 at 0 and 12: flat grey down to row 15 (the upper patches, difficulty
    0), vertical stripes below, faint up to column 15 and strong from column 16 (in the lower right patch only)."""
    lq = torch.full((1, 3, 28, 28), 0.5)
    stripes = torch.tensor([0.0, 1.0]).repeat(14)
    lq[..., 16:, :16] = 0.45 + 0.1 * stripes[:16]
    lq[..., 16:, 16:] = 0.1 + 0.8 * stripes[16:]
    return lq


def exact(message):
    return '^' + re.escape(message) + '$'


# -- options ------------------------------------------------------------------------------------------------------


ONE_TARGET = 'set at most one of budget, max_loss, target_gflops and subnet, got '


@pytest.mark.parametrize('options, message', [
    ({'patch_size': 1}, 'patch_size must be an integer >= 2, got 1.'),
    ({'patch_size': 16.0}, 'patch_size must be an integer >= 2, got 16.0.'),
    ({'overlap': -1}, 'overlap must be an integer in [0, patch_size), got -1.'),
    ({'patch_size': 16, 'overlap': 16}, 'overlap must be an integer in [0, patch_size), got 16.'),
    ({'overlap': 2.0}, 'overlap must be an integer in [0, patch_size), got 2.0.'),
    ({'trim': -1}, 'trim must be an integer >= 0, got -1.'),
    ({'trim': 1.0}, 'trim must be an integer >= 0, got 1.0.'),
    ({'budget': 0.5, 'target_gflops': 1.}, ONE_TARGET + 'budget and target_gflops'),
    ({'target_gflops': 1., 'subnet': 0}, ONE_TARGET + 'target_gflops and subnet'),
    ({'budget': 1.5}, 'budget must be a fraction in (0, 1], got 1.5'),
    ({'target_gflops': 0}, 'target_gflops must be a positive number of GFLOPs, got 0'),
    ({'target_gflops': -1.}, 'target_gflops must be a positive number of GFLOPs, got -1.0'),
    ({'target_gflops': 1., 'alpha': 0}, 'alpha must be a positive number, got 0'),
    ({'alpha': 2.}, 'alpha goes with target_gflops (Eq. 16)'),
    ({'num_classes': 0}, 'num_classes must be a positive integer, got 0.'),
    ({'num_classes': True}, 'num_classes must be a positive integer, got True.'),
    ({'num_classes': 2.5}, 'num_classes must be a positive integer, got 2.5.'),
    ({'thresholds': [1., 2.], 'num_classes': 10}, '2 thresholds define 3 classes, but num_classes=10.'),
    ({'thresholds': {8: [1.], 16: [2.]}, 'num_classes': 3}, '1 thresholds define 2 classes, but num_classes=3.'),
    ({'max_batch_pixels': 0}, 'max_batch_pixels must be a positive integer or None, got 0.'),
    ({'max_batch_pixels': 1.5}, 'max_batch_pixels must be a positive integer or None, got 1.5.'),
])
def test_bad_options_are_refused_with_their_message(options, message):
    with pytest.raises(ValueError, match=exact(message)):
        DynamicInferenceEngine(tiny_net(), **options)


def test_only_a_supernet_is_accepted():
    with pytest.raises(TypeError, match=exact(f'net must be a WBSR supernet (one of {supernet_types()}), got Conv2d.')):
        DynamicInferenceEngine(torch.nn.Conv2d(3, 3, 3))


def test_the_smallest_allowed_options_run():
    """Protects the lower bounds: patches of 2, overlap 0, trim 0, one LR pixel per call, one class."""
    net = tiny_net()
    engine = DynamicInferenceEngine(net, patch_size=2, overlap=1, trim=0, max_batch_pixels=1, num_classes=1,
                                    whole_image_fallback=False)
    assert engine.subnets.batch_size(0, 2, next(net.parameters())) == 1
    _, report = engine.run(torch.rand(1, 3, 3, 2))
    assert report.plan.patch_size == 2 and report.plan.tops == [0, 1] and report.plan.lefts == [0]
    assert report.num_patches == 2 and report.sr_size == (12, 8)
    # without overlap (trim 0), patches are side by side: the output is the subnet on each quadrant, put together
    lq = torch.rand(1, 3, 16, 16)
    engine = DynamicInferenceEngine(net, patch_size=8, overlap=0, subnet=-1, whole_image_fallback=False)
    sr, report = engine.run(lq)
    assert report.plan.tops == [0, 8] and report.plan.lefts == [0, 8] and report.plan.trim == 0
    with torch.no_grad():
        rows = [torch.cat([net(lq[..., t:t + 8, l:l + 8]) for l in (0, 8)], dim=-1) for t in (0, 8)]
    torch.testing.assert_close(sr, torch.cat(rows, dim=-2), rtol=0, atol=1e-5)


@pytest.mark.parametrize('table, message', [
    ({}, 'a threshold table needs at least one patch size.'),
    ({16: [1.], 24: [1., 2.]}, 'every patch size of a threshold table needs the same number of thresholds.'),
    ({16: [2., 1.]}, 'thresholds must be non-decreasing, got [2.0, 1.0].'),
] + [({key: [1.]}, f'threshold table keys must be patch sides >= 2, got {key!r}.')
     for key in (True, 1, 0, -4, '1', '-4', 'x', '16a', 16.0, np.int64(16))])
def test_threshold_tables_are_checked(table, message):
    """Protects the table checks: keys are patch sides >= 2 given as int or digit strings (bools, other types,
    signs, sides below 2 refused), every side holds as many thresholds."""
    with pytest.raises(ValueError, match=exact(message)):
        check_threshold_table(table)


def test_threshold_tables_come_back_sorted_with_int_keys():
    checked = check_threshold_table({'16': [1, 2], 2: [0.5, 1], 8: [1, 1]})
    assert checked == {2: [0.5, 1.0], 8: [1.0, 1.0], 16: [1.0, 2.0]} and list(checked) == [2, 8, 16]
    assert all(type(key) is int for key in checked) and all(type(t) is float for t in checked[16])


# -- plans --------------------------------------------------------------------------------------------------------


def test_plan_takes_one_image():
    engine = DynamicInferenceEngine(tiny_net())
    for shape in ((2, 3, 8, 8), (3, 8, 8), (1, 1, 3, 8, 8)):
        for method in (engine.plan, engine.run):
            with pytest.raises(ValueError, match=exact(f'expected an LR tensor of shape (1, c, h, w), got {shape}.')):
                method(torch.rand(*shape))


def test_threshold_sources():
    """Protects the plan's record of where its thresholds came from, and the per-image quantiles
    ``t_k = sorted(d)[floor(k N / K)]`` (a list of floats) when none are given."""
    net, lq = tiny_net(), torch.rand(1, 3, 40, 40)
    plan = DynamicInferenceEngine(net, patch_size=16, subnet=0).plan(lq)
    assert (plan.threshold_source, plan.thresholds, plan.classes, plan.alpha) == ('none', None, None, None)
    plan = DynamicInferenceEngine(net, patch_size=16, thresholds=[5, 50, 500]).plan(lq)
    assert (plan.threshold_source, plan.thresholds) == ('model', [5., 50., 500.])
    plan = DynamicInferenceEngine(net, patch_size=16, num_classes=4).plan(lq)
    assert plan.threshold_source == 'image-quantiles' and plan.difficulty.shape == (3, 3)
    ordered = np.sort(plan.difficulty.numpy().ravel())
    assert type(plan.thresholds) is list and plan.thresholds == [ordered[2], ordered[4], ordered[6]]  # 9k/4
    assert plan.classes.flatten().tolist() == (np.searchsorted(ordered[[2, 4, 6]], plan.difficulty.numpy().ravel(),
                                                               side='right') + 1).tolist()


def test_budget_plan_and_report_by_hand():
    """Protects the budget's plan and its report on the striped image: classes, subnets, alpha (with an empty top
    class counted in K), histogram, FLOPs and the report's fields."""
    net, lq = tiny_net(), striped_image()
    c = [counted_flops(net, 16, 16, m) for m in range(4)]
    full = counted_flops(net, 28, 28, 3)
    # K = 3, class 3 empty. Class k leaves subnet j at alpha (C_j + C_j+1) / 2 * K / (k C_3): class 3 at 0.263
    # and 0.611, class 2 at 0.394, class 1 at 0.788. 54 MFLOPs pay for class 2's step (4 C_0 + 2 (C_1 - C_0)
    # = 53.5 M) but not class 1's (1.2 M more): the last step taken is class 3's second, free.
    assert 4 * c[0] + 2 * (c[1] - c[0]) <= 54e6 < 4 * c[0] + 4 * (c[1] - c[0])
    engine = DynamicInferenceEngine(net, patch_size=16, thresholds=[1., 1e9], budget=54e6 / full)
    start = time.perf_counter()
    sr, report = engine.run(lq)
    wall = time.perf_counter() - start
    plan = report.plan
    assert (plan.tops, plan.lefts, plan.threshold_source, plan.thresholds) == ([0, 12], [0, 12], 'model', [1., 1e9])
    assert plan.classes.tolist() == [[1, 1], [2, 2]] and plan.subnets.tolist() == [[0, 0], [1, 1]]
    assert plan.alpha == pytest.approx((c[1] + c[2]) / (2 * c[3]))
    assert plan.histogram == report.histogram == [2, 2, 0, 0] and plan.whole_image_subnet is None
    assert plan.tiled_flops == report.flops == 2 * c[0] + 2 * c[1]
    assert (report.lq_size, report.sr_size, sr.shape, report.num_patches) == ((28, 28), (112, 112), (1, 3, 112, 112),
                                                                              4)
    assert report.full_flops == full and report.flops_ratio == report.flops / full and not report.whole_image
    assert 0 <= report.time_s <= wall
    assert report.summary().startswith('28x28 -> 112x112 | 4 patches [w8d1:2 w8d2:2] | 0.1 GFLOPs (')


def test_eq16_target_with_alpha():
    """Protects the engine's Eq. 16 table: class k aims at alpha k C_t / K (C_t in GFLOPs per 32 x 32 patch)."""
    net = tiny_net()
    per_reference_patch = [counted_flops(net, 32, 32, m) / 1e9 for m in range(4)]  # 0.052, 0.055, 0.194, 0.204
    # alpha 0.5, C_t = the full subnet's cost, K = 2: class 1 aims at C_3 / 4 = 0.051 (subnet 0), class 2 at
    # C_3 / 2 = 0.102 (subnet 1: 0.047 away, subnet 2: 0.092 away). Eq. 15 (or alpha 1) would give 1 and 3.
    engine = DynamicInferenceEngine(net, patch_size=16, thresholds=[1.], target_gflops=per_reference_patch[3],
                                    alpha=0.5)
    _, report = engine.run(striped_image())
    assert report.plan.subnets.tolist() == [[0, 0], [1, 1]] and not report.whole_image


# -- the whole-image rules ----------------------------------------------------------------------------------------


def test_a_tiling_that_costs_exactly_the_full_network_is_kept():
    """Protects "more FLOPs than the full network": one patch covering the image costs exactly as much."""
    _, report = DynamicInferenceEngine(tiny_net(), patch_size=16, subnet=-1).run(torch.rand(1, 3, 16, 16))
    assert not report.whole_image and report.num_patches == 1 and report.flops == report.full_flops


def test_whole_image_through_the_best_subnet_that_fits():
    """Protects the fallback's choice: the most expensive subnet whose whole-image FLOPs fit (the full network
    fits a budget of 1 exactly), or the subnet asked for; the output is that subnet on the whole image."""
    net = tiny_net(widths=(12, 16))  # w12d1 costs 55 % of the full network
    lq = torch.rand(1, 3, 20, 20)
    c0, full = counted_flops(net, 4, 4, 0), counted_flops(net, 20, 20, 3)
    # 81 patches of 4 x 4 (stride 2) at the cheapest subnet cost 1.78 times the full network: nothing tiles
    assert 81 * c0 > full
    with torch.no_grad():
        whole = [net(lq, subnet=m) for m in range(4)]
    for options, subnet in (({'budget': 1.0}, 3), ({'subnet': 0}, 0)):
        sr, report = DynamicInferenceEngine(net, patch_size=4, overlap=2, **options).run(lq)
        assert report.whole_image and report.plan.whole_image_subnet == subnet
        assert report.histogram == [int(m == subnet) for m in range(4)] and report.num_patches == 1
        assert report.flops == counted_flops(net, 20, 20, subnet)
        torch.testing.assert_close(sr, whole[subnet], rtol=0, atol=1e-5)
    tiled_percent = 100 * 81 * c0 / full
    assert report.summary().split(' | ')[1] == f'whole image through w12d1 (tiled plan: {tiled_percent:.1f}% of full)'


def test_calibrated_budget_runs_the_whole_image_when_that_is_expected_to_do_better():
    """Protects the comparison of expected errors: with a budget of 1 the full network fits the whole image exactly
    and errs least (4 x 0.1); no tiling of the striped image can give all four patches the full subnet."""
    net, lq = tiny_net(), striped_image()
    assert 4 * counted_flops(net, 16, 16, 3) > counted_flops(net, 28, 28, 3)
    engine = DynamicInferenceEngine(net, patch_size=16, budget=1.0, class_errors=[[1.0, 0.9, 0.8, 0.1]] * 10)
    sr, report = engine.run(lq)
    assert report.whole_image and report.plan.whole_image_subnet == 3 and report.flops == report.full_flops
    with torch.no_grad():
        torch.testing.assert_close(sr, net(lq), rtol=0, atol=1e-5)


def test_calibrated_budget_keeps_a_tiling_that_is_expected_to_do_better():
    """Protects the tiled plan's expected error, counted per patch after partial moves (K = 1)."""
    net, lq = tiny_net(), striped_image()
    c = [counted_flops(net, 16, 16, m) for m in range(4)]
    full = counted_flops(net, 28, 28, 3)
    # budget 0.6 of 156 M = 93.6 M; the cheapest plan costs 52.3 M. Saving per FLOP: subnet 1 0.005 / 0.59 M,
    # subnet 2 0.5 / 35.5 M (the best), subnet 3 0.5 / 37.9 M: the rest (41.3 M) moves one patch, the hardest, to
    # subnet 2. Expected error 3 x 1.0 + 0.5 = 3.5; the whole image fits subnets 0 and 1 only (40 M, 42 M): 4.0
    # and 3.98. So the tiling stays.
    errors = [[1.0, 0.995, 0.5, 0.5]]
    engine = DynamicInferenceEngine(net, patch_size=16, num_classes=1, budget=0.6, class_errors=errors)
    _, report = engine.run(lq)
    plan = report.plan
    assert plan.difficulty[1, 1] > plan.difficulty[1, 0] > plan.difficulty[0].max()
    assert not report.whole_image and plan.classes.tolist() == [[1, 1], [1, 1]]
    assert plan.subnets.tolist() == [[0, 0], [0, 2]] and plan.histogram == [3, 0, 1, 0]
    assert report.flops == 3 * c[0] + c[2] <= 0.6 * full
    assert plan.alpha == pytest.approx(0.5 / (c[2] - c[0]))


# -- run ----------------------------------------------------------------------------------------------------------


def test_one_engine_serves_images_of_different_sizes():
    net = tiny_net()
    engine = DynamicInferenceEngine(net, patch_size=16, whole_image_fallback=False)
    for size in ((28, 40), (40, 28), (28, 40)):
        lq = torch.rand(1, 3, *size)
        sr, _ = engine.run(lq)
        fresh, _ = DynamicInferenceEngine(net, patch_size=16, whole_image_fallback=False).run(lq)
        assert torch.equal(sr, fresh)


def test_calling_the_engine_returns_the_image():
    engine = DynamicInferenceEngine(tiny_net(), patch_size=16)
    lq = torch.rand(1, 3, 20, 30)
    assert torch.equal(engine(lq), engine.run(lq)[0])


def test_a_float64_supernet_runs_in_float64():
    """Protects the dtype handling: patches and whole images follow the weights' dtype; the output is float32."""
    net = tiny_net().double()
    lq = torch.rand(1, 3, 30, 37)
    with torch.no_grad():
        whole = net(lq.double())
    margin = 8  # LR pixels an output pixel of the tiny x4 net depends on, on each side
    for options in ({}, {'patch_size': 32, 'overlap': 2 * margin + 1, 'trim': margin, 'whole_image_fallback': False}):
        sr, report = DynamicInferenceEngine(net, subnet=-1, **options).run(lq)
        assert sr.dtype == torch.float32 and report.whole_image == (not options)
        torch.testing.assert_close(sr.double(), whole, rtol=0, atol=1e-6)


def test_plans_and_batches_are_made_on_the_input_device():
    """Protects "the plan stays on the input's device": nothing of the plan, the patches or the output buffer is
    made on torch's default device (here 'meta', standing in for a GPU input while the default is elsewhere)."""
    net = tiny_net()
    lq, thin = torch.rand(1, 3, 20, 30), torch.rand(1, 3, 1, 5)
    for options in ({'subnet': 1}, {}, {'budget': 0.5}, {'budget': 0.5, 'class_errors': [[1, .5, .4, .3]] * 10}):
        engine = DynamicInferenceEngine(net, patch_size=8, overlap=2, whole_image_fallback=False, **options)
        expected = engine.plan(lq)
        for m in range(4):
            engine.subnets.module(m)  # extracted here: extraction builds modules on the default device
        with torch.device('meta'):
            plan, plan_thin = engine.plan(lq), engine.plan(thin)
            picked = extract_patches(lq, plan.patch_size, plan.tops, plan.lefts)
            batches, outputs = engine.patch_batches(lq, plan)
        tensors = [plan.difficulty, plan.subnets, plan_thin.difficulty, plan_thin.subnets, picked, outputs]
        tensors += [plan.classes] * (plan.classes is not None) + [batch for _, _, batch in batches]
        assert all(t.device == CPU for t in tensors)
        assert torch.equal(plan.subnets, expected.subnets) and torch.equal(plan.difficulty, expected.difficulty)


def test_subnets_are_cached_until_the_weights_change():
    """Protects the subnet cache: kept while the weights stay, rebuilt after an in-place update, a replaced
    parameter or refresh()."""
    net, lq = tiny_net(), torch.rand(1, 3, 20, 20)
    engine = DynamicInferenceEngine(net, patch_size=16, subnet=0)  # 4 patches cost more: the whole image, subnet 0
    first, _ = engine.run(lq)
    module = engine.subnets.module(0)
    engine.run(lq)
    assert engine.subnets.module(0) is module
    with torch.no_grad():
        net.conv_last.bias.add_(0.25)  # in place, as an optimizer step
    second, _ = engine.run(lq)
    assert engine.subnets.module(0) is not module
    engine.run(lq)  # the parameters' fingerprint is taken again after the change
    module = engine.subnets.module(0)
    net.conv_last.bias = torch.nn.Parameter(net.conv_last.bias.detach() + 0.5)  # a new tensor, not an update
    third, _ = engine.run(lq)
    assert engine.subnets.module(0) is not module
    torch.testing.assert_close(third - second, torch.full_like(third, 0.5), rtol=0, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(third, net(lq, subnet=0), rtol=0, atol=1e-5)
    torch.testing.assert_close(second - first, torch.full_like(first, 0.25), rtol=0, atol=1e-5)
    module = engine.subnets.module(0)
    engine.refresh()
    assert engine.subnets.module(0) is not module


def test_engine_that_does_not_watch_the_weights_keeps_its_subnets_until_refresh():
    """Protects watch_weights=False (the command-line tools): no check per image, the subnets stay as made until
    refresh()."""
    net, lq = tiny_net(), torch.rand(1, 3, 20, 20)
    engine = DynamicInferenceEngine(net, patch_size=16, subnet=0, watch_weights=False)
    first, _ = engine.run(lq)
    with torch.no_grad():
        net.conv_last.bias.add_(0.25)
    torch.testing.assert_close(engine.run(lq)[0], first, rtol=0, atol=0)
    engine.refresh()
    torch.testing.assert_close(engine.run(lq)[0] - first, torch.full_like(first, 0.25), rtol=0, atol=1e-5)


@pytest.mark.parametrize('channels_last', [True, False, None])
def test_cached_subnets_are_frozen_copies_in_the_memory_format_asked_for(channels_last):
    """Protects the extracted subnets: no gradients, extracted outside inference mode although run() asks for them
    inside it, channels-last by default. (The channels-last copies of the conv weights are made after extraction,
    inside run()'s inference mode, so they are inference tensors; that is left unchecked here.)"""
    options = {} if channels_last is None else {'channels_last': channels_last}
    engine = DynamicInferenceEngine(tiny_net(), patch_size=16, subnet=1, **options)
    engine.run(torch.rand(1, 3, 20, 20))
    weights = [p for p in engine.subnets.module(1).parameters()]
    assert not any(p.requires_grad for p in weights)
    assert not any(p.is_inference() for p in weights if p.dim() == 1 or channels_last is False)
    convs = [p for p in weights if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) != (channels_last is False)
                         for p in convs)
    assert all(p.is_contiguous() == (channels_last is False) for p in convs)


def test_blend_geometries_are_cached_up_to_32_tilings():
    engine = DynamicInferenceEngine(tiny_net(), patch_size=8, overlap=2)
    plans = [engine.plan(torch.rand(1, 3, 8, 9 + i)) for i in range(33)]
    geometries = [engine.blend_geometry(plan, CPU) for plan in plans[:32]]
    assert len({id(g) for g in geometries}) == 32
    assert all(engine.blend_geometry(plan, CPU) is g for plan, g in zip(plans, geometries))
    assert engine.blend_geometry(plans[32], CPU).lq_size == (8, 41)
    rebuilt = engine.blend_geometry(plans[0], CPU)  # the 33rd tiling emptied the cache
    assert rebuilt is not geometries[0] and torch.equal(rebuilt.col_weights, geometries[0].col_weights)


# -- batches ------------------------------------------------------------------------------------------------------


def test_batch_sizes_on_cpu():
    """Protects the CPU batch sizes: max_batch_pixels (or 32768) LR pixels per call, at least one patch."""
    net = tiny_net()
    param = next(net.parameters())
    default = DynamicInferenceEngine(net)
    assert [default.subnets.batch_size(0, p, param) for p in (16, 64, 181, 182, 200)] == [128, 8, 1, 1, 1]
    explicit = DynamicInferenceEngine(net, max_batch_pixels=1000)
    assert [explicit.subnets.batch_size(3, p, param) for p in (8, 16, 31, 32)] == [15, 3, 1, 1]


def test_cuda_batch_size_follows_the_available_memory(monkeypatch):
    """Protects the CUDA batch sizing of docs/inference.md: as many patches as fit in half of the available memory
    (the driver's free memory and the allocator's unused cache) at 6 x width x (patch x scale)^2 x element size each
    (width at least the 3 output channels), at most 4 GiB, rounded down to a bucket, sized once per subnet, patch
    side and dtype. No GPU here: a stand-in fp16 parameter on 'cuda:1', and torch's memory queries answered per
    device."""
    free = {1: 8 * 2**20}
    monkeypatch.setattr(torch.cuda, 'mem_get_info', lambda device: (free[torch.device(device).index], 2**36))
    monkeypatch.setattr(torch.cuda, 'memory_reserved', lambda device: 3 * 2**20)
    monkeypatch.setattr(torch.cuda, 'memory_allocated', lambda device: 2**20)
    param = types.SimpleNamespace(device=torch.device('cuda', 1), dtype=torch.float16, element_size=lambda: 2)
    engine = DynamicInferenceEngine(tiny_net(widths=(2, 16)))  # subnets w2d1, w2d2, w16d1, w16d2; x4
    # available: 8 + 3 - 1 = 10 MiB, half = 5242880 bytes; per patch of 16 (64 x 64 SR pixels): 6 x 3 x 4096 x 2 =
    # 147456 for width 2 (3 output channels), 6 x 16 x 4096 x 2 = 786432 for width 16; patches of 8: a quarter.
    # Buckets: every size to 16, then steps of 2 to 32, of 4 to 64
    assert engine.subnets.batch_size(0, 16, param) == 32  # 5242880 // 147456 = 35
    assert engine.subnets.batch_size(2, 16, param) == 6  # 5242880 // 786432 = 6
    assert engine.subnets.batch_size(2, 8, param) == 26  # 5242880 // 196608 = 26
    free[1] = 0  # later calls keep the sizes found (CUDA graphs need fixed shapes); new ones see 1 MiB
    assert [engine.subnets.batch_size(i, 16, param) for i in (0, 2)] == [32, 6]
    assert engine.subnets.batch_size(3, 16, param) == 1  # 1048576 // 786432 = 1
    free[1] = 2**40  # a terabyte free: at most 4 GiB per call, 4294967296 // 147456 = 29127 -> 28672 (steps of 2048)
    assert DynamicInferenceEngine(tiny_net(widths=(2, 16))).subnets.batch_size(0, 16, param) == 28672


def test_patch_batches_cover_every_patch_once_in_calls_of_at_most_the_batch_size():
    net = tiny_net()
    engine = DynamicInferenceEngine(net, patch_size=8, overlap=2, thresholds=[20, 40, 60], max_batch_pixels=3 * 64,
                                    whole_image_fallback=False)
    lq = torch.rand(1, 3, 40, 28)
    lq[..., :20, :] *= 0.1
    plan = engine.plan(lq)
    batches, outputs = engine.patch_batches(lq, plan)
    subnets = plan.subnets.flatten()
    assert outputs.shape == (subnets.numel(), 3, 32, 32)
    used = [m for m in range(4) if (subnets == m).any()]
    assert len(used) > 1
    for m in used:
        mine = [(ids, batch) for runner, ids, batch in batches if runner is engine.subnets.module(m)]
        count = int((subnets == m).sum())
        assert len(mine) == -(-count // 3) and all(len(ids) <= 3 for ids, _ in mine)
        assert sorted(torch.cat([ids for ids, _ in mine]).tolist()) == (subnets == m).nonzero().flatten().tolist()
        for ids, batch in mine:
            assert batch.is_contiguous(memory_format=torch.channels_last)
            for i, patch in zip(ids.tolist(), batch):
                top, left = plan.tops[i // len(plan.lefts)], plan.lefts[i % len(plan.lefts)]
                assert torch.equal(patch, lq[0, :, top:top + 8, left:left + 8])


def test_extract_patches_in_grid_order():
    engine = DynamicInferenceEngine(tiny_net(), patch_size=8, overlap=2)
    lq = torch.rand(1, 3, 40, 28)
    plan = engine.plan(lq)
    rows, cols = len(plan.tops), len(plan.lefts)
    assert rows != cols
    patches = extract_patches(lq, plan.patch_size, plan.tops, plan.lefts)
    assert patches.shape == (rows * cols, 3, 8, 8)
    for i, patch in enumerate(patches):
        top, left = plan.tops[i // cols], plan.lefts[i % cols]
        assert torch.equal(patch, lq[0, :, top:top + 8, left:left + 8])


# -- the report ---------------------------------------------------------------------------------------------------


def hand_plan(whole_image_subnet, tiled_flops):
    return InferencePlan((10, 20), 10, [0], [0, 10], torch.zeros(1, 2), None, torch.zeros(1, 2, dtype=torch.long),
                         None, 'none', 1, tiled_flops=tiled_flops, whole_image_subnet=whole_image_subnet)


def test_report_summary_and_properties_by_hand():
    names = ['w8d1', 'w8d2', 'w16d1', 'w16d2']
    tiled = InferenceReport((10, 20), (40, 80), 3, [2, 0, 1, 0], 3_000_000_000, 4_000_000_000, 0.5,
                            hand_plan(None, 3_000_000_000), names)
    assert (tiled.gflops, tiled.flops_ratio, tiled.whole_image) == (3.0, 0.75, False)
    assert tiled.summary() == '20x10 -> 80x40 | 3 patches [w8d1:2 w16d1:1] | 3.0 GFLOPs (75.0% of full) | 0.50 s'
    whole = InferenceReport((10, 20), (40, 80), 1, [0, 0, 0, 1], 4_000_000_000, 4_000_000_000, 1.234,
                            hand_plan(3, 4_720_000_000), names)
    assert whole.whole_image and whole.flops_ratio == 1.0
    assert whole.summary() == ('20x10 -> 80x40 | whole image through w16d2 (tiled plan: 118.0% of full) | '
                               '4.0 GFLOPs (100.0% of full) | 1.23 s')


def test_cached_subnets_hold_ordinary_tensors_after_a_run():
    """Protects the cache made inside run()'s inference mode: the subnets stay usable with autograd."""
    net = WBSRResNet(num_feat=16, num_block=2, upscale=4, widths=[8, 16], depths=[1, 2]).eval()
    engine = DynamicInferenceEngine(net, patch_size=16, subnet=1)
    engine.run(torch.rand(1, 3, 20, 20))
    assert not any(p.is_inference() for p in engine.subnets.module(1).parameters())
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    engine.subnets.module(1)(x).sum().backward()
    assert x.grad is not None
