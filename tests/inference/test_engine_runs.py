"""The engine on real-sized runs: exact output sizes, tiled against whole, batching, budgets, FLOPs, fallbacks."""
import os
from os import path as osp

import cv2
import numpy as np
import pytest
import torch
from conftest import FIXTURES, REPO_ROOT, strong_tiny_resnet
from torch.utils.flop_counter import FlopCounterMode

import wbsr_plugin  # noqa: F401
from wbsr_plugin.archs.wbsr_rcan_arch import WBSRRCAN
from wbsr_plugin.data.difficulty import quantile_thresholds
from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_plugin.inference.projection import budget_subnets, class_to_subnet
from wbsr_runtime.class_thresholds import thresholds_at

LR_FIXTURES = osp.join(FIXTURES, 'lr_x4')


# LR pixels an output pixel of the tiny x4 net depends on, on each side (6 LR convs, one at x2, two
# at x4, and the bilinear skip): 6 + 0.5 + 0.5 + 1 = 8.
TINY_RECEPTIVE_MARGIN = 8


@pytest.mark.parametrize('size, scale', [((1, 1), 4), ((2, 3), 3), ((5, 7), 2), ((24, 24), 4), ((31, 33), 3),
                                         ((37, 81), 4), ((65, 17), 2)])
def test_output_size_is_exact(size, scale):
    net = strong_tiny_resnet(scale)
    for budget in (None, 0.5):
        engine = DynamicInferenceEngine(net, patch_size=16, overlap=4, budget=budget)
        sr, report = engine.run(torch.rand(1, 3, *size))
        assert sr.shape == (1, 3, size[0] * scale, size[1] * scale)
        assert report.sr_size == (size[0] * scale, size[1] * scale)
        assert torch.isfinite(sr).all()


def test_full_subnet_tiled_equals_whole_image():
    net = strong_tiny_resnet()
    lq = torch.rand(1, 3, 70, 90)
    with torch.no_grad():
        whole = net(lq)
    margin = TINY_RECEPTIVE_MARGIN
    engine = DynamicInferenceEngine(net, patch_size=32, overlap=2 * margin + 1, trim=margin, subnet=-1,
                                    whole_image_fallback=False)
    sr, report = engine.run(lq)
    assert report.num_patches > 4
    assert torch.allclose(sr, whole, atol=2e-6)
    # With the default (small) overlap, seams stay small but are not exact: 0.0061 here, where averaging the
    # overlapping patches gives 0.0124 and letting the last patch win 0.0147
    sr_default, _ = DynamicInferenceEngine(net, patch_size=32, subnet=-1, whole_image_fallback=False).run(lq)
    assert (sr_default - whole).abs().mean() < 0.008


def test_rcan_runs_tiled():
    net = WBSRRCAN(num_feat=16, num_group=2, num_block=2, widths=[16], depths=[1, 2], upscale=2).eval()
    engine = DynamicInferenceEngine(net, patch_size=8, overlap=2, whole_image_fallback=False)
    lq = torch.rand(1, 3, 13, 19)
    sr, report = engine.run(lq)
    assert sr.shape == (1, 3, 26, 38)
    # the FLOPs reported are those torch counts when every patch runs through its subnet
    plan, p = report.plan, report.plan.patch_size
    with FlopCounterMode(display=False) as counter:
        for i, top in enumerate(plan.tops):
            for j, left in enumerate(plan.lefts):
                net(lq[:, :, top:top + p, left:left + p], subnet=int(plan.subnets[i, j]))
    assert report.flops == counter.get_total_flops()


def test_batched_equals_naive_per_patch_loop():
    net = strong_tiny_resnet()
    lq = torch.rand(1, 3, 53, 61)
    engine = DynamicInferenceEngine(net, patch_size=16, overlap=4, max_batch_pixels=16 * 16 * 3,
                                    whole_image_fallback=False)
    sr, report = engine.run(lq)
    plan = report.plan
    assert len([n for n in report.histogram if n]) > 1
    outputs = []
    with torch.no_grad():
        for i, top in enumerate(plan.tops):
            for j, left in enumerate(plan.lefts):
                patch = lq[:, :, top:top + plan.patch_size, left:left + plan.patch_size]
                module = net.extract_subnet(int(plan.subnets[i, j]))
                outputs.append(module(patch))
    naive = engine.stitch(torch.cat(outputs), plan)
    # Same patches, subnets, weights and blending; only the batch size of the convolutions differs.
    assert torch.allclose(sr, naive, rtol=0, atol=1e-6)
    # The supernet's sliced forward gives the same numbers up to float rounding.
    with torch.no_grad():
        sliced = torch.cat([
            net(lq[:, :, t:t + plan.patch_size, l:l + plan.patch_size], subnet=int(plan.subnets[i, j]))
            for i, t in enumerate(plan.tops) for j, l in enumerate(plan.lefts)
        ])
    assert torch.allclose(engine.stitch(sliced, plan), sr, atol=1e-5)


