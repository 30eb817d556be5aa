"""Dynamic inference: tiling, projection, blending, FLOPs, checkpoints, CLI and bad inputs."""
import os
import shutil
import subprocess
import sys
from os import path as osp

import cv2
import numpy as np
import pytest
import torch

import wbsr_plugin  # noqa: F401
from wbsr_plugin import infer
from wbsr_plugin.archs.wbsr_rcan_arch import WBSRRCAN
from wbsr_plugin.archs.wbsr_resnet_arch import WBSRResNet
from wbsr_plugin.inference import DynamicInferenceEngine, budget_subnets, class_to_subnet, quantile_thresholds
from wbsr_plugin.inference.checkpoint import WBSR_KEY, CheckpointError, load_supernet, make_wbsr_meta
from wbsr_plugin.inference.image_io import ImageReadError, read_image, to_image

FIXTURES = osp.join(osp.dirname(__file__), 'fixtures', 'lr_x4')
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.fixture(autouse=True)
def seed():
    torch.manual_seed(0)
    np.random.seed(0)


def tiny_net(scale=4, strong=True):
    net = WBSRResNet(num_feat=16, num_block=2, upscale=scale, widths=[8, 16], depths=[1, 2]).eval()
    if strong:  # larger weights than BasicSR's init, so that padding effects are visible
        with torch.no_grad():
            for p in net.parameters():
                if p.dim() == 4:
                    torch.nn.init.kaiming_normal_(p)
                    p.mul_(0.7)
    return net


# LR pixels an output pixel of the tiny x4 net depends on, on each side (6 LR convs, one at x2, two
# at x4, and the bilinear skip): 6 + 0.5 + 0.5 + 1 = 8.
TINY_RECEPTIVE_MARGIN = 8


@pytest.mark.parametrize('size, scale', [((1, 1), 4), ((2, 3), 3), ((5, 7), 2), ((24, 24), 4), ((31, 33), 3),
                                         ((37, 81), 4), ((65, 17), 2)])
def test_output_size_is_exact(size, scale):
    net = tiny_net(scale)
    for budget in (None, 0.5):
        engine = DynamicInferenceEngine(net, patch_size=16, overlap=4, budget=budget)
        sr, report = engine.run(torch.rand(1, 3, *size))
        assert sr.shape == (1, 3, size[0] * scale, size[1] * scale)
        assert report.sr_size == (size[0] * scale, size[1] * scale)
        assert torch.isfinite(sr).all()


def test_full_subnet_tiled_equals_whole_image():
    net = tiny_net()
    lq = torch.rand(1, 3, 70, 90)
    with torch.no_grad():
        whole = net(lq)
    margin = TINY_RECEPTIVE_MARGIN
    engine = DynamicInferenceEngine(net, patch_size=32, overlap=2 * margin + 1, trim=margin, subnet=-1)
    sr, report = engine.run(lq)
    assert report.num_patches > 4
    assert torch.allclose(sr, whole, atol=2e-6)
    # With the default (small) overlap, seams stay small but are not exact.
    sr_default, _ = DynamicInferenceEngine(net, patch_size=32, subnet=-1).run(lq)
    assert (sr_default - whole).abs().mean() < 0.01


def test_rcan_runs_tiled():
    net = WBSRRCAN(num_feat=16, num_group=2, num_block=2, widths=[16], depths=[1, 2], upscale=2).eval()
    sr, report = DynamicInferenceEngine(net, patch_size=8, overlap=2).run(torch.rand(1, 3, 13, 19))
    assert sr.shape == (1, 3, 26, 38)
    assert report.flops == sum(n * net.flops(8, 8, subnet=i) for i, n in enumerate(report.histogram))


