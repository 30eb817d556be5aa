"""The infer command: outputs on the fixtures, bad inputs, failed writes."""
import os
import re
import shutil
import subprocess
import sys
from os import path as osp

import cv2
import pytest
import torch
from conftest import FIXTURES, REPO_ROOT, TINY_RESNET

import wbsr_plugin  # noqa: F401
from wbsr_plugin import infer
from wbsr_plugin.inference.checkpoint import WBSR_KEY, make_wbsr_meta

from basicsr.archs import build_network

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

    good, fresh = str(inputs / 'good.png'), tmp_path / 'fresh'
    for extra, message in ((['--budget', '1.5'], 'budget'), (['--budget', '0'], 'budget'), (['-s', '2'], 'not x2'),
                           (['--arch', 'WBSRRCAN'], 'not a WBSRRCAN')):
        with pytest.raises(SystemExit) as exit_info:
            infer.main(['-i', good, '-o', str(fresh), '--model', tiny_checkpoint, *extra])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        infer.main(['-i', good, '-o', str(fresh), '--model', str(tmp_path / 'nope.pth')])
    assert exit_info.value.code == 2 and 'no such checkpoint' in capsys.readouterr().err
    assert not fresh.exists() and sorted(os.listdir(out)) == ['good_out.png']  # nothing made, nothing changed


def test_failed_write_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / 'out'

    def broken_publish(src, dst):
        raise OSError('disk full')

    monkeypatch.setattr(os, 'replace', broken_publish)  # with --overwrite
    monkeypatch.setattr(os, 'link', broken_publish)  # without it (a new name only)
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


def test_latency_budget_and_quality_target_options(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('WBSR_CACHE_DIR', str(tmp_path / 'cache'))
    rocket = osp.join(LR_FIXTURES, 'rocket.png')
    argv = ['-i', rocket, '-o', str(tmp_path / 'out'), '--model', tiny_checkpoint, '-t', '16']
    assert infer.main(argv + ['--budget', '0.6', '--budget-unit', 'time']) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if 'rocket' in line)
    assert 'latency budget 0.6' in line and len(list((tmp_path / 'cache').iterdir())) == 1
    for bad, message in ((['--budget-unit', 'time'], 'budget_unit time needs a budget'),
                         (['--budget', '0.5', '--budget-unit', 'time', '--plan-by', 'flops'], 'drop plan_by flops'),
                         (['--max-loss', '-1'], "max_loss must be a loss in dB >= 0 or 'off', got '-1'"),
                         (['--max-loss', '0.1'], 'max_loss (a quality target) needs class errors')):
        with pytest.raises(SystemExit) as exit_info:
            infer.main(argv + bad + ['--overwrite'])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_quality_target_with_class_errors(tmp_path, capsys):
    net = build_network(dict(TINY_RESNET, upscale=4)).eval()
    # stored without counts: planned by the bound 1 + 4 x excess, [1.8, 1.4, 1.2, 1.0]: 2.55, 1.46, 0.79, 0 dB
    errors = [[1.2, 1.1, 1.05, 1.0]] * 10
    path = str(tmp_path / 'net.pth')
    torch.save({'params': net.state_dict(),
                WBSR_KEY: make_wbsr_meta(net, [2. * k for k in range(1, 10)], 16, class_errors=errors)}, path)
    out = tmp_path / 'out'
    assert infer.main(['-i', osp.join(LR_FIXTURES, 'rocket.png'), '-o', str(out), '--model', path, '-t', '16',
                       '--max-loss', '0.9']) == 0
    captured = capsys.readouterr()
    line = next(line for line in captured.out.splitlines() if 'rocket' in line)
    assert 'quality target 0.9 dB: fastest (by FLOPs)' in line and (out / 'rocket_out.png').is_file()
    expected = float(re.search(r'within it \((-?[0-9.]+) dB\)', line).group(1))
    assert 0 < expected <= 0.9
    assert 'expected loss: class errors stored without counts' in captured.err and 'x4' in captured.err
    # the default with class errors is a quality target of 0.03 dB; 'off', a budget or a subnet give it up
    rocket = ['-i', osp.join(LR_FIXTURES, 'rocket.png'), '-o', str(out), '--model', path, '-t', '16', '--overwrite']
    for extra, target in (([], True), (['--max-loss', 'off'], False), (['--budget', '0.6'], False),
                          (['--subnet', '1'], False)):
        assert infer.main(rocket + extra) == 0
        line = next(line for line in capsys.readouterr().out.splitlines() if 'rocket' in line)
        assert ('quality target 0.03 dB' in line) == target, (extra, line)