@pytest.mark.parametrize('budget', [0.3, 0.45, 0.6, 0.8, 1.0])
def test_budget_is_met(budget):
    net = strong_tiny_resnet()
    lq = torch.rand(1, 3, 96, 128)
    lq[..., :48, :] *= 0.05  # a flat half and a textured half
    engine = DynamicInferenceEngine(net, patch_size=16, overlap=2, budget=budget)
    _, report = engine.run(lq)
    costs = [net.flops(16, 16, subnet=s) for s in net.subnets]
    step = max(b - a for a, b in zip(costs, costs[1:]))
    plan = report.plan
    tiled_patches = sum(plan.histogram)
    cheapest = tiled_patches * costs[0]
    allowed = budget * report.full_flops
    assert report.flops <= report.full_flops
    if cheapest > allowed:
        # Tiling cannot meet the budget: the whole image runs through the best subnet that fits.
        assert report.whole_image and plan.tiled_flops > allowed
        whole_costs = [net.flops(96, 128, subnet=s) for s in net.subnets]
        fitting = [i for i, c in enumerate(whole_costs) if c <= allowed]
        assert plan.whole_image_subnet == (fitting[-1] if fitting else 0)
        assert report.flops == whole_costs[plan.whole_image_subnet]
    else:
        # Met from below, within one patch's upgrade step (or everything is already the full subnet).
        assert not report.whole_image
        assert report.flops <= allowed
        assert report.flops > allowed - step or report.histogram[-1] == report.num_patches
    # Harder patches never get a cheaper subnet than easier patches of the same class.
    plan = report.plan
    for k in plan.classes.unique():
        members = plan.classes == k
        d, s = plan.difficulty[members], plan.subnets[members]
        order = d.argsort()
        assert (s[order].diff() >= 0).all()


def test_budget_projection_is_monotone_in_budget():
    classes = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10] * 3)
    difficulty = torch.arange(30, dtype=torch.float64)
    costs = [1., 2., 3., 5., 8.]
    spent = []
    for fraction in np.linspace(0.15, 1, 18):  # 0.125 is the all-cheapest cost
        subnets, _ = budget_subnets(classes, difficulty, costs, fraction * 8 * 30, 10)
        spent.append(sum(costs[int(s)] for s in subnets))
        assert spent[-1] <= fraction * 8 * 30 + 1e-9
    assert spent == sorted(spent)


def test_eq15_and_quantiles():
    classes = torch.arange(1, 11)
    assert class_to_subnet(classes, 10, 9).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 8]
    assert quantile_thresholds(torch.arange(100.), 10) == [10., 20., 30., 40., 50., 60., 70., 80., 90.]


def test_flops_reported_equal_analytic_counts():
    net = strong_tiny_resnet()
    lq = torch.rand(1, 3, 45, 50)
    engine = DynamicInferenceEngine(net, patch_size=16, overlap=4, thresholds=[5, 10, 20, 30, 40, 50, 60, 70, 80],
                                    whole_image_fallback=False)
    _, report = engine.run(lq)
    plan = report.plan
    expected = sum(net.flops(16, 16, subnet=int(s)) for s in plan.subnets.flatten())
    assert report.flops == expected
    assert report.full_flops == net.flops(45, 50)
    assert sum(report.histogram) == report.num_patches == len(plan.tops) * len(plan.lefts)
    # Overlap is paid for: the tiled full subnet costs more than the whole image.
    _, full = DynamicInferenceEngine(net, patch_size=16, overlap=4, subnet=-1, whole_image_fallback=False).run(lq)
    assert full.flops_ratio > 1


def test_refresh_after_weight_change():
    net = strong_tiny_resnet()
    lq = torch.rand(1, 3, 20, 20)
    engine = DynamicInferenceEngine(net, patch_size=16, subnet=-1)
    first, _ = engine.run(lq)
    with torch.no_grad():
        net.conv_last.bias.add_(0.5)  # an in-place update, as an optimizer step does
    second, _ = engine.run(lq)
    assert torch.allclose(second - first, torch.full_like(first, 0.5), atol=1e-5)


