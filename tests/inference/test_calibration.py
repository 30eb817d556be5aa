"""Budgets spent by measured error: the class-error table, its allocation and its checkpoints."""
from os import path as osp

import numpy as np
import pytest
import torch
from conftest import fixture_dirs, read_train_log, run_module, train_options, write_yaml

from wbsr_plugin.cli.model_card import format_model_card
from wbsr_plugin.data.difficulty import patch_difficulty, rgb_to_luma
from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_plugin.inference.calibration import class_error_table, fill_empty_classes, patch_errors, sample_patch_pairs
from wbsr_plugin.inference.checkpoint import engine_options, load_supernet
from wbsr_plugin.inference.projection import apply_levels, classify
from wbsr_plugin.models.wbsr_options import calibration_patches, parse_wbsr_options
from wbsr_runtime.class_errors import ClassErrors
from wbsr_runtime.class_thresholds import ClassThresholds
from wbsr_runtime.levels import calibrated_levels

from basicsr.archs import build_network


def tiny_net():
    torch.manual_seed(0)
    return build_network({'type': 'WBSRResNet', 'num_feat': 8, 'num_block': 2, 'upscale': 2, 'widths': [4, 8],
                          'depths': [1, 2]}).eval()


def luma_error(diff):
    """Mean squared BT.601 luma of an (n, 3, h, w) RGB difference, pixel by pixel in numpy."""
    y = 0.299 * diff[:, 0] + 0.587 * diff[:, 1] + 0.114 * diff[:, 2]
    return (y.astype(np.float64) ** 2).mean((1, 2))


def spent(subnets, costs):
    return sum(costs[int(s)] for s in subnets.flatten())


def test_calibrated_levels_spend_the_budget_where_error_falls_most():
    costs = [1., 1.1, 4., 5.]
    # subnet 1 costs 10 % more than 0 and saves nothing; 3 is dominated by 2. Class 1 gains little from
    # bigger subnets, class 2 a lot.
    errors = [[1.0, 1.0, 0.9, 0.95], [4.0, 4.0, 2.0, 2.5]]
    classes = torch.tensor([1] * 4 + [2] * 4)
    difficulty = torch.arange(8, dtype=torch.float64)
    levels, steps, _ = calibrated_levels([4, 4], costs, 8 + 4 * 3, errors)
    subnets = apply_levels(classes, difficulty, levels, steps)
    assert subnets.tolist() == [0] * 4 + [2] * 4  # the budget buys subnet 2 for class 2 only
    # a budget for 2.5 upgrades: the two hardest patches of class 2
    levels, steps, _ = calibrated_levels([4, 4], costs, 8 + 2.5 * 3, errors)
    assert apply_levels(classes, difficulty, levels, steps).tolist() == [0] * 6 + [2] * 2


@pytest.mark.parametrize('seed', range(20))
def test_calibrated_allocation_stays_within_budget_and_follows_difficulty(seed):
    rng = np.random.default_rng(seed)
    num_classes, num_subnets, n = 5, 4, int(rng.integers(1, 60))
    classes = torch.from_numpy(rng.integers(1, num_classes + 1, n))
    difficulty = torch.from_numpy(rng.random(n))
    costs = sorted(rng.uniform(1, 10, num_subnets).tolist())
    errors = rng.random((num_classes, num_subnets)).tolist()
    counts = torch.bincount(classes, minlength=num_classes + 1)[1:].tolist()
    budget = rng.uniform(n * costs[0], n * costs[-1] * 1.1)
    levels, steps, _ = calibrated_levels(counts, costs, budget, errors)
    subnets = apply_levels(classes, difficulty, levels, steps)
    assert spent(subnets, costs) <= budget + 1e-9
    for k in range(1, num_classes + 1):
        members = (classes == k).nonzero().flatten()
        by_difficulty = subnets[members[difficulty[members].argsort(descending=True)]]
        assert (by_difficulty.diff() <= 0).all()  # a class's harder patches never get a cheaper subnet


def test_fill_empty_classes_takes_the_nearest_class():
    sums = [[2., 4.], [0., 0.], [0., 0.], [9., 3.]]
    assert fill_empty_classes(sums, [2, 0, 0, 3]) == [[1., 2.], [1., 2.], [3., 1.], [3., 1.]]
    with pytest.raises(ValueError, match='no calibration patch'):
        fill_empty_classes(sums, [0, 0, 0, 0])


