"""The infer command: outputs on the fixtures, bad inputs, failed writes."""
import os
import shutil
import subprocess
import sys
from os import path as osp

import cv2
import pytest
from conftest import FIXTURES, REPO_ROOT

import wbsr_plugin  # noqa: F401
from wbsr_plugin import infer

LR_FIXTURES = osp.join(FIXTURES, 'lr_x4')


ROOT = REPO_ROOT


def run_cli(args):
    return subprocess.run([sys.executable, '-m', 'wbsr_plugin.infer', *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def test_cli_on_fixtures(tiny_checkpoint, tmp_path):
    out = tmp_path / 'out'
    assert infer.main(['-i', LR_FIXTURES, '-o', str(out), '--model', tiny_checkpoint, '--budget', '0.6', '--save-map',
                       '-t', '16']) == 0
    names = sorted(os.listdir(out))
    assert names == sorted([f'{n}_out.png' for n in ('astronaut', 'chelsea', 'coffee', 'rocket')] +
                           [f'{n}_map.png' for n in ('astronaut', 'chelsea', 'coffee', 'rocket')])
    for name in names:
        height, width = cv2.imread(str(out / name)).shape[:2]
        if name.endswith('_map.png'):  # the map, with its legend below
            assert height > 96 and width >= 96
        else:
            assert (height, width) == (96, 96)


def test_cli_bad_inputs_skip_and_fail(tiny_checkpoint, tmp_path, capsys):
    inputs = tmp_path / 'in'
    inputs.mkdir()
    shutil.copy(osp.join(LR_FIXTURES, 'rocket.png'), inputs / 'good.png')
    (inputs / 'empty.png').write_bytes(b'')
    (inputs / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
    out = tmp_path / 'out'
    result = run_cli(['-i', str(inputs), '-o', str(out), '--model', tiny_checkpoint])
    assert result.returncode == 1
    assert 'empty file' in result.stderr and 'cannot decode' in result.stderr
    assert sorted(os.listdir(out)) == ['good_out.png']  # nothing half-written, no temporary files

    good = str(inputs / 'good.png')
    for extra, message in ((['--budget', '1.5'], 'budget'), (['--budget', '0'], 'budget'), (['-s', '2'], 'not x2'),
                           (['--arch', 'WBSRRCAN'], 'not a WBSRRCAN')):
        with pytest.raises(SystemExit) as exit_info:
            infer.main(['-i', good, '-o', str(out), '--model', tiny_checkpoint, *extra])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        infer.main(['-i', good, '-o', str(out), '--model', str(tmp_path / 'nope.pth')])
    assert exit_info.value.code == 2 and 'no such checkpoint' in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ['good_out.png']


def test_failed_write_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / 'out'

    def broken_replace(src, dst):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'replace', broken_replace)
    assert infer.main(['-i', osp.join(LR_FIXTURES, 'rocket.png'), '-o', str(out), '--model', tiny_checkpoint]) == 1
    assert os.listdir(out) == []


def test_plans_by_measured_time_are_cached(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('WBSR_CACHE_DIR', str(tmp_path / 'cache'))
    out = tmp_path / 'out'
    argv = ['-i', osp.join(LR_FIXTURES, 'rocket.png'), '-o', str(out), '--model', tiny_checkpoint, '--plan-by', 'time',
            '-t', '16', '--budget', '0.6']
    assert infer.main(argv) == 0
    (table, ) = (tmp_path / 'cache').iterdir()
    assert table.name.startswith('cost_') and (out / 'rocket_out.png').is_file()
    line = next(line for line in capsys.readouterr().out.splitlines() if 'rocket' in line)
    assert 'predicted' in line  # the summary says why the plan ran
    os.utime(table, (1, 1))
    assert infer.main(argv + ['--skip-existing']) == 0 and table.stat().st_mtime == 1  # read from the cache
    assert infer.main(argv + ['--refresh-costs', '--suffix', 'again']) == 0 and table.stat().st_mtime > 1
