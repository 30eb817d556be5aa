import copy
import json
import os
from os import path as osp

import cv2
import numpy as np
import pytest
import torch
from conftest import FIXTURES, PLAIN_CLASSES, TINY_SUPERNETS_3X3, parsed_options, train_options

from wbsr_plugin import export, subnets
from wbsr_plugin.cli.export_files import ExportError, export_subnets, onnx_max_error, resolve_subnet, write_onnx
from wbsr_plugin.cli.image_io import read_image
from wbsr_plugin.inference.checkpoint import load_supernet, make_wbsr_meta
from wbsr_plugin.inference.engine import DynamicInferenceEngine
from wbsr_runtime.subnet_maps import subnet_colours, subnet_map_legend, subnet_map_overlay

from basicsr.archs import build_network
from basicsr.models import build_model

# 3 widths x 3 depths, as the paper's supernets, at a size that runs in milliseconds.
TINY = TINY_SUPERNETS_3X3
PLAIN = PLAIN_CLASSES
THRESHOLDS = [0.01 * (k + 1) for k in range(9)]


def tiny_supernet(arch, scale):
    torch.manual_seed(0)
    net = build_network({'type': arch, 'upscale': scale, **TINY[arch]})
    with torch.no_grad():  # weights that differ from the init, so every channel slice matters
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return net.eval()


def save_checkpoint(net, path, **meta_extra):
    """A checkpoint as DynamicSRModel.save_network writes it."""
    meta = make_wbsr_meta(net, THRESHOLDS, 16, iteration=1234)
    meta.update(meta_extra)
    torch.save({'params': net.state_dict(), 'wbsr': meta}, path)
    return str(path)


def real_photo(height, width):
    """A crop of a tracked photograph, (1, 3, h, w) RGB in [0, 1]."""
    lq, _ = read_image(osp.join(FIXTURES, 'hr', 'astronaut.png'))
    return lq[..., 3:3 + height, 5:5 + width].contiguous()


@pytest.mark.parametrize('arch', sorted(TINY))
@pytest.mark.parametrize('scale', [2, 4])
def test_exported_checkpoints_load_strict_in_basicsr_and_equal_the_subnets(arch, scale, tmp_path):
    net = tiny_supernet(arch, scale)
    exported = export_subnets(net, range(9), str(tmp_path))
    lq = real_photo(13, 11)
    assert [e.index for e in exported] == list(range(9))
    for entry, spec in zip(exported, net.subnets):
        ckpt = torch.load(tmp_path / entry.files['checkpoint'], map_location='cpu', weights_only=True)
        assert list(ckpt) == ['params']
        options = dict(entry.network_g)
        assert options.pop('type') == PLAIN[arch].__name__
        assert (options['num_feat'], options['num_block'], options['upscale']) == (spec.width, spec.depth, scale)
        plain = PLAIN[arch](**options).eval()
        plain.load_state_dict(ckpt['params'], strict=True)
        assert sum(p.numel() for p in plain.parameters()) == entry.params == spec.params
        with torch.no_grad():
            expected = net(lq, subnet=spec.index)
            assert torch.allclose(plain(lq), expected, atol=1e-5, rtol=0)
        built = build_network(entry.network_g)  # BasicSR's registry builds it from the recorded options
        assert type(built) is PLAIN[arch]
        built.load_state_dict(ckpt['params'], strict=True)
    assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]  # no temporary files left


def test_subnets_are_named_by_index_or_width_and_depth():
    net = tiny_supernet('WBSRResNet', 4)
    assert resolve_subnet(net, 'w12d2') == resolve_subnet(net, '4') == net.subnets[4]
    assert (net.subnets[4].width, net.subnets[4].depth) == (12, 2)
    with pytest.raises(ExportError, match=r"unknown subnet 'w64d16'.*\[0, 8\].*'w8d1'"):
        resolve_subnet(net, 'w64d16')
    with pytest.raises(ExportError, match='unknown subnet 9'):
        resolve_subnet(net, 9)


