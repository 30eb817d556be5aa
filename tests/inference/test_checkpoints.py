"""Checkpoints: the 'wbsr' entry written and read back, plain BasicSR checkpoints, thresholds per patch side."""

import numpy as np
import pytest
import torch
from conftest import strong_tiny_resnet

import wbsr_plugin  # noqa: F401
from wbsr_plugin.inference.checkpoint import WBSR_KEY, CheckpointError, engine_thresholds, load_supernet, make_wbsr_meta
from wbsr_runtime.class_thresholds import ClassThresholds


def test_checkpoint_round_trip(tiny_checkpoint):
    net, meta = load_supernet(tiny_checkpoint, arch='WBSRResNet', scale=4)
    assert meta['thresholds'] == [2., 4., 6., 8., 10., 12., 14., 16., 18.]
    assert net.widths == [8, 16] and net.depths == [1, 2]
    with pytest.raises(CheckpointError, match='not x2'):
        load_supernet(tiny_checkpoint, scale=2)
    with pytest.raises(CheckpointError, match='not a WBSRRCAN'):
        load_supernet(tiny_checkpoint, arch='WBSRRCAN')
    with pytest.raises(CheckpointError, match='does not match'):
        load_supernet(tiny_checkpoint, network_opt={'type': 'WBSRResNet', 'num_feat': 16, 'num_block': 2, 'upscale': 2,
                                               'widths': [8, 16], 'depths': [1, 2]})


def test_plain_basicsr_checkpoint_loads(tmp_path):
    from basicsr.archs.srresnet_arch import MSRResNet
    path = str(tmp_path / 'plain.pth')
    torch.save({'params_ema': MSRResNet(upscale=2).state_dict(), 'params': {}}, path)
    net, meta = load_supernet(path)
    assert type(net).__name__ == 'WBSRResNet' and net.upscale == 2 and meta == {}


def test_checkpoint_stores_thresholds_per_patch_size(tmp_path):
    net = strong_tiny_resnet()
    table = {16: [1., 2., 3.], 32: [2., 4., 6.], 64: [4., 6., 8.]}
    meta = make_wbsr_meta(net, table, 45)
    t = np.log(45 / 32) / np.log(2)  # linear in log patch size between 32 and 64
    assert meta['thresholds'] == pytest.approx([2 + 2 * t, 4 + 2 * t, 6 + 2 * t])
    path = str(tmp_path / 'net.pth')
    torch.save({'params': net.state_dict(), WBSR_KEY: meta}, path)
    _, loaded = load_supernet(path)
    assert ClassThresholds.from_meta(loaded).as_table() == table
    single = ClassThresholds.from_meta({'thresholds': [1., 2.]})
    assert single.at(7) == single.at(70) == [1., 2.] and not single.by_patch_size
    assert ClassThresholds.from_meta({}) is None
    # the documented helper gives them as stored
    assert engine_thresholds(loaded) == table
    assert engine_thresholds({'thresholds': [1., 2.]}) == [1., 2.] and engine_thresholds({}) is None