def test_batched_equals_naive_per_patch_loop():
    net = tiny_net()
    lq = torch.rand(1, 3, 53, 61)
    engine = DynamicInferenceEngine(net, patch_size=16, overlap=4, max_batch_pixels=16 * 16 * 3)
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
    net = tiny_net()
    lq = torch.rand(1, 3, 96, 128)
    lq[..., :48, :] *= 0.05  # a flat half and a textured half
    engine = DynamicInferenceEngine(net, patch_size=16, overlap=2, budget=budget)
    _, report = engine.run(lq)
    costs = [net.flops(16, 16, subnet=s) for s in net.subnets]
    step = max(b - a for a, b in zip(costs, costs[1:]))
    cheapest = report.num_patches * costs[0]
    allowed = budget * report.full_flops
    if cheapest > allowed:
        assert report.histogram[0] == report.num_patches
    else:
        # Met from below, within one patch's upgrade step (or everything is already the full subnet).
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
    net = tiny_net()
    lq = torch.rand(1, 3, 45, 50)
    engine = DynamicInferenceEngine(net, patch_size=16, overlap=4, thresholds=[5, 10, 20, 30, 40, 50, 60, 70, 80])
    _, report = engine.run(lq)
    plan = report.plan
    expected = sum(net.flops(16, 16, subnet=int(s)) for s in plan.subnets.flatten())
    assert report.flops == expected
    assert report.full_flops == net.flops(45, 50)
    assert sum(report.histogram) == report.num_patches == len(plan.tops) * len(plan.lefts)
    # Overlap is paid for: the tiled full subnet costs more than the whole image.
    _, full = DynamicInferenceEngine(net, patch_size=16, overlap=4, subnet=-1).run(lq)
    assert full.flops_ratio > 1


def test_refresh_after_weight_change():
    net = tiny_net()
    lq = torch.rand(1, 3, 20, 20)
    engine = DynamicInferenceEngine(net, patch_size=16, subnet=-1)
    first, _ = engine.run(lq)
    with torch.no_grad():
        net.conv_last.bias.add_(0.5)  # an in-place update, as an optimizer step does
    second, _ = engine.run(lq)
    assert torch.allclose(second - first, torch.full_like(first, 0.5), atol=1e-5)


def test_engine_rejects_bad_options():
    net = tiny_net()
    for budget in (0, -0.1, 1.01, float('nan')):
        with pytest.raises(ValueError, match='budget'):
            DynamicInferenceEngine(net, budget=budget)
    with pytest.raises(ValueError, match='at most one'):
        DynamicInferenceEngine(net, budget=0.5, subnet=0)
    with pytest.raises(ValueError, match='thresholds'):
        DynamicInferenceEngine(net, thresholds=[1., 2.])
    with pytest.raises(ValueError, match='non-decreasing'):
        DynamicInferenceEngine(net, thresholds=[3., 2., 1., 4, 5, 6, 7, 8, 9])
    with pytest.raises(ValueError, match='overlap'):
        DynamicInferenceEngine(net, patch_size=16, overlap=16)
    with pytest.raises(TypeError):
        DynamicInferenceEngine(torch.nn.Conv2d(3, 3, 3))


# ------------------------------------------------------------------------------------------------
@pytest.fixture
def checkpoint(tmp_path):
    net = tiny_net()
    path = str(tmp_path / 'tiny.pth')
    thresholds = [2., 4., 6., 8., 10., 12., 14., 16., 18.]
    torch.save({'params': net.state_dict(), WBSR_KEY: make_wbsr_meta(net, thresholds, 16)}, path)
    return path


def test_checkpoint_round_trip(checkpoint):
    net, meta = load_supernet(checkpoint, arch='WBSRResNet', scale=4)
    assert meta['thresholds'] == [2., 4., 6., 8., 10., 12., 14., 16., 18.]
    assert net.widths == [8, 16] and net.depths == [1, 2]
    with pytest.raises(CheckpointError, match='not x2'):
        load_supernet(checkpoint, scale=2)
    with pytest.raises(CheckpointError, match='not a WBSRRCAN'):
        load_supernet(checkpoint, arch='WBSRRCAN')
    with pytest.raises(CheckpointError, match='does not match'):
        load_supernet(checkpoint, network_opt={'type': 'WBSRResNet', 'num_feat': 16, 'num_block': 2, 'upscale': 2,
                                               'widths': [8, 16], 'depths': [1, 2]})


