"""BasicSR's train/test pipelines end to end through the plugin's entry points."""
import glob
import shutil
import sys
from os import path as osp

import pytest
import torch
import yaml
from conftest import (
    REPO_ROOT,
    fixture_dirs,
    free_port,
    parsed_options,
    read_train_log,
    run_cli,
    run_module,
    train_options,
    write_yaml,
)

from wbsr_plugin.data.hes import parse_hes_options
from wbsr_plugin.losses.gmm_prior_util import fit_gmm_prior, save_gmm_prior
from wbsr_plugin.models.wbsr_options import parse_wbsr_options

from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils.options import ordered_yaml
from basicsr.utils.registry import DATASET_REGISTRY, MODEL_REGISTRY

OPTION_FILES = sorted(glob.glob(osp.join(REPO_ROOT, 'options', '*.yml')))


@pytest.fixture(scope='module')
def priors(tmp_path_factory):
    """GMM priors of the fixtures, standing in for the DIV2K priors the option files point to."""
    root = tmp_path_factory.mktemp('priors')
    paths = {}
    for scale in (2, 4):
        paths[scale] = str(root / f'prior_x{scale}.pth')
        save_gmm_prior(fit_gmm_prior(fixture_dirs()[0], scale, num_components=2, num_iters=20), paths[scale])
    return paths


@pytest.mark.parametrize('path', OPTION_FILES, ids=osp.basename)
def test_every_option_file_is_valid(path, priors):
    with open(path) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    scale = opt['scale']
    assert MODEL_REGISTRY.get(opt['model_type']) is not None
    with torch.device('meta'):
        net = build_network(dict(opt['network_g']))
    assert net.upscale == scale and len(net.subnets) == 9
    parse_wbsr_options(opt.get('wbsr'))
    for dataset in opt['datasets'].values():
        assert DATASET_REGISTRY.get(dataset['type']) is not None
        if dataset['type'] == 'ClassBalancedPairedDataset':
            parse_hes_options(dataset)
    assert all(metric['crop_border'] == scale for metric in opt['val']['metrics'].values())
    if 'train' in opt:
        pixel_opt = dict(opt['train']['pixel_opt'])
        if pixel_opt['type'] == 'BDLoss':
            assert pixel_opt['scale'] == scale
            pixel_opt['prior_path'] = priors[scale]
        build_loss(pixel_opt)
        assert isinstance(opt['train']['optim_g']['lr'], float)


def test_train_then_test_on_folder_data(tmp_path):
    opt = train_options('folder_run', total_iter=4)
    run_module('wbsr_plugin.train', '-opt', write_yaml(tmp_path / 'train.yml', opt), cwd=tmp_path)
    experiment = tmp_path / 'experiments' / 'folder_run'
    assert (experiment / 'models' / 'net_g_latest.pth').is_file()
    assert (experiment / 'training_states' / '4.state').is_file()
    assert '# psnr:' in read_train_log(experiment)

    test_opt = {k: opt[k] for k in ('name', 'model_type', 'scale', 'num_gpu', 'network_g')}
    test_opt.update(
        name='folder_test',
        datasets={'test_1': opt['datasets']['val']},
        path={'pretrain_network_g': str(experiment / 'models' / 'net_g_latest.pth'), 'param_key_g': 'params_ema',
              'strict_load_g': True},
        val={'save_img': True, 'suffix': None, 'metrics': opt['val']['metrics']})
    run_cli([sys.executable, f'{REPO_ROOT}/wbsr_plugin/test.py', '-opt',
             write_yaml(tmp_path / 'test.yml', test_opt)], cwd=tmp_path)
    images = glob.glob(str(tmp_path / 'results' / 'folder_test' / 'visualization' / 'fixtures_val' / '*.png'))
    assert len(images) == 4


def test_train_on_basicsr_lmdb_with_workers_and_auto_resume(tmp_path, fixture_lmdbs):
    gt_lmdb, lq_lmdb = fixture_lmdbs
    lmdb_data = {'dataroot_gt': gt_lmdb, 'dataroot_lq': lq_lmdb, 'io_backend': {'type': 'lmdb'},
                 'num_worker_per_gpu': 2, 'persistent_workers': True}
    opt = train_options('lmdb_run', total_iter=6, train_dataset=lmdb_data)
    opt['logger']['save_checkpoint_freq'] = 2
    path = write_yaml(tmp_path / 'train.yml', opt)
    # a run stopped after 4 of its 6 iterations, then resumed
    run_module('wbsr_plugin.train', '-opt', path, '--force_yml', 'train:total_iter=4', cwd=tmp_path)
    run_module('wbsr_plugin.train', '-opt', path, '--auto_resume', cwd=tmp_path)
    log = read_train_log(tmp_path / 'experiments' / 'lmdb_run')
    assert 'Resuming training from epoch' in log and 'iter: 4.' in log
    assert (tmp_path / 'experiments' / 'lmdb_run' / 'training_states' / '6.state').is_file()