def test_patch_pairs_are_aligned_and_spread_over_images():
    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        gt = rng.random((40, 48, 3)).astype(np.float32)
        lq = gt[::2, ::2].copy()  # x2, aligned: LR pixel (y, x) is HR pixel (2y, 2x)
        images.append(lambda lq=lq, gt=gt: (lq, gt))
    lq, gt, ids = sample_patch_pairs(images, 8, 2, 7, seed=1, with_images=True, per_image=1)
    assert lq.shape == (7, 3, 8, 8) and gt.shape == (7, 3, 16, 16) and lq.dtype == torch.uint8
    assert torch.equal(gt[..., ::2, ::2], lq) and np.bincount(ids).tolist() == [3, 2, 2]
    # by default every image chosen gives 8 patches at least, where there are enough: 7 patches, one image
    assert len(set(sample_patch_pairs(images, 8, 2, 7, seed=1, with_images=True)[2])) == 1
    assert np.bincount(sample_patch_pairs(images, 8, 2, 20, with_images=True)[2]).max() == 10  # two images
    # images smaller than the patch lower the patch size for all
    small = [lambda: (np.zeros((5, 6, 3), np.float32), np.zeros((10, 12, 3), np.float32))]
    assert sample_patch_pairs(images + small, 8, 2, 8, per_image=1)[0].shape[-1] == 5
    # with context: the patch in the middle of a wider LR crop, as much context as the smallest image holds
    lq, gt = sample_patch_pairs(images, 8, 2, 7, seed=1, context=3)
    assert lq.shape == (7, 3, 14, 14) and gt.shape == (7, 3, 16, 16)
    assert torch.equal(gt[..., ::2, ::2], lq[..., 3:11, 3:11])
    assert sample_patch_pairs(images + small, 8, 2, 8, context=3, per_image=1)[0].shape[-1] == 5
    wrong_scale = [lambda: (np.zeros((8, 8, 3), np.float32), np.zeros((24, 24, 3), np.float32))]
    with pytest.raises(ValueError, match='not scale=2 times'):
        sample_patch_pairs(wrong_scale, 8, 2, 4)
    with pytest.raises(ValueError, match='at least one LR/HR image pair and one patch'):
        sample_patch_pairs(images, 8, 2, 0)


def test_class_error_table_is_the_mean_error_per_class():
    net = tiny_net()
    torch.manual_seed(1)
    lq = torch.rand(12, 3, 8, 8)
    lq[:6] *= 0.1  # flat patches
    gt = torch.rand(12, 3, 16, 16)
    thresholds = [float(patch_difficulty(rgb_to_luma(lq), 8, [0], [0]).flatten().median())]
    table = class_error_table(net, lq, gt, ClassThresholds.of(thresholds), border=2, batch_size=5)
    assert len(table) == 2 and all(len(row) == len(net.subnets) for row in table)
    classes = classify(patch_difficulty(rgb_to_luma(lq), 8, [0], [0]).flatten(), thresholds)
    with torch.no_grad():
        for m in range(len(net.subnets)):
            diff = (net(lq, subnet=m).clamp(0, 1) - gt)[..., 2:-2, 2:-2].numpy()
            errors = torch.from_numpy(luma_error(diff))
            for k in (1, 2):
                assert table[k - 1][m] == pytest.approx(float(errors[classes == k].mean()), rel=1e-5)


def test_engine_uses_class_errors_with_a_budget():
    net = tiny_net()
    lq = torch.rand(1, 3, 48, 64)
    # subnets 1 and 3 save nothing over 0 and 2: a calibrated budget never runs them
    errors = [[1.0, 1.0, 0.5, 0.5]] * 10
    engine = DynamicInferenceEngine(net, patch_size=16, overlap=2, budget=0.7, class_errors=errors,
                                    whole_image_fallback=False)
    _, report = engine.run(lq)
    assert report.histogram[1] == 0 and report.histogram[3] == 0 and report.histogram[2] > 0
    assert report.flops <= 0.7 * report.full_flops
    with pytest.raises(ValueError, match='class_errors must be 10 rows'):
        DynamicInferenceEngine(net, budget=0.5, class_errors=errors[:3])
    with pytest.raises(ValueError, match='finite'):
        DynamicInferenceEngine(net, budget=0.5, class_errors=[[1.0, float('nan'), 0.5, 0.5]] * 10)