def test_cli_all_writes_every_subnet_and_an_index(tmp_path, capsys):
    net = tiny_supernet('WBSRRCAN', 2)
    model = save_checkpoint(net, tmp_path / 'net_g.pth')
    out = tmp_path / 'exported'
    export.main(['--model', model, '-o', str(out), '--all', '--no-check'])
    printed = capsys.readouterr().out
    index = json.loads((out / 'index.json').read_text())
    assert index['supernet'] == 'WBSRRCAN' and index['upscale'] == 2 and index['flops_lq_size'] == 32
    assert [s['name'] for s in index['subnets']] == [f'w{s.width}d{s.depth}' for s in net.subnets]
    for record, spec in zip(index['subnets'], net.subnets):
        assert (record['width'], record['depth'], record['params']) == (spec.width, spec.depth, spec.params)
        assert record['gflops'] == pytest.approx(spec.flops / 1e9)
        assert record['files'] == {'checkpoint': f"RCAN_x2_{record['name']}.pth"}
        assert (out / record['files']['checkpoint']).stat().st_size == record['sizes']['checkpoint']
        assert record['name'] in printed
    table = (out / 'index.md').read_text()
    assert '| 8 | 16 | 3 | w16d3 |' in table and 'RCAN_x2_w16d3.pth' in table