def test_plain_basicsr_checkpoint_loads(tmp_path):
    from basicsr.archs.srresnet_arch import MSRResNet
    path = str(tmp_path / 'plain.pth')
    torch.save({'params_ema': MSRResNet(upscale=2).state_dict(), 'params': {}}, path)
    net, meta = load_supernet(path)
    assert type(net).__name__ == 'WBSRResNet' and net.upscale == 2 and meta == {}


def run_cli(args):
    return subprocess.run([sys.executable, '-m', 'wbsr_plugin.infer', *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_on_fixtures(checkpoint, tmp_path):
    out = tmp_path / 'out'
    assert infer.main(['-i', FIXTURES, '-o', str(out), '--model', checkpoint, '--budget', '0.6', '--save-map',
                       '-t', '16']) == 0
    names = sorted(os.listdir(out))
    assert names == sorted([f'{n}_out.png' for n in ('astronaut', 'chelsea', 'coffee', 'rocket')] +
                           [f'{n}_map.png' for n in ('astronaut', 'chelsea', 'coffee', 'rocket')])
    for name in names:
        assert cv2.imread(str(out / name)).shape == (96, 96, 3)


def test_cli_bad_inputs_skip_and_fail(checkpoint, tmp_path, capsys):
    inputs = tmp_path / 'in'
    inputs.mkdir()
    shutil.copy(osp.join(FIXTURES, 'rocket.png'), inputs / 'good.png')
    (inputs / 'empty.png').write_bytes(b'')
    (inputs / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
    out = tmp_path / 'out'
    result = run_cli(['-i', str(inputs), '-o', str(out), '--model', checkpoint])
    assert result.returncode == 1
    assert 'empty file' in result.stderr and 'cannot decode' in result.stderr
    assert sorted(os.listdir(out)) == ['good_out.png']  # nothing half-written, no temporary files

    good = str(inputs / 'good.png')
    for extra, message in ((['--budget', '1.5'], 'budget'), (['--budget', '0'], 'budget'), (['-s', '2'], 'not x2'),
                           (['--arch', 'WBSRRCAN'], 'not a WBSRRCAN')):
        with pytest.raises(SystemExit) as exit_info:
            infer.main(['-i', good, '-o', str(out), '--model', checkpoint, *extra])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        infer.main(['-i', good, '-o', str(out), '--model', str(tmp_path / 'nope.pth')])
    assert exit_info.value.code == 2 and 'no such checkpoint' in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ['good_out.png']


def test_failed_write_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / 'out'

    def broken_replace(src, dst):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'replace', broken_replace)
    assert infer.main(['-i', osp.join(FIXTURES, 'rocket.png'), '-o', str(out), '--model', checkpoint]) == 1
    assert os.listdir(out) == []


@pytest.mark.parametrize('kind', ['gray', 'rgba', 'rgb16'])
def test_image_modes_round_trip(kind, tmp_path):
    rgb = cv2.imread(osp.join(FIXTURES, 'coffee.png'))
    if kind == 'gray':
        img = cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY)
    elif kind == 'rgba':
        img = np.concatenate([rgb, np.full(rgb.shape[:2] + (1, ), 128, np.uint8)], axis=2)
    elif kind == 'rgb16':
        img = rgb.astype(np.uint16) * 257
    else:
        raise ValueError(kind)
    path = str(tmp_path / 'in.png')
    cv2.imwrite(path, img)
    lq, info = read_image(path)
    assert lq.shape == (1, 3, 24, 24) and 0 <= lq.min() and lq.max() <= 1
    sr, _ = DynamicInferenceEngine(tiny_net(strong=False), patch_size=16).run(lq)
    out = to_image(sr, info)
    assert out.dtype == img.dtype and out.shape[:2] == (96, 96) and out.ndim == img.ndim
    if kind == 'rgba':
        assert out.shape[2] == 4 and (out[..., 3] == 128).all()


def test_unreadable_images_raise(tmp_path):
    (tmp_path / 'empty.png').write_bytes(b'')
    with pytest.raises(ImageReadError, match='empty'):
        read_image(str(tmp_path / 'empty.png'))
    (tmp_path / 'bad.jpg').write_bytes(b'garbage')
    with pytest.raises(ImageReadError, match='cannot decode'):
        read_image(str(tmp_path / 'bad.jpg'))
