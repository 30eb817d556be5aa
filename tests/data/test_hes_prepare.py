"""Preparation tools (python -m wbsr_plugin.prepare) and HES inside BasicSR's train_pipeline."""
import os
import shutil
import subprocess
import sys
from os import path as osp

import cv2
import numpy as np
from conftest import FIXTURES, REPO_ROOT

from wbsr_plugin import prepare
from wbsr_plugin.data.hes_index import HESIndex, load_thresholds

from basicsr.utils.matlab_functions import imresize

REPO = REPO_ROOT


def test_subimages_names_count_and_rerun(tmp_path, capsys):
    out = tmp_path / 'sub'
    argv = ['subimages', '-i', osp.join(FIXTURES, 'hr'), '-o', str(out), '--crop-size', '48', '--step', '32']
    assert prepare.main(argv) == 0
    names = sorted(os.listdir(out))
    # 96 px: offsets 0, 32 and a flush one at 48 -> 3 x 3 per image
    assert len(names) == 4 * 9 and names[0] == 'astronaut_s001.png' and names[8] == 'astronaut_s009.png'
    hr = cv2.imread(osp.join(FIXTURES, 'hr', 'astronaut.png'))
    np.testing.assert_array_equal(cv2.imread(str(out / 'astronaut_s002.png')), hr[0:48, 32:80])
    np.testing.assert_array_equal(cv2.imread(str(out / 'astronaut_s009.png')), hr[48:96, 48:96])
    capsys.readouterr()
    assert prepare.main(argv) == 0
    assert 'already complete' in capsys.readouterr().out
    os.remove(out / 'chelsea_s004.png')
    assert prepare.main(argv) == 2
    assert 'missing' in capsys.readouterr().err


