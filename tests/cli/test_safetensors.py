"""Weights as .safetensors: export, strict BasicSR loads, --model, pretrain_network_g, and one-line errors."""
import json
import struct

import pytest
import torch
from conftest import FIXTURES, PLAIN_CLASSES, TINY_SUPERNETS_3X3, plain_network
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from wbsr_plugin import export, infer
from wbsr_plugin.cli.export_files import ExportFormats, export_subnets
from wbsr_plugin.cli.image_io import read_image
from wbsr_plugin.cli.pipeline_options import check_pretrained
from wbsr_plugin.inference.checkpoint import load_supernet, make_wbsr_meta
from wbsr_plugin.utils.checkpoint_files import CheckpointError, load_checkpoint_file, load_weights_file

from basicsr.archs import build_network
from basicsr.models.base_model import BaseModel

THRESHOLDS = [0.01 * (k + 1) for k in range(9)]


def tiny_supernet(arch, scale=4):
    torch.manual_seed(0)
    net = build_network({'type': arch, 'upscale': scale, **TINY_SUPERNETS_3X3[arch]})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net.eval()


def save_checkpoint(net, path):
    meta = make_wbsr_meta(net, THRESHOLDS, 16, iteration=7)
    torch.save({'params': net.state_dict(), 'wbsr': meta}, path)
    return str(path), meta


def photo(height=13, width=11):
    lq, _ = read_image(f'{FIXTURES}/hr/astronaut.png')
    return lq[..., :height, :width].contiguous()


@pytest.mark.parametrize('arch', sorted(TINY_SUPERNETS_3X3))
def test_a_safetensors_subnet_loads_strict_in_basicsr_and_runs_in_infer(arch, tmp_path, capsys):
    net = tiny_supernet(arch)
    model, _ = save_checkpoint(net, tmp_path / 'net_g.pth')
    spec = net.subnets[4]
    out = tmp_path / 'out'
    export.main(['--model', model, '-o', str(out), '--subnet', spec.name, '--format', 'safetensors'])
    path = out / f'{PLAIN_CLASSES[arch].__name__}_x4_{spec.name}.safetensors'
    plain = plain_network(arch, spec.width, spec.depth, sizes=TINY_SUPERNETS_3X3)
    plain.load_state_dict(load_file(str(path)), strict=True)
    lq = photo()
    with torch.no_grad():
        assert torch.allclose(plain.eval()(lq), net(lq, subnet=spec.index), atol=1e-5, rtol=0)
    with safe_open(str(path), framework='pt') as f:
        header = json.loads(f.metadata()['wbsr'])
    assert header['subnet']['subnet'] == spec.name and header['subnet']['architecture'] == PLAIN_CLASSES[arch].__name__
    assert (header['subnet']['width'], header['subnet']['depth'], header['subnet']['scale']) == (spec.width,
                                                                                                 spec.depth, 4)
    loaded, meta = load_supernet(str(path))  # a supernet of that one subnet
    assert [(s.width, s.depth) for s in loaded.subnets] == [(spec.width, spec.depth)] and meta['patch_size'] == 16
    capsys.readouterr()
    infer.main(['-i', f'{FIXTURES}/lr_x4/chelsea.png', '-o', str(tmp_path / 'sr'), '--model', str(path)])
    assert (tmp_path / 'sr').is_dir() and len(list((tmp_path / 'sr').iterdir())) == 1
    assert f'whole image through {spec.name}' in capsys.readouterr().out


