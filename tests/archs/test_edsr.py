"""WBSREDSR, BasicSR's EDSR as a supernet: the network, its checkpoints, training and every command."""
import csv
import glob
import json
import os
import re
import sys
from os import path as osp

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import (
    FIXTURES,
    REPO_ROOT,
    TINY_SUPERNETS_3X3,
    fixture_dirs,
    read_train_log,
    run_cli,
    run_module,
    train_options,
    write_yaml,
    y_psnr,
)

from wbsr_plugin import curve, export, infer, subnets
from wbsr_plugin.cli.evaluation import load_pairs
from wbsr_plugin.cli.image_io import read_image
from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_plugin.inference.checkpoint import CheckpointError, engine_options, load_supernet

from basicsr.archs import build_network
from basicsr.archs.edsr_arch import EDSR

TINY_EDSR = {'type': 'WBSREDSR', **TINY_SUPERNETS_3X3['WBSREDSR']}


def edsr_with_the_weights_of(net, **options):
    plain = EDSR(num_in_ch=3, num_out_ch=3, **options)
    plain.load_state_dict(net.state_dict(), strict=True)
    return plain.eval()


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_the_full_subnet_is_basicsr_edsr_baseline(scale):
    net = build_network({'type': 'WBSREDSR', 'upscale': scale}).eval()
    assert (net.num_feat, net.num_block, net.widths, net.depths) == (64, 16, [36, 52, 64], [4, 8, 16])
    assert len(net.subnets) == 9
    lq = torch.rand(1, 3, 11, 9)
    with torch.no_grad():
        torch.testing.assert_close(net(lq), edsr_with_the_weights_of(net, upscale=scale)(lq), rtol=0, atol=1e-5)


def test_other_sizes_scale_their_widths_and_depths():
    with torch.device('meta'):
        large = build_network({'type': 'WBSREDSR', 'num_feat': 256, 'num_block': 32, 'res_scale': 0.1})
    assert (large.widths, large.depths) == ([144, 208, 256], [8, 16, 32])  # EDSR-L
    net = build_network({'type': 'WBSREDSR', 'num_feat': 32, 'num_block': 8, 'res_scale': 0.1, 'upscale': 2}).eval()
    assert (net.widths, net.depths) == ([18, 26, 32], [2, 4, 8])
    lq = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        expected = edsr_with_the_weights_of(net, num_feat=32, num_block=8, res_scale=0.1, upscale=2)(lq)
        torch.testing.assert_close(net(lq), expected, rtol=0, atol=1e-5)
        for spec in net.subnets:  # every subnet is the EDSR of its width and depth, res_scale kept
            plain = EDSR(3, 3, num_feat=spec.width, num_block=spec.depth, res_scale=0.1, upscale=2)
            plain.load_state_dict(net.extract_subnet(spec.index).state_dict(), strict=True)
            torch.testing.assert_close(net(lq, subnet=spec.index), plain.eval()(lq), rtol=0, atol=1e-5)
    given = build_network({'type': 'WBSREDSR', 'num_feat': 32, 'num_block': 8, 'widths': [16, 32], 'depths': [8]})
    assert len(given.subnets) == 2


def test_basicsr_edsr_checkpoints_load_from_their_shapes(tmp_path):
    plain = EDSR(3, 3, upscale=3).eval()
    path = tmp_path / 'EDSR_Mx3.pth'
    torch.save({'params': plain.state_dict()}, path)
    net, meta = load_supernet(str(path))
    assert meta == {} and type(net).__name__ == 'WBSREDSR' and net.upscale == 3
    assert (net.widths, net.depths) == ([36, 52, 64], [4, 8, 16])
    lq = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(lq), plain(lq), rtol=0, atol=1e-5)

    other = EDSR(3, 3, num_feat=32, num_block=4, res_scale=0.1)
    torch.save({'params_ema': other.state_dict()}, path)
    with pytest.raises(CheckpointError, match=re.escape('holds a WBSREDSR with num_feat=32, num_block=4 and no')):
        load_supernet(str(path))
    options = {'type': 'WBSREDSR', 'num_feat': 32, 'num_block': 4, 'res_scale': 0.1}
    net, _ = load_supernet(str(path), network_opt=options)
    with torch.no_grad():
        torch.testing.assert_close(net(lq), other.eval()(lq), rtol=0, atol=1e-5)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny WBSREDSR trained for 3 iterations by BasicSR's pipeline through DynamicSRModel."""
    root = tmp_path_factory.mktemp('edsr')
    opt = train_options('edsr_run', model_type='DynamicSRModel', total_iter=3, network=TINY_EDSR)
    opt['wbsr'] = {'subnet_sampling': 'sandwich', 'calibration_patches': 32, 'inference': {'patch_size': 12,
                                                                                           'overlap': 2}}
    run_module('wbsr_plugin.train', '-opt', write_yaml(root / 'train.yml', opt), cwd=root)
    return root, str(root / 'experiments' / 'edsr_run' / 'models' / 'net_g_latest.pth')