def test_debug_and_force_yml_flags(tmp_path):
    opt = train_options('flags_run', total_iter=8)
    path = write_yaml(tmp_path / 'train.yml', opt)
    script = shutil.which('wbsr-train') or f'{sys.executable} -m wbsr_plugin.train'
    run_cli([*script.split(), '-opt', path, '--debug', '--force_yml', 'train:total_iter=2'], cwd=tmp_path)
    log = read_train_log(tmp_path / 'experiments' / 'debug_flags_run')
    assert 'total_iter: 2' in log


def hes_dataset_copy(root):
    """ClassBalancedPairedDataset options on a copy of the fixtures (its index is written beside them)."""
    data = root / 'data'
    for folder in fixture_dirs():
        shutil.copytree(folder, data / osp.basename(folder))
    return {'type': 'ClassBalancedPairedDataset', 'dataroot_gt': str(data / 'hr'), 'dataroot_lq': str(data / 'lr_x4')}


@pytest.mark.skipif(sys.platform != 'linux', reason='torchrun with gloo is exercised on Linux')
def test_torchrun_two_cpu_processes(tmp_path):
    # DynamicSRModel's sandwich rule runs three subnets per step: DDP must accumulate without syncing;
    # HES draws class-level from the start, each rank from its own shard
    hes = dict(hes_dataset_copy(tmp_path), hes_switch_iter=0, num_worker_per_gpu=1)
    opt = train_options('ddp_run', total_iter=2, model_type='DynamicSRModel', train_dataset=hes)
    opt['wbsr'] = {'subnet_sampling': 'sandwich', 'inference': {'patch_size': 12, 'overlap': 2}}
    path = write_yaml(tmp_path / 'train.yml', opt)
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port=29533']
    run_cli([*torchrun, f'{REPO_ROOT}/wbsr_plugin/train.py', '-opt', path, '--launcher', 'pytorch'], cwd=tmp_path)
    log = read_train_log(tmp_path / 'experiments' / 'ddp_run')
    assert 'world_size: 2' in log and 'class-level' in log
    assert (tmp_path / 'experiments' / 'ddp_run' / 'models' / 'net_g_latest.pth').is_file()


def test_resumed_run_ends_with_the_weights_of_the_uninterrupted_run(tmp_path):
    # interrupted in the middle of an epoch (4 batches per epoch, checkpoints every 3 iterations); random crops,
    # flips, subnet draws and BDLoss's 'bmc' references all continue as if nothing had happened
    hes = dict(hes_dataset_copy(tmp_path), hes_switch_iter=4, dataset_enlarge_ratio=2)
    opt = train_options('resume_run', total_iter=6, model_type='DynamicSRModel', train_dataset=hes)
    opt['train']['pixel_opt'] = {'type': 'BDLoss', 'estimator': 'bmc', 'scale': 4, 'bmc_num_refs': 8}
    opt['wbsr'] = {'subnet_sampling': 'sandwich', 'calibration_patches': 0, 'dynamic_val': False}
    opt['logger']['save_checkpoint_freq'] = 3
    opt['val']['val_freq'] = 100
    path = write_yaml(tmp_path / 'train.yml', opt)
    run_module('wbsr_plugin.train', '-opt', path, cwd=tmp_path)
    experiment = tmp_path / 'experiments' / 'resume_run'
    uninterrupted = torch.load(experiment / 'models' / 'net_g_latest.pth', map_location='cpu', weights_only=True)
    # what an interruption after iteration 3 leaves behind
    for name in ('models/net_g_6.pth', 'models/net_g_latest.pth', 'training_states/6.state'):
        (experiment / name).unlink()
    run_module('wbsr_plugin.train', '-opt', path, '--auto_resume', cwd=tmp_path)
    assert 'Resuming training from epoch: 0, iter: 3.' in read_train_log(experiment)
    resumed = torch.load(experiment / 'models' / 'net_g_latest.pth', map_location='cpu', weights_only=True)
    for key in ('params', 'params_ema'):
        assert resumed[key].keys() == uninterrupted[key].keys()
        for name, value in uninterrupted[key].items():
            torch.testing.assert_close(resumed[key][name], value, rtol=0, atol=0, msg=f'{key}.{name}')


@pytest.mark.skipif(sys.platform != 'linux', reason='torchrun with gloo is exercised on Linux')
def test_ddp_ranks_end_equal_to_one_process_on_the_combined_batch(tmp_path):
    # protects DDP's gradient averaging under the sandwich rule (three backward passes, one all-reduce)
    from ddp_steps import train
    opt = train_options('ddp_steps', model_type='DynamicSRModel')
    opt['wbsr'] = {'subnet_sampling': 'sandwich', 'calibration_patches': 0, 'dynamic_val': False}
    opt = parsed_options(opt, tmp_path)
    path = write_yaml(tmp_path / 'options.yml', opt)
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}']
    run_cli([*torchrun, osp.join(REPO_ROOT, 'tests', 'models', 'ddp_steps.py'), path, str(tmp_path)], cwd=tmp_path)
    ranks = [torch.load(tmp_path / f'rank{r}.pth', map_location='cpu', weights_only=True) for r in (0, 1)]
    single = train(opt)
    initial = build_network(dict(opt['network_g'])).state_dict().keys()
    assert ranks[0].keys() == ranks[1].keys() == single.keys() == initial
    for name, value in single.items():
        torch.testing.assert_close(ranks[1][name], ranks[0][name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-5, atol=1e-6, msg=name)