def test_one_file_output_and_the_supernet_convert_losslessly(tmp_path, capsys):
    net = tiny_supernet('WBSRRCAN')
    model, meta = save_checkpoint(net, tmp_path / 'net_g.pth')
    export.main(['--model', model, '-o', str(tmp_path / 'w12d2.safetensors'), '--subnet', 'w12d2'])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['net_g.pth', 'w12d2.safetensors']
    export.main(['--model', model, '-o', str(tmp_path / 'net_g.safetensors'), '--supernet'])
    converted, converted_meta = load_supernet(str(tmp_path / 'net_g.safetensors'))
    assert converted_meta == json.loads(json.dumps(meta))  # the 'wbsr' entry as JSON keeps it
    assert all(torch.equal(a, b) for a, b in zip(converted.state_dict().values(), net.state_dict().values()))
    lq = photo()
    with torch.no_grad():
        assert torch.equal(converted(lq, subnet=3), net(lq, subnet=3))
    capsys.readouterr()
    cases = [(['-o', str(tmp_path / 'a.safetensors'), '--all'], 'names one file'),
             (['-o', str(tmp_path / 'b.safetensors'), '--subnet', '0', '--onnx'], 'written into a folder'),
             (['-o', str(tmp_path / 'c.pth'), '--subnet', '0', '--format', 'safetensors'], 'is a .pth file'),
             (['-o', str(tmp_path / 'w12d2.safetensors'), '--subnet', '1'], 'exist already')]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            export.main(['--model', model] + argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count('\n') == 1, err


def test_pretrain_network_g_reads_safetensors(tmp_path):
    """``path.pretrain_network_g`` goes through BasicSR's ``BaseModel.load_network`` (patched by the package)."""

    class Model:
        get_bare_model = staticmethod(lambda net: net)
        _print_different_keys_loading = staticmethod(lambda *args: None)

    source = tiny_supernet('WBSRResNet')
    export_subnets(source, [8], str(tmp_path), formats=ExportFormats(weights_format='safetensors'))
    plain = plain_network('WBSRResNet', 16, 4, sizes=TINY_SUPERNETS_3X3)
    path = str(tmp_path / 'MSRResNet_x4_w16d4.safetensors')
    BaseModel.load_network(Model(), plain, path, strict=True, param_key='params_ema')  # falls back to params
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), source.state_dict().values()))
    check_pretrained({'path': {'pretrain_network_g': path}})  # the check before training reads it too


def truncated(tmp_path):
    path = tmp_path / 'cut.safetensors'
    save_file({'w': torch.zeros(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:200])
    return path


def bad_header(tmp_path):
    path = tmp_path / 'header.safetensors'
    save_file({'w': torch.zeros(2)}, str(path), metadata={'wbsr': '{not json'})
    return path


BAD_FILES = {
    'text': (lambda tmp: tmp / 'notes.safetensors', b'weights are on the server\n',
             'is not a safetensors file (a text file)'),
    'html': (lambda tmp: tmp / 'page.safetensors', b'<!DOCTYPE html><html></html>', '(an HTML page'),
    'lfs': (lambda tmp: tmp / 'lfs.safetensors', b'version https://git-lfs.github.com/spec/v1\n', 'git-LFS pointer'),
    'empty': (lambda tmp: tmp / 'empty.safetensors', b'', 'is empty'),
    'huge header': (lambda tmp: tmp / 'huge.safetensors', struct.pack('<Q', 10**9) + b'{}', 'not a safetensors file'),
    'truncated': (truncated, None, 'a truncated or corrupt safetensors file'),
    'header': (bad_header, None, "its 'wbsr' header entry is not JSON"),
}


@pytest.mark.parametrize('case', sorted(BAD_FILES))
def test_a_bad_safetensors_file_gets_one_line(case, tmp_path, capsys):
    make, content, message = BAD_FILES[case]
    path = make(tmp_path)
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_weights_file(str(path))
    text = str(info.value)
    assert message in text and str(path) in text and '\n' not in text
    with pytest.raises(SystemExit) as exit_info:
        infer.main(['-i', f'{FIXTURES}/lr_x4', '-o', str(tmp_path / 'sr'), '--model', str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count('\n') == 1 and 'Traceback' not in err


def test_safetensors_never_run_code_and_training_states_stay_pth(tmp_path):
    target = tmp_path / 'pwned'

    class Evil:
        def __reduce__(self):
            return (open, (str(target), 'w'))

    disguised = tmp_path / 'evil.safetensors'  # a pickle under the extension
    torch.save({'params': {'w': torch.zeros(1)}, 'payload': Evil()}, disguised)
    with pytest.raises(CheckpointError, match='is not a safetensors file \\(a PyTorch checkpoint: name it .pth'):
        load_weights_file(str(disguised))
    assert not target.exists()
    weights = tmp_path / 'net.safetensors'
    save_file({'w': torch.zeros(1)}, str(weights))
    assert torch.equal(load_weights_file(str(weights))['params']['w'], torch.zeros(1))
    with pytest.raises(CheckpointError, match='a safetensors file, which holds network weights only'):
        load_checkpoint_file(str(weights))  # what training states and priors are read with