def test_training_validates_full_and_dynamic_and_stores_what_inference_needs(trained):
    root, model = trained
    log = read_train_log(root / 'experiments' / 'edsr_run')
    assert re.search(r'Validation fixtures_val_dynamic\n\s+# psnr: [\d.]+', log)
    net, meta = load_supernet(model)
    assert type(net).__name__ == 'WBSREDSR' and meta['network_g'] == net.network_options()
    assert meta['iter'] == 3 and len(meta['class_errors'][0]) == 9 and sorted(meta['thresholds_by_patch_size'])


def test_the_shipped_test_options_run_the_trained_checkpoint(trained, tmp_path):
    _, model = trained
    with open(osp.join(REPO_ROOT, 'options', 'test_wbsr_edsr_x4.yml')) as f:
        opt = yaml.safe_load(f)
    hr, lr = fixture_dirs()
    opt['datasets'] = {'test_1': {'name': 'fixtures', 'type': 'PairedImageDataset', 'dataroot_gt': hr,
                                  'dataroot_lq': lr, 'io_backend': {'type': 'disk'}}}
    opt['network_g'].update({k: v for k, v in TINY_EDSR.items() if k != 'type'})
    opt['path']['pretrain_network_g'] = model
    opt['num_gpu'] = 0
    options = write_yaml(tmp_path / 'test.yml', opt)
    run_cli([sys.executable, osp.join(REPO_ROOT, 'wbsr_plugin', 'test.py'), '-opt', options], cwd=tmp_path)
    images = glob.glob(str(tmp_path / 'results' / opt['name'] / 'visualization' / 'fixtures' / '*.png'))
    assert len(images) == 4


def test_infer_curve_subnets_and_the_engine(trained, tmp_path, capsys):
    _, model = trained
    out = tmp_path / 'sr'
    assert infer.main(['-i', osp.join(FIXTURES, 'lr_x4'), '-o', str(out), '--model', model, '--budget', '0.6',
                       '-t', '12', '--arch', 'WBSREDSR']) == 0
    assert sorted(os.listdir(out)) == ['astronaut_out.png', 'chelsea_out.png', 'coffee_out.png', 'rocket_out.png']
    assert cv2.imread(str(out / 'rocket_out.png')).shape == (96, 96, 3)

    hr, lr = fixture_dirs()
    assert curve.main(['--hr', hr, '--lr', lr, '--model', model, '--budgets', '0.5', '-t', '12', '--overlap', '2',
                       '--device', 'cpu', '-o', str(tmp_path / 'curve')]) == 0
    with open(tmp_path / 'curve' / 'curve.csv') as f:
        rows = {row['setting']: row for row in csv.DictReader(f)}
    net, meta = load_supernet(model)
    with torch.no_grad():
        expected = np.mean([y_psnr(net(lq), hr_image, 4) for _, lq, hr_image in load_pairs(hr, lr, 4)])
    assert float(rows['full network, whole image']['psnr']) == pytest.approx(expected, abs=1e-3)
    assert any(name.startswith('FLOPs budget 0.5') for name in rows)

    capsys.readouterr()
    subnets.main(['--model', model])
    card = capsys.readouterr().out
    assert 'WBSREDSR x4: num_feat 16, num_block 4, widths [8, 12, 16], depths [1, 2, 4], res_scale 1' in card
    subnets.main(['--arch', 'WBSREDSR', '-s', '2'])
    assert '| 8 | 64 | 16 | w64d16 |' in capsys.readouterr().out

    engine = DynamicInferenceEngine(net, **engine_options(meta), patch_size=12, overlap=2, budget=0.5)
    lq, _ = read_image(osp.join(FIXTURES, 'lr_x4', 'rocket.png'))
    sr, report = engine.run(lq)
    assert sr.shape == (1, 3, 96, 96) and report.flops <= 0.5 * report.full_flops * (1 + 1e-9)


def test_export_writes_plain_edsr_checkpoints_and_onnx(trained, tmp_path):
    pytest.importorskip('onnxruntime')
    _, model = trained
    out = tmp_path / 'exported'
    export.main(['--model', model, '-o', str(out), '--all', '--onnx'])
    with open(out / 'index.json') as f:
        index = json.load(f)
    assert index['supernet'] == 'WBSREDSR' and len(index['subnets']) == 9
    net, _ = load_supernet(model)
    lq = torch.rand(1, 3, 10, 9)
    for spec in net.subnets:
        stem = out / f'EDSR_x4_{spec.name}'
        plain = EDSR(3, 3, num_feat=spec.width, num_block=spec.depth, upscale=4)
        plain.load_state_dict(torch.load(f'{stem}.pth', map_location='cpu', weights_only=True)['params'], strict=True)
        with torch.no_grad():
            torch.testing.assert_close(plain.eval()(lq), net(lq, subnet=spec.index), rtol=0, atol=1e-5)
        assert osp.isfile(f'{stem}.onnx')