def test_engine_rejects_bad_options():
    net = strong_tiny_resnet()
    for budget in (0, -0.1, 1.01, float('nan')):
        with pytest.raises(ValueError, match='budget'):
            DynamicInferenceEngine(net, budget=budget)
    with pytest.raises(ValueError, match='at most one'):
        DynamicInferenceEngine(net, budget=0.5, subnet=0)
    with pytest.raises(ValueError, match='thresholds'):
        DynamicInferenceEngine(net, thresholds=[1., 2.], num_classes=10)
    assert DynamicInferenceEngine(net, thresholds=[1., 2.]).num_classes == 3
    with pytest.raises(ValueError, match='num_classes'):
        DynamicInferenceEngine(net, num_classes=0)
    with pytest.raises(ValueError, match='non-decreasing'):
        DynamicInferenceEngine(net, thresholds=[3., 2., 1., 4, 5, 6, 7, 8, 9])
    with pytest.raises(ValueError, match='overlap'):
        DynamicInferenceEngine(net, patch_size=16, overlap=16)
    with pytest.raises(TypeError):
        DynamicInferenceEngine(torch.nn.Conv2d(3, 3, 3))


THRESHOLDS_ALL_HARD = [-3., -2.5, -2., -1.5, -1., -0.5, -0.2, -0.1, -0.05]  # every patch in class 10


