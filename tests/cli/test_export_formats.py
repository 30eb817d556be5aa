"""Exported files other tools load: RCAN subnets in spandrel, ONNX metadata, fp16 weights with fp32 input and
output."""
import json
from importlib.metadata import version

import pytest
import torch
from conftest import FIXTURES, TINY_SUPERNETS_3X3, plain_network
from safetensors.torch import load_file

from wbsr_plugin import export
from wbsr_plugin.cli.export_files import ExportError, ExportFormats, export_subnets, onnx_max_error
from wbsr_plugin.cli.image_io import read_image

from basicsr.archs import build_network


def tiny_supernet(arch, scale, **options):
    torch.manual_seed(scale)
    net = build_network({'type': arch, 'upscale': scale, **TINY_SUPERNETS_3X3[arch], **options})
    with torch.no_grad():  # weights that differ from the init, so every channel slice matters
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net.eval()


def photo(height, width):
    lq, _ = read_image(f'{FIXTURES}/hr/coffee.png')
    return lq[..., 7:7 + height, 3:3 + width].contiguous()


@pytest.mark.parametrize('scale, weights_format, options', [
    (2, 'pth', {}), (3, 'safetensors', {}), (4, 'pth', {}),
    (4, 'safetensors', {'img_range': 1., 'rgb_mean': (0.5, 0.25, 0.125)}),
])
def test_spandrel_loads_every_exported_rcan_subnet_and_matches_ours(scale, weights_format, options, tmp_path):
    spandrel = pytest.importorskip('spandrel')
    net = tiny_supernet('WBSRRCAN', scale, **options)
    formats = ExportFormats(weights_format=weights_format, spandrel=True)
    exported = export_subnets(net, range(len(net.subnets)), str(tmp_path), formats=formats)
    lq = photo(11, 14)
    for entry, spec in zip(exported, net.subnets):
        descriptor = spandrel.ModelLoader().load_from_file(str(tmp_path / entry.files['spandrel']))
        assert descriptor.architecture.id == 'RCAN' and descriptor.scale == scale
        assert descriptor.tags[0] == f'{spec.width}nf' and descriptor.tags[2] == f'{spec.depth}nrb'
        plain = build_network(entry.network_g)  # BasicSR's RCAN, with the mean and range of the supernet
        path = str(tmp_path / entry.files['checkpoint'])
        plain.load_state_dict(load_file(path) if weights_format == 'safetensors' else torch.load(path)['params'],
                              strict=True)
        with torch.no_grad():
            ours = plain.eval()(lq)
            theirs = descriptor.model.eval()(lq.clone())
        assert torch.allclose(net(lq, subnet=spec.index), ours, atol=1e-5, rtol=0)
        assert (theirs.clamp(0, 1) - ours.clamp(0, 1)).abs().max() < 1e-5


@pytest.mark.parametrize('arch', ['WBSRResNet', 'WBSREDSR'])
def test_no_spandrel_file_where_spandrel_has_no_architecture(arch, tmp_path):
    net = tiny_supernet(arch, 4)
    with pytest.raises(ExportError, match='spandrel has no .* architecture; use the ONNX export'):
        export_subnets(net, [0], str(tmp_path), formats=ExportFormats(spandrel=True))
    assert not list(tmp_path.iterdir())


def test_onnx_metadata_props_describe_the_subnet(tmp_path, capsys):
    onnx = pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    net = tiny_supernet('WBSRResNet', 4)
    model = tmp_path / 'net_g.pth'
    torch.save({'params': net.state_dict()}, model)
    out = tmp_path / 'out'
    export.main(['--model', str(model), '-o', str(out), '--all', '--onnx', '--no-check',
                 '--opt', str(write_options(tmp_path, net))])
    index = json.loads((out / 'index.json').read_text())
    record = next(r for r in index['subnets'] if r['name'] == 'w12d2')
    props = {p.key: p.value for p in onnx.load(str(out / 'MSRResNet_x4_w12d2.onnx')).metadata_props}
    assert (props['architecture'], props['supernet'], props['scale'], props['subnet']) == (
        'MSRResNet', 'WBSRResNet', '4', 'w12d2')
    assert (props['width'], props['depth'], props['precision']) == ('12', '2', 'fp32')
    assert json.loads(props['widths']) == [8, 12, 16] and json.loads(props['depths']) == [1, 2, 4]
    assert props['wbsr_plugin_version'] == version('wbsr_plugin')
    assert int(props['params']) == sum(p.numel() for p in plain_network('WBSRResNet', 12, 2,
                                                                          sizes=TINY_SUPERNETS_3X3).parameters())
    network_g = json.loads(props['network_g'])
    assert network_g == record['network_g'] and build_network(network_g).__class__.__name__ == 'MSRResNet'
    for key in ('index', 'gflops', 'percent', 'flops_lq_size', 'upscale'):  # the fields of index.json
        assert json.loads(props[key]) == {**index, **record}[key]
    assert props['source'] == str(model)


def write_options(folder, net):
    path = folder / 'train.yml'
    path.write_text(f"network_g: {json.dumps(net.network_options())}\n")
    return path


def test_fp16_weights_onnx_takes_and_gives_float32(tmp_path):
    onnx = pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    pytest.importorskip('onnxconverter_common')
    net = tiny_supernet('WBSRRCAN', 2)
    formats = ExportFormats(checkpoint=False, onnx_precisions=('fp32', 'fp16-weights'))
    entry = export_subnets(net, [8], str(tmp_path), formats=formats, check_lq=photo(15, 21))[0]
    assert set(entry.files) == {'onnx', 'onnx_fp16w'} and entry.files['onnx_fp16w'].endswith('_fp16w.onnx')
    model = onnx.load(str(tmp_path / entry.files['onnx_fp16w']))
    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == float32
    assert model.graph.output[0].type.tensor_type.elem_type == float32
    conv_weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert conv_weights and all(t.data_type == float16 for t in conv_weights)
    assert {p.key: p.value for p in model.metadata_props}['precision'] == 'fp16-weights'
    assert entry.sizes['onnx_fp16w'] < 0.7 * entry.sizes['onnx']
    path = str(tmp_path / entry.files['onnx_fp16w'])
    error = onnx_max_error(path, net, net.subnets[8], photo(19, 13))
    assert 0 < error < 1e-2 and entry.onnx_errors['onnx'] < 1e-4 < entry.onnx_errors['onnx_fp16w'] < 1e-2
