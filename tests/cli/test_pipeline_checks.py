"""``train`` and ``test`` check their command line and option file before BasicSR starts: one ``error:`` line and
status 2 instead of a usage block or a traceback, and no experiment or result folder made."""
import glob
import os
import sys
from os import path as osp

import pytest
import torch
from conftest import REPO_ROOT, TINY_RESNET, run_cli, train_options, write_yaml

from wbsr_plugin.cli.options_yaml import read_option_file
from wbsr_plugin.cli.pipeline_checks import check_pipeline_options
from wbsr_plugin.cli.pipeline_options import TEST_KEYS, TRAIN_KEYS, check_keys


def run_options(name='checked'):
    """Options of a ``test`` run on the fixtures (BasicSR's test pipeline)."""
    opt = train_options(name)
    opt['datasets'] = {'test_1': opt['datasets']['val']}
    opt['val'] = {'save_img': False, 'metrics': opt['val']['metrics']}
    return opt


def without(opt, dotted):
    *parents, last = dotted.split('.')
    section = opt
    for key in parents:
        section = section[key]
    del section[last]
    return opt


def error_of(argv, command, capsys):
    """``(status, the error line)`` of checking a command line, and whether any folder appeared."""
    with pytest.raises(SystemExit) as info:
        check_pipeline_options(list(argv), command)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if 'error:' in line]
    assert len(lines) == 1 and 'usage:' not in err and 'Traceback' not in err, err
    return info.value.code, lines[0]


@pytest.mark.parametrize('command, key', [('train', k) for k in TRAIN_KEYS] + [('test', k) for k in TEST_KEYS])
def test_every_key_basicsr_reads_without_a_default_is_checked(tmp_path, monkeypatch, capsys, command, key):
    monkeypatch.chdir(tmp_path)
    opt = without(train_options('checked') if command == 'train' else run_options(), key)
    path = write_yaml(tmp_path / 'opt.yml', opt)
    status, line = error_of(['-opt', path], command, capsys)
    assert status == 2 and f"{key} missing; BasicSR's {command} reads it without a default" in line
    assert os.listdir(tmp_path) == ['opt.yml']


def test_complete_option_files_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_pipeline_options(['-opt', write_yaml(tmp_path / 'train.yml', train_options('checked'))], 'train')
    check_pipeline_options(['-opt', write_yaml(tmp_path / 'test.yml', run_options())], 'test')
    for path in glob.glob(osp.join(REPO_ROOT, 'options', '*.yml')):  # the shipped files name every key
        check_keys(read_option_file(path), 'test' if osp.basename(path).startswith('test_') else 'train')


@pytest.mark.parametrize('command, phase, key, value, message', [
    ('train', 'train', 'dataroot_gt', 'missing_hr', 'datasets.train.dataroot_gt: no such folder'),
    ('train', 'val', 'dataroot_lq', 'missing_lr', 'datasets.val.dataroot_lq: no such folder'),
    ('train', 'train', 'meta_info_file', 'missing.txt', 'datasets.train.meta_info_file: no such file'),
    ('test', 'test_1', 'dataroot_lq', 'missing_lr', 'datasets.test_1.dataroot_lq: no such folder'),
])
def test_dataset_paths_are_checked(tmp_path, monkeypatch, capsys, command, phase, key, value, message):
    monkeypatch.chdir(tmp_path)
    opt = train_options('checked') if command == 'train' else run_options()
    opt['datasets'][phase][key] = str(tmp_path / value)
    status, line = error_of(['-opt', write_yaml(tmp_path / 'opt.yml', opt)], command, capsys)
    assert status == 2 and message in line and os.listdir(tmp_path) == ['opt.yml']


def test_an_lmdb_is_checked_for_its_files(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'hr.lmdb').mkdir()
    opt = train_options('checked')
    opt['datasets']['train'].update(dataroot_gt=str(tmp_path / 'hr.lmdb'), io_backend={'type': 'lmdb'})
    status, line = error_of(['-opt', write_yaml(tmp_path / 'opt.yml', opt)], 'train', capsys)
    assert status == 2 and 'is not a complete LMDB (no data.mdb)' in line


