"""Files that must never run code or end in a traceback: option files, checkpoints that are not checkpoints."""
import os
import sys

import pytest
import torch
from conftest import run_cli

from wbsr_plugin.utils.checkpoint_files import CheckpointError, load_checkpoint_file

from basicsr.models.base_model import BaseModel


class Evil:
    """Unpickling this touches ``path`` (it must never happen)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


def evil_checkpoint(folder):
    """A checkpoint whose unpickling creates ``folder/pwned``."""
    path, target = folder / 'evil.pth', folder / 'pwned'
    torch.save({'params': {'w': torch.zeros(1)}, 'payload': Evil(str(target))}, path)
    return str(path), target


NOT_CHECKPOINTS = {
    'empty.pth': (b'', 'is empty, not a PyTorch checkpoint'),
    'notes.pth': (b'weights are on the server\n', 'is not a PyTorch checkpoint (a text file)'),
    'page.pth': (b'<!DOCTYPE html><html><body>404</body></html>', 'is not a PyTorch checkpoint (an HTML page'),
    'lfs.pth': (b'version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 42\n', 'a git-LFS pointer'),
    'noise.pth': (bytes(range(256)) * 4, 'is not a PyTorch checkpoint (unrecognised bytes)'),
}


@pytest.mark.parametrize('name', sorted(NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint_gets_one_line(tmp_path, name):
    content, message = NOT_CHECKPOINTS[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(str(path))
    text = str(info.value)
    assert message in text and str(path) in text and '\n' not in text and 'weights_only=False' not in text


def test_a_checkpoint_with_python_objects_runs_nothing(tmp_path, monkeypatch):
    path, target = evil_checkpoint(tmp_path)
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')  # torch's switch back to full unpickling
    with pytest.raises(CheckpointError, match='holds Python objects besides tensors, which are never loaded') as info:
        load_checkpoint_file(path)
    assert not target.exists() and 'weights_only=False' not in str(info.value)
    with pytest.raises(CheckpointError, match='is a folder, not a checkpoint'):
        load_checkpoint_file(str(tmp_path))
    with pytest.raises(CheckpointError, match='no such checkpoint'):
        load_checkpoint_file(str(tmp_path / 'missing.pth'))


def test_basicsr_load_network_reads_tensors_only(tmp_path, monkeypatch):
    """``path.pretrain_network_g`` goes through BasicSR's ``BaseModel.load_network``, patched by the package."""

    class Model:
        get_bare_model = staticmethod(lambda net: net)
        _print_different_keys_loading = staticmethod(lambda *args: None)

    net = torch.nn.Linear(2, 2)
    good = tmp_path / 'good.pth'
    torch.save({'params': {k: torch.full_like(v, 0.5) for k, v in net.state_dict().items()}}, good)
    BaseModel.load_network(Model(), net, str(good))
    assert torch.equal(net.weight, torch.full_like(net.weight, 0.5))
    path, target = evil_checkpoint(tmp_path)
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    with pytest.raises(CheckpointError):
        BaseModel.load_network(Model(), net, path)
    assert not target.exists()


EVIL_YAML = 'name: !!python/object/apply:os.system ["touch {target}"]\nmodel_type: DynamicSRModel\n'


@pytest.mark.parametrize('command', ['train', 'test'])
def test_option_files_run_no_code(tmp_path, command):
    target = tmp_path / 'pwned'
    evil = tmp_path / 'evil.yml'
    evil.write_text(EVIL_YAML.format(target=target))
    proc = run_cli([sys.executable, '-m', f'wbsr_plugin.{command}', '-opt', str(evil)], cwd=str(tmp_path), check=False)
    assert proc.returncode == 2 and not target.exists()
    assert 'Traceback' not in proc.stderr and proc.stderr.count('error:') == 1
    assert f'-opt: {evil} is not a valid option file (line 1)' in proc.stderr
    assert 'Python tags are not allowed' in proc.stderr
    assert os.listdir(tmp_path) == ['evil.yml']  # no experiment or result folder either


def test_a_pretrained_network_that_is_not_a_checkpoint_stops_before_training(tmp_path):
    notes = tmp_path / 'net.pth'
    notes.write_text('not weights')
    opt = tmp_path / 'opt.yml'
    opt.write_text(f'name: x\nmodel_type: DynamicSRModel\npath:\n  pretrain_network_g: {notes}\n')
    proc = run_cli([sys.executable, '-m', 'wbsr_plugin.train', '-opt', str(opt)], cwd=str(tmp_path), check=False)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr
    assert f'error: {opt}: path.pretrain_network_g: {notes} is not a PyTorch checkpoint (a text file)' in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ['net.pth', 'opt.yml']