def test_downsample_is_matlab_bicubic(tmp_path, capsys):
    out = tmp_path / 'lr'
    assert prepare.main(['downsample', '-i', osp.join(FIXTURES, 'hr'), '-o', str(out), '-s', '4']) == 0
    hr = cv2.imread(osp.join(FIXTURES, 'hr', 'coffee.png')).astype(np.float64) / 255.
    expected = np.clip(np.round(imresize(hr, 1 / 4) * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(cv2.imread(str(out / 'coffee.png')), expected)
    odd = tmp_path / 'odd'
    odd.mkdir()
    cv2.imwrite(str(odd / 'x.png'), np.zeros((30, 32, 3), np.uint8))
    capsys.readouterr()
    assert prepare.main(['downsample', '-i', str(odd), '-o', str(tmp_path / 'odd_lr'), '-s', '4']) == 2
    assert 'x.png' in capsys.readouterr().err


def test_lmdb_layout_and_rerun(tmp_path, capsys):
    out = str(tmp_path / 'hr.lmdb')
    assert prepare.main(['lmdb', '-i', osp.join(FIXTURES, 'hr'), '-o', out]) == 0
    assert sorted(os.listdir(out)) == ['data.mdb', 'lock.mdb', 'meta_info.txt']
    lines = open(osp.join(out, 'meta_info.txt')).read().splitlines()
    assert sorted(lines) == [f'{n}.png (96,96,3) 1' for n in ('astronaut', 'chelsea', 'coffee', 'rocket')]
    capsys.readouterr()
    assert prepare.main(['lmdb', '-i', osp.join(FIXTURES, 'hr'), '-o', out]) == 0
    assert 'already complete' in capsys.readouterr().out


def test_index_and_stats(tmp_path, capsys):
    shutil.copytree(osp.join(FIXTURES, 'hr'), tmp_path / 'hr')
    shutil.copytree(osp.join(FIXTURES, 'lr_x2'), tmp_path / 'lr_x2')
    index_path = str(tmp_path / 'index.npz')
    argv = ['index', '--gt', str(tmp_path / 'hr'), '--lq', str(tmp_path / 'lr_x2'), '-s', '2', '--gt-size', '32',
            '-o', index_path]
    assert prepare.main(argv) == 0
    index = HESIndex(index_path)
    # 48 px LR, 16 px patches, stride 8: offsets 0..32 -> 5 x 5 per image
    assert len(index) == 4 * 25 and index.patch_size == 16
    thresholds, patch_size = load_thresholds(index_path, num_classes=4)
    assert patch_size == 16 and len(thresholds) == 3 and thresholds == sorted(thresholds)
    grid = str(tmp_path / 'grid.png')
    capsys.readouterr()
    assert prepare.main(['stats', index_path, '-k', '4', '--grid', grid, '--per-class', '3']) == 0
    out = capsys.readouterr().out
    assert 'flat' in out and 'edge/texture' in out and out.count('%') >= 6
    assert cv2.imread(grid).shape == (4 * 18 * 2, 3 * 18 * 2, 3)


TRAIN_YML = """\
# train_MSRResNet_x4.yml with the dataset type and the HES keys changed (tiny data and network)
name: {name}
model_type: SRModel
scale: 4
num_gpu: 0
manual_seed: 0

datasets:
  train:
    name: DIV2K
    type: ClassBalancedPairedDataset
    dataroot_gt: {root}/hr.lmdb
    dataroot_lq: {root}/lr_x4.lmdb
    filename_tmpl: '{{}}'
    io_backend:
      type: lmdb

    gt_size: 32
    use_hflip: true
    use_rot: true

    hes_num_classes: 10
    hes_delta: 0.9
    hes_stride: 2

    # data loader
    num_worker_per_gpu: 2
    batch_size_per_gpu: 2
    dataset_enlarge_ratio: 2
    prefetch_mode: ~

  val:
    name: Set5
    type: PairedImageDataset
    dataroot_gt: {root}/hr
    dataroot_lq: {root}/lr_x4
    io_backend:
      type: disk

network_g:
  type: WBSRResNet
  num_in_ch: 3
  num_out_ch: 3
  num_feat: 16
  num_block: 2
  upscale: 4
  widths: [8, 16]
  depths: [1, 2]

path:
  pretrain_network_g: ~
  strict_load_g: true
  resume_state: ~

train:
  ema_decay: 0.999
  optim_g:
    type: Adam
    lr: 2.0e-4
    weight_decay: 0
    betas: [0.9, 0.99]
  scheduler:
    type: CosineAnnealingRestartLR
    periods: [1000]
    restart_weights: [1]
    eta_min: 1.0e-7
  total_iter: {total_iter}
  warmup_iter: -1
  pixel_opt:
    type: L1Loss
    loss_weight: 1.0
    reduction: mean

val:
  val_freq: 1000
  save_img: false
  metrics:
    psnr:
      type: calculate_psnr
      crop_border: 4
      test_y_channel: false

logger:
  print_freq: 1
  save_checkpoint_freq: 3
  use_tb_logger: false
  wandb:
    project: ~
    resume_id: ~

dist_params:
  backend: nccl
  port: 29500
"""


def _train(tmp_path, total_iter, *extra):
    yml = tmp_path / f'train_{total_iter}.yml'
    yml.write_text(TRAIN_YML.format(name='hes_pipeline', root=tmp_path, total_iter=total_iter))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    result = subprocess.run([sys.executable, '-m', 'wbsr_plugin.train', '-opt', str(yml), *extra], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logs = sorted((tmp_path / 'experiments' / 'hes_pipeline').glob('train_hes_pipeline_*.log'))
    return logs[-1].read_text()


def test_train_pipeline_with_lmdb_switch_and_auto_resume(tmp_path):
    shutil.copytree(osp.join(FIXTURES, 'hr'), tmp_path / 'hr')
    shutil.copytree(osp.join(FIXTURES, 'lr_x4'), tmp_path / 'lr_x4')
    for name in ('hr', 'lr_x4'):
        assert prepare.main(['lmdb', '-i', str(tmp_path / name), '-o', str(tmp_path / f'{name}.lmdb')]) == 0
    log = _train(tmp_path, 6)
    assert 'Dataset [ClassBalancedPairedDataset] - DIV2K is built.' in log
    assert 'HES: sample-level sampling at iteration 1 of 6 (class-level after iteration 4)' in log
    # 70 % of 6 iterations -> iterations 1..4 sample-level, 5..6 class-level
    assert 'HES: class-level sampling from iteration 5 (switch after iteration 4 of 6)' in log
    assert 'End of training.' in log
    assert (tmp_path / 'experiments' / 'hes_pipeline' / 'training_states' / '6.state').is_file()

    log = _train(tmp_path, 10, '--auto_resume')  # resumes at 6 of 10: S = 7
    assert 'Resuming training from epoch' in log
    assert 'HES: sample-level sampling at iteration 6 of 10 (class-level after iteration 7)' in log
    assert 'HES: class-level sampling from iteration 8 (switch after iteration 7 of 10)' in log
    assert 'at iteration 1 of' not in log