def test_a_prior_path_that_is_not_a_prior(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.save({'params': {'w': torch.zeros(2)}}, tmp_path / 'weights.pth')
    opt = train_options('checked')
    opt['train']['pixel_opt'] = {'type': 'BDLoss', 'prior_path': str(tmp_path / 'weights.pth'), 'scale': 4}
    status, line = error_of(['-opt', write_yaml(tmp_path / 'opt.yml', opt)], 'train', capsys)
    assert status == 2 and 'train.pixel_opt.prior_path:' in line and 'is not a BDLoss prior' in line
    assert 'fit_prior' in line and sorted(os.listdir(tmp_path)) == ['opt.yml', 'weights.pth']


def test_pretrained_weights_that_are_not_finite(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.save({'params': {'conv.weight': torch.tensor([1., float('nan')])}}, tmp_path / 'nan.pth')
    opt = train_options('checked', network=TINY_RESNET)
    opt['path']['pretrain_network_g'] = str(tmp_path / 'nan.pth')
    status, line = error_of(['-opt', write_yaml(tmp_path / 'opt.yml', opt)], 'train', capsys)
    assert status == 2 and 'path.pretrain_network_g' in line and 'not finite (NaN or Inf) in params.conv.weight' in line


@pytest.mark.parametrize('argv, message', [
    ([], 'the following arguments are required: -opt'),
    (['-opt', 'x.yml', '--launcher', 'mpi'], "argument --launcher: invalid choice: 'mpi'"),
    (['-opt', 'x.yml', '--force_yml', 'a"]=1;import os;x=["=2'], 'expected KEY:KEY=VALUE'),
    (['-opt', 'x.yml', '--bogus'], 'unrecognized arguments: --bogus'),
])
@pytest.mark.parametrize('command', ['train', 'test'])
def test_command_line_errors_are_one_line(tmp_path, monkeypatch, capsys, command, argv, message):
    monkeypatch.chdir(tmp_path)
    status, line = error_of(argv, command, capsys)
    assert status == 2 and message in line and os.listdir(tmp_path) == []


def test_force_yml_sets_only_keys_that_exist(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_yaml(tmp_path / 'opt.yml', train_options('checked'))
    check_pipeline_options(['-opt', path, '--force_yml', 'train:total_iter=2'], 'train')
    status, line = error_of(['-opt', path, '--force_yml', 'train:nope=2'], 'train', capsys)
    assert status == 2 and 'has no option train.nope to set' in line


@pytest.mark.parametrize('command, change, message', [
    ('train', lambda opt: opt.pop('num_gpu'), "num_gpu missing; BasicSR's train reads it without a default"),
    ('train', lambda opt: opt['datasets']['train'].update(dataroot_gt='missing'), 'no such folder: missing'),
    ('test', lambda opt: opt['datasets']['test_1'].update(dataroot_lq='missing'), 'no such folder: missing'),
])
def test_the_commands_end_with_one_line_and_no_folder(tmp_path, command, change, message):
    opt = train_options('checked') if command == 'train' else run_options()
    change(opt)
    path = write_yaml(tmp_path / 'opt.yml', opt)
    proc = run_cli([sys.executable, '-m', f'wbsr_plugin.{command}', '-opt', path], cwd=str(tmp_path), check=False)
    assert proc.returncode == 2 and message in proc.stderr and 'Traceback' not in proc.stderr
    assert proc.stderr.count('error:') == 1 and os.listdir(tmp_path) == ['opt.yml']


def test_an_option_file_whose_aliases_expand_without_bound(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    layers = ''.join(f'l{i}: &l{i} [' + ', '.join([f'*l{i - 1}' if i else '1'] * 10) + ']\n' for i in range(9))
    (tmp_path / 'bomb.yml').write_text(layers + 'name: *l8\n')
    for command in ('train', 'test'):
        status, line = error_of(['-opt', 'bomb.yml'], command, capsys)
        assert status == 2 and 'its aliases expand to more than 100000 values' in line