@pytest.mark.parametrize('size', [(5, 7), (24, 24), (37, 81), (70, 90), (97, 130)])
def test_never_more_than_the_full_network(size):
    net = strong_tiny_resnet()
    lq = torch.rand(1, 3, *size)
    lq[..., :size[0] // 2, :] *= 0.05
    with torch.no_grad():
        whole = net(lq)
    modes = [{}, {'thresholds': THRESHOLDS_ALL_HARD}, {'target_gflops': 1e3}, {'subnet': -1}, {'subnet': 0},
             {'budget': 0.25}, {'budget': 0.6}, {'budget': 1.0}]
    for mode in modes:
        engine = DynamicInferenceEngine(net, patch_size=16, overlap=4, **mode)
        sr, report = engine.run(lq)
        assert sr.shape == whole.shape
        assert report.flops <= report.full_flops, (mode, report.summary())
        plan = report.plan
        allowed = report.full_flops * mode.get('budget', 1.)
        assert report.whole_image == (plan.tiled_flops > allowed)
        if report.whole_image:
            assert 'whole image through' in report.summary()
            assert report.histogram[plan.whole_image_subnet] == report.num_patches == 1
            whole_costs = [net.flops(*size, subnet=s) for s in net.subnets]
            assert report.flops == whole_costs[plan.whole_image_subnet]
            if 'budget' in mode:
                assert report.flops <= allowed or plan.whole_image_subnet == 0
            elif 'subnet' in mode:
                assert plan.whole_image_subnet == engine.target.subnet
            else:
                assert plan.whole_image_subnet == len(net.subnets) - 1
                assert torch.allclose(sr, whole, atol=1e-5)
    # The tiled full subnet always costs more than the whole image, so it never runs tiled by default.
    _, report = DynamicInferenceEngine(net, patch_size=16, overlap=4, subnet=-1).run(lq)
    assert report.whole_image or report.plan.tiled_flops == report.full_flops


def test_threshold_table_interpolates_between_patch_sizes():
    from wbsr_plugin.data.difficulty import bgr_image_to_luma, threshold_table
    lumas = [bgr_image_to_luma(cv2.imread(osp.join(LR_FIXTURES, name)).astype(np.float32) / 255.)
             for name in sorted(os.listdir(LR_FIXTURES))]
    table = threshold_table(lumas, 4, patch_sizes=(4, 8, 16, 1000))
    assert sorted(table) == [4, 8, 16]  # 1000 exceeds the smallest image
    assert thresholds_at(table, 8) == table[8]
    assert thresholds_at(table, 2) == table[4] and thresholds_at(table, 64) == table[16]
    middle = thresholds_at(table, 11)
    assert all(min(a, b) <= m <= max(a, b) for a, b, m in zip(table[8], table[16], middle))
    net = strong_tiny_resnet()
    engine = DynamicInferenceEngine(net, thresholds=table, num_classes=4, patch_size=12, overlap=2)
    _, report = engine.run(torch.rand(1, 3, 40, 40))
    assert report.plan.threshold_source == 'model-by-patch-size'
    assert report.plan.thresholds == thresholds_at(table, report.plan.patch_size)
    with pytest.raises(ValueError, match='same number'):
        DynamicInferenceEngine(net, thresholds={8: [1., 2.], 16: [1.]}, num_classes=3)


def test_cuda_only_options_fall_back_on_cpu():
    net = strong_tiny_resnet()
    lq = torch.rand(1, 3, 45, 50)
    eager, _ = DynamicInferenceEngine(net, patch_size=16, budget=0.6).run(lq)
    engine = DynamicInferenceEngine(net, patch_size=16, budget=0.6, cuda_graphs=True)
    graphed, report = engine.run(lq)
    assert torch.equal(graphed, eager) and not engine.subnets.graphs
    assert engine.subnets.runner(0) is engine.subnets.module(0)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two CUDA devices')
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_cuda_graphs_of_a_network_on_a_device_that_is_not_the_current_one(dtype):
    """Graphs captured on the current device's stream would record nothing and replay the capture's output."""
    torch.cuda.set_device(0)
    net = strong_tiny_resnet().to('cuda:1', dtype)
    lq = torch.rand(1, 3, 45, 50)
    eager, _ = DynamicInferenceEngine(net, patch_size=16, budget=0.6).run(lq)
    engine = DynamicInferenceEngine(net, patch_size=16, budget=0.6, cuda_graphs=True)
    for _ in range(2):  # the second run replays
        graphed, _ = engine.run(lq)
        torch.testing.assert_close(graphed, eager, rtol=0, atol=1e-6 if dtype == torch.float32 else 2e-3)
    other, _ = engine.run(lq.flip(-1))  # new contents: a replay that only returned the capture would fail here
    expected, _ = DynamicInferenceEngine(net, patch_size=16, budget=0.6).run(lq.flip(-1))
    torch.testing.assert_close(other, expected, rtol=0, atol=1e-6 if dtype == torch.float32 else 2e-3)


def test_batch_size_falls_back_to_the_cpu_default():
    from wbsr_plugin.inference.subnet_cache import DEFAULT_MAX_BATCH_PIXELS
    engine = DynamicInferenceEngine(strong_tiny_resnet(), patch_size=16)
    param = next(engine.net.parameters())
    assert engine.subnets.batch_size(0, 16, param) == DEFAULT_MAX_BATCH_PIXELS // 256
    assert DynamicInferenceEngine(strong_tiny_resnet(), max_batch_pixels=512).subnets.batch_size(0, 16, param) == 2


@pytest.fixture
def one_thread():
    """Many small tensors: one thread is fastest, and robust to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SHARED_PHOTOS = osp.join(REPO_ROOT, '..', 'shared', 'data', 'train', 'sun_hays80')


@pytest.mark.skipif(not osp.isdir(SHARED_PHOTOS), reason='the shared training photos are not here')
def test_classes_are_balanced_at_the_engine_patch_size(one_thread):
    """Thresholds from training images fit held-out images tiled as the engine tiles them (10-fold)."""
    from wbsr_plugin.data.difficulty import (
        THRESHOLD_PATCH_SIZES,
        bgr_image_to_luma,
        grid_difficulty,
        patch_difficulty,
        quantile_thresholds,
    )
    from wbsr_plugin.inference.projection import classify
    from wbsr_runtime.tile_geometry import DEFAULT_OVERLAP, DEFAULT_PATCH_SIZE, tile_geometry
    lumas = []
    for name in sorted(os.listdir(SHARED_PHOTOS)):
        img = cv2.imread(osp.join(SHARED_PHOTOS, name), cv2.IMREAD_COLOR).astype(np.float32) / 255.
        lq = cv2.resize(img, (img.shape[1] // 4, img.shape[0] // 4), interpolation=cv2.INTER_AREA)
        lumas.append(bgr_image_to_luma(lq))
    smallest = min(min(y.shape) for y in lumas)
    sizes = [p for p in THRESHOLD_PATCH_SIZES if p <= smallest]
    scores = {p: [grid_difficulty(y, p) for y in lumas] for p in sizes}  # what threshold_table computes, once
    counts = np.zeros(10)
    for fold in range(10):
        table = {p: quantile_thresholds(torch.cat([s for i, s in enumerate(scores[p]) if i % 10 != fold]), 10)
                 for p in sizes}
        for luma in lumas[fold::10]:
            patch, tops, lefts, _ = tile_geometry(*luma.shape, DEFAULT_PATCH_SIZE, DEFAULT_OVERLAP, 1)
            classes = classify(patch_difficulty(luma, patch, tops, lefts), thresholds_at(table, patch))
            counts += np.bincount(classes.flatten().numpy(), minlength=11)[1:]
    shares = 100 * counts / counts.sum()
    assert np.abs(shares - 10).max() <= 3, shares


@pytest.mark.parametrize('thresholds', [None, THRESHOLDS_ALL_HARD, [1e9] * 9])
def test_an_image_that_is_one_patch_runs_its_subnet_on_the_image(thresholds):
    """No gathering or stitching when the only patch is the image: the output is the chosen subnet's own."""
    net = strong_tiny_resnet()
    lq = torch.rand(1, 3, 24, 24)
    engine = DynamicInferenceEngine(net, patch_size=24, thresholds=thresholds)
    engine.stitch = engine.run_patches = None  # neither may run
    sr, report = engine.run(lq)
    assert report.num_patches == 1
    chosen = report.histogram.index(1)
    with torch.no_grad():
        alone = net.extract_subnet(chosen).eval()(lq)
    assert torch.allclose(sr, alone, atol=1e-6)
    if thresholds is not None:
        assert chosen == (len(net.subnets) - 1 if thresholds == THRESHOLDS_ALL_HARD else 0)