def test_small_images_run_whole_when_that_is_expected_to_do_better():
    net = tiny_net()
    lq = torch.rand(1, 3, 20, 20)  # overlaps make a tiling of 12-pixel patches cost much more than the image
    errors = [[1.0, 0.9, 0.5, 0.1]] * 10
    engine = DynamicInferenceEngine(net, patch_size=12, overlap=4, budget=0.9, class_errors=errors)
    _, report = engine.run(lq)
    whole = [net.flops(20, 20, subnet=s) for s in net.subnets]
    best_within = max(s for s in range(4) if whole[s] <= 0.9 * report.full_flops)
    assert report.whole_image and report.plan.whole_image_subnet == best_within


def test_option_is_validated():
    assert parse_wbsr_options({})['calibration_patches'] == 256
    for bad in (-1, 1.5, True, '256'):
        with pytest.raises(ValueError, match='wbsr.calibration_patches must be an integer >= 0'):
            parse_wbsr_options({'calibration_patches': bad})


def test_calibration_patches_come_from_the_calibration_set_else_the_training_images(tmp_path):
    hr, lr = fixture_dirs()
    (tmp_path / 'hr').mkdir()
    (tmp_path / 'lr').mkdir()
    for name in ('chelsea.png', 'rocket.png'):  # a calibration split: two of the four photos
        (tmp_path / 'hr' / name).symlink_to(osp.join(hr, name))
        (tmp_path / 'lr' / name).symlink_to(osp.join(lr, name))
    opt = dict(train_options('split'), is_train=True, rank=0)
    wbsr = parse_wbsr_options({'calibration_patches': 16,
                               'calibration_set': {'dataroot_gt': str(tmp_path / 'hr'),
                                                   'dataroot_lq': str(tmp_path / 'lr')}})
    thresholds = ClassThresholds.of([1., 2.])
    lq, gt, ids, data = calibration_patches(opt, wbsr, thresholds, 12)
    # 12 px patches with 6 px of context each side: what the smallest LR image (24 px) holds of the 8 asked for
    assert lq.shape == (16, 3, 24, 24) and gt.shape == (16, 3, 48, 48) and sorted(set(ids)) == [0, 1]
    assert data == f"calibration images ({tmp_path / 'hr'})"
    lq, _, ids, data = calibration_patches(opt, parse_wbsr_options({'calibration_patches': 32}), thresholds, 12)
    assert len(lq) == 32 and len(set(ids)) == 4 and data.startswith('training images')  # 8 patches each
    with pytest.raises(ValueError, match='wbsr.calibration_set must be paired dataset options'):
        parse_wbsr_options({'calibration_set': {'dataroot_gt': hr}})


def test_checkpoints_store_the_class_errors_of_training_patches(tmp_path):
    opt = train_options('calibrated', model_type='DynamicSRModel', total_iter=2)
    opt['wbsr'] = {'calibration_patches': 24, 'inference': {'patch_size': 12, 'overlap': 2, 'budget': 0.6}}
    run_module('wbsr_plugin.train', '-opt', write_yaml(tmp_path / 'train.yml', opt), cwd=tmp_path)
    net, meta = load_supernet(str(tmp_path / 'experiments' / 'calibrated' / 'models' / 'net_g_latest.pth'))
    table = meta['class_errors']
    assert len(table) == meta['num_classes'] and all(len(row) == len(net.subnets) for row in table)
    assert all(0 <= e < 1 for row in table for e in row)
    stats = ClassErrors.from_meta(meta)  # stored with counts: the engine plans by their bound
    assert sum(stats.counts) == 24 and 'training images' in stats.source['data'] and stats.source['iter'] == 2
    assert engine_options(meta)['thresholds'].class_error_lists() == stats.planning_table()
    assert f'| class errors | {len(table)} classes x {len(net.subnets)} subnets' in format_model_card(net, meta, 'x')
    # measured once: the checkpoints of iteration 2 and 'latest', and both validations (BasicSR's last at 3) reuse it
    log = read_train_log(str(tmp_path / 'experiments' / 'calibrated'))
    assert log.count('Class errors of iteration') == 1 and 'Class errors of iteration 2 measured on 24' in log
    # off: nothing stored
    opt['name'], opt['wbsr']['calibration_patches'] = 'uncalibrated', 0
    run_module('wbsr_plugin.train', '-opt', write_yaml(tmp_path / 'train0.yml', opt), cwd=tmp_path)
    net, meta = load_supernet(str(tmp_path / 'experiments' / 'uncalibrated' / 'models' / 'net_g_latest.pth'))
    assert 'class_errors' not in meta and engine_options(meta)['thresholds'].class_errors is None
    assert '| class errors | none stored' in format_model_card(net, meta, 'x')