def test_cli_exports_one_subnet_by_name(tmp_path, capsys):
    net = tiny_supernet('WBSRResNet', 4)
    model = save_checkpoint(net, tmp_path / 'net_g.pth')
    export.main(['--model', model, '-o', str(tmp_path / 'out'), '--subnet', 'w12d4', '--subnet', '0'])
    assert sorted(os.listdir(tmp_path / 'out')) == ['MSRResNet_x4_w12d4.pth', 'MSRResNet_x4_w8d1.pth']


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    net = tiny_supernet('WBSRResNet', 4)
    model = save_checkpoint(net, tmp_path / 'net_g.pth')
    not_a_supernet = tmp_path / 'edsr.pth'
    torch.save({'params': {'conv_first.weight': torch.zeros(8, 3, 3, 3), 'head.0.weight': torch.zeros(1)}},
               not_a_supernet)
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    cases = [
        (['--model', model, '-o', str(tmp_path / 'o1'), '--subnet', 'w99d1'], "unknown subnet 'w99d1'"),
        (['--model', str(not_a_supernet), '-o', str(tmp_path / 'o2'), '--all'], 'match none of the supernets'),
        (['--model', str(tmp_path / 'missing.pth'), '-o', str(tmp_path / 'o3'), '--all'], 'no such checkpoint'),
        (['--model', model, '-o', str(blocker), '--all'], 'is a file, not a folder'),
        (['--model', model, '-o', str(blocker / 'sub'), '--all'], 'which is a file'),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            export.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and 'Traceback' not in err and err.count('\n') == 1, err
    assert not (tmp_path / 'o1').exists() or not os.listdir(tmp_path / 'o1')


def test_an_export_replaces_nothing_without_overwrite_and_its_index_lists_the_folder(tmp_path, capsys):
    net = tiny_supernet('WBSRResNet', 4)
    model = save_checkpoint(net, tmp_path / 'net_g.pth')
    out = tmp_path / 'out'
    export.main(['--model', model, '-o', str(out), '--all'])
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(SystemExit) as exit_info:  # the same export again: everything exists
        export.main(['--model', model, '-o', str(out), '--all'])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and 'exist already' in err and '--overwrite' in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    (out / 'index.md').unlink()
    (out / 'index.md').mkdir()  # a folder where a file would go: refused even with --overwrite
    with pytest.raises(SystemExit):
        export.main(['--model', model, '-o', str(out), '--all', '--overwrite'])
    assert 'is a folder' in capsys.readouterr().err
    (out / 'index.md').rmdir()
    first = sorted(p.name for p in out.iterdir() if p.suffix == '.pth')
    (out / first[0]).rename(out / 'kept_aside.pth')  # one subnet's checkpoint leaves the folder
    export.main(['--model', model, '-o', str(out), '--subnet', '0', '--overwrite'])
    export.main(['--model', model, '-o', str(out), '--all', '--overwrite'])
    index = (out / 'index.md').read_text()
    assert all(name in index for name in first)  # every file the folder holds, earlier exports' too


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    net = tiny_supernet('WBSRResNet', 2)

    def broken_save(obj, f, *args, **kwargs):
        with open(f, 'wb') as handle:
            handle.write(b'half a checkpoint')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        export_subnets(net, ['w16d4'], str(tmp_path))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('arch, scale', [('WBSRResNet', 4), ('WBSRRCAN', 2)])
def test_onnx_matches_pytorch_on_a_real_photo_of_odd_size(arch, scale, tmp_path):
    pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    net = tiny_supernet(arch, scale)
    spec = net.subnets[4]
    path = str(tmp_path / 'subnet.onnx')
    write_onnx(net, spec, path)
    for height, width in ((37, 29), (16, 45)):  # dynamic height and width
        assert onnx_max_error(path, net, spec, real_photo(height, width)) < 1e-4
    assert onnx_max_error(path, net, spec, torch.cat([real_photo(9, 7)] * 2)) < 1e-4  # dynamic batch


def test_half_precision_onnx(tmp_path):
    onnx = pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    net = tiny_supernet('WBSRResNet', 2)
    path = str(tmp_path / 'half.onnx')
    write_onnx(net, net.subnets[-1], path, fp16=True)
    model = onnx.load(path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert onnx_max_error(path, net, net.subnets[-1], real_photo(15, 21)) < 1e-2


def test_cli_onnx_checks_every_file(tmp_path, capsys):
    pytest.importorskip('onnx')
    pytest.importorskip('onnxruntime')
    net = tiny_supernet('WBSRResNet', 2)
    model = save_checkpoint(net, tmp_path / 'net_g.pth')
    export.main(['--model', model, '-o', str(tmp_path / 'out'), '--subnet', '8', '--onnx-only'])
    assert os.listdir(tmp_path / 'out') == ['MSRResNet_x2_w16d4.onnx']
    error = float(capsys.readouterr().out.split('max |onnx - torch| = ')[1])
    assert error < 1e-4


def test_onnx_without_onnxruntime_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import builtins
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split('.')[0] in ('onnx', 'onnxruntime'):
            raise ImportError(f'No module named {name!r}')
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, '__import__', no_onnx)
    model = save_checkpoint(tiny_supernet('WBSRResNet', 2), tmp_path / 'net_g.pth')
    with pytest.raises(SystemExit):
        export.main(['--model', model, '-o', str(tmp_path / 'out'), '--all', '--onnx'])
    assert 'pip install -e ".[export]"' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def test_model_card_shows_what_the_checkpoint_holds(tmp_path, capsys):
    net = tiny_supernet('WBSRRCAN', 4)
    model = save_checkpoint(net, tmp_path / 'net_g.pth', thresholds_by_patch_size={32: THRESHOLDS, 16: THRESHOLDS})
    subnets.main(['--model', model])
    card = capsys.readouterr().out
    assert 'WBSRRCAN x4: num_feat 16, num_block 3, widths [8, 12, 16], depths [1, 2, 3]' in card
    assert '| training iterations | 1234 |' in card
    assert '10 classes, for 16x16 LR patches: [0.01, 0.02,' in card
    assert card.index('thresholds at 16x16') < card.index('thresholds at 32x32')
    assert all(f'w{s.width}d{s.depth}' in card for s in net.subnets) and '| 100.0 |' in card

    plain = tmp_path / 'plain.pth'
    torch.save({'params': net.state_dict()}, plain)
    with pytest.raises(SystemExit):
        subnets.main(['--model', str(plain)])
    assert 'pass the training options' in capsys.readouterr().err


def test_training_checkpoints_record_their_iteration(tmp_path, capsys):
    opt = train_options('iters', model_type='DynamicSRModel', total_iter=7)
    model = build_model(parsed_options(copy.deepcopy(opt), tmp_path))
    model.save(epoch=0, current_iter=3)
    model.save(epoch=0, current_iter=-1)
    models = tmp_path / 'experiments' / 'iters' / 'models'
    assert load_supernet(str(models / 'net_g_3.pth'))[1]['iter'] == 3
    assert load_supernet(str(models / 'net_g_latest.pth'))[1]['iter'] == 7
    subnets.main(['--model', str(models / 'net_g_latest.pth')])
    assert '| training iterations | 7 |' in capsys.readouterr().out


def to_bgr(sr):
    return np.ascontiguousarray((sr[0].clamp(0, 1).numpy().transpose(1, 2, 0)[:, :, ::-1] * 255).round()
                                .astype(np.uint8))


def test_subnet_map_legend_names_colours_patches_and_flops(tmp_path):
    net = tiny_supernet('WBSRResNet', 4)
    engine = DynamicInferenceEngine(net, patch_size=16, overlap=2)
    sr, report = engine.run(real_photo(80, 72))
    legend = subnet_map_legend(report, lambda h, w, s: net.flops(h, w, subnet=s))
    assert legend.names == report.subnet_names and legend.patches == report.histogram
    assert sum(legend.flops_shares) == pytest.approx(1)
    assert legend.title == f'{report.num_patches} patches, {100 * report.flops_ratio:.1f}% of full FLOPs'
    assert sum(n > 0 for n in report.histogram) > 1
    bgr = to_bgr(sr)
    plain = subnet_map_overlay(bgr, report.plan, 4, len(net.subnets))
    with_legend = subnet_map_overlay(bgr, report.plan, 4, len(net.subnets), legend=legend)
    assert plain.shape == bgr.shape
    height, width = bgr.shape[:2]
    assert with_legend.shape[0] >= height + 4 * 18 and with_legend.shape[1] == width
    assert np.array_equal(with_legend[:height, :width], plain)
    strip = with_legend[height:]
    colours = subnet_colours(len(net.subnets))
    for i in range(len(net.subnets)):  # every subnet's swatch is drawn in the map's colour
        assert (strip == colours[i]).all(axis=2).sum() >= 100
    cv2.imwrite(str(tmp_path / 'map.png'), with_legend)


def test_subnet_map_of_a_whole_image_run_has_one_colour(tmp_path):
    net = tiny_supernet('WBSRResNet', 4)
    engine = DynamicInferenceEngine(net, patch_size=8, overlap=4, subnet=3)  # tiling would cost more
    sr, report = engine.run(real_photo(12, 10))
    if getattr(report.plan, 'whole_image_subnet', None) is None:
        pytest.skip('this engine always tiles')
    legend = subnet_map_legend(report, lambda h, w, s: net.flops(h, w, subnet=s))
    assert legend.title.startswith('whole image') and legend.flops_shares[3] == 1
    overlay = subnet_map_overlay(to_bgr(sr), report.plan, 4, len(net.subnets), legend=legend)
    small = overlay[:48, :40]
    expected = cv2.addWeighted(to_bgr(sr), 0.55, np.broadcast_to(subnet_colours(9)[3], small.shape).copy(), 0.45, 0)
    assert np.array_equal(small, expected)
    assert overlay.shape[1] == 250  # the legend strip stays readable: wider than the image
    cv2.imwrite(str(tmp_path / 'map.png'), overlay)


def test_infer_save_map_writes_the_legend(tmp_path):
    from wbsr_plugin import infer
    model = save_checkpoint(tiny_supernet('WBSRResNet', 4), tmp_path / 'net_g.pth')
    image = osp.join(FIXTURES, 'lr_x4', 'chelsea.png')
    infer.main(['-i', image, '-o', str(tmp_path / 'out'), '--model', model, '--save-map', '-t', '8', '--overlap', '2',
                '--device', 'cpu'])
    sr = cv2.imread(str(tmp_path / 'out' / 'chelsea_out.png'))
    figure = cv2.imread(str(tmp_path / 'out' / 'chelsea_map.png'))
    assert figure.shape[0] > sr.shape[0] + 9 * 18 and figure.shape[1] >= sr.shape[1]


def test_an_export_never_replaces_a_file_that_appeared_while_it_ran(tmp_path):
    """The existing-file check runs before anything is computed; a file that another run writes after it is kept
    (an error), unless the export replaces files (--overwrite). No staging file is left either way."""
    from wbsr_plugin.cli.export_files import write_published
    path = tmp_path / 'MSRResNet_x4_w8d1.pth'
    path.write_text('the other run')

    def write(target):
        with open(target, 'w') as f:
            f.write('this run')

    with pytest.raises(ExportError, match='appeared while exporting .* kept it; pass --overwrite'):
        write_published(str(path), write)
    assert path.read_text() == 'the other run' and os.listdir(tmp_path) == [path.name]
    write_published(str(path), write, replace=True)
    assert path.read_text() == 'this run' and os.listdir(tmp_path) == [path.name]