def test_patch_errors_weigh_pixels_as_the_engine_blends_them():
    net = tiny_net()  # x2
    lq = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        out = net(lq, subnet=len(net.subnets) - 1).clamp(0, 1)
    gt = out + 0.1
    gt[..., :2, :] = out[..., :2, :] + 0.5  # the trimmed edge (trim 1 LR px = 2 HR px) weighs nothing
    thresholds = ClassThresholds.of([0.5])
    _, errors, in_context, _ = patch_errors(net, lq, gt, thresholds, overlap=4, trim=1)
    assert errors[:, -1] == pytest.approx([0.01] * 3, rel=1e-5) and in_context is None
    _, errors, _, _ = patch_errors(net, lq, gt, thresholds, border=0)  # every pixel alike
    assert errors[:, -1] == pytest.approx([(0.25 * 2 + 0.01 * 14) / 16] * 3, rel=1e-5)


def test_patch_errors_are_of_the_luma_as_y_psnr_measures_them():
    """A colour shift of the same luma costs nothing; a grey shift costs its square (the loss is in Y-PSNR)."""
    net = tiny_net()  # x2
    lq = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        out = net(lq, subnet=len(net.subnets) - 1).clamp(0, 1)
    chroma = torch.tensor([0.1, -0.1 * 0.299 / 0.587, 0.]).view(1, 3, 1, 1)  # 0.299 * 0.1 - 0.587 * ... = 0
    _, errors, _, _ = patch_errors(net, lq, out + chroma, ClassThresholds.of([0.5]), border=0)
    assert errors[:, -1] == pytest.approx([0., 0.], abs=1e-12)
    _, errors, _, _ = patch_errors(net, lq, out + 0.05, ClassThresholds.of([0.5]), border=0)
    assert errors[:, -1] == pytest.approx([0.0025, 0.0025], rel=1e-4)


def test_patch_errors_with_context_measure_the_full_network_on_the_whole_crop():
    """LR crops wider than their HR patch: the subnets see the patch alone, the full network also the crop, whose
    middle is compared with the patch (numpy here)."""
    net = tiny_net()  # x2
    generator = torch.Generator().manual_seed(4)
    crops = torch.rand(2, 3, 12, 12, generator=generator)  # 8 px patches, 2 px of context
    gt = torch.rand(2, 3, 16, 16, generator=generator)
    classes, errors, in_context, _ = patch_errors(net, crops, gt, ClassThresholds.of([0.5]), border=0)
    full = len(net.subnets) - 1
    with torch.no_grad():
        alone = net(crops[..., 2:10, 2:10], subnet=full).clamp(0, 1).numpy()
        seen = net(crops, subnet=full).clamp(0, 1).numpy()[..., 4:20, 4:20]
    target = gt.numpy()
    assert errors[:, -1] == pytest.approx(luma_error(alone - target), rel=1e-5)
    assert in_context == pytest.approx(luma_error(seen - target), rel=1e-5)
    assert not np.allclose(in_context, errors[:, -1])
    for lq, hr in ((crops[..., :11, :], gt), (crops[..., :6, :6], gt), (crops[:1], gt), (crops, gt[..., :15, :15])):
        with pytest.raises(ValueError, match='LR crops of .* do not hold'):
            patch_errors(net, lq, hr, ClassThresholds.of([0.5]))
