"""``export --dynamic``: a folder that the torch-free runtime loads, written whole or not at all, never replacing
an existing one without --overwrite."""
import json
import os
from os import path as osp

import pytest

from wbsr_plugin import export
from wbsr_plugin.inference.checkpoint import load_supernet
from wbsr_runtime.manifest import Manifest
from wbsr_runtime.sessions import installed

pytestmark = pytest.mark.skipif(not installed('onnxruntime'), reason='onnxruntime is not installed')


def test_the_manifest_holds_the_subnets_flops_and_the_checkpoint_metadata(tiny_export):
    checkpoint, folder = tiny_export
    net, meta = load_supernet(checkpoint)
    manifest = Manifest.read(folder)
    assert [s.name for s in manifest.subnets] == [s.name for s in net.subnets]
    assert (manifest.arch, manifest.scale, manifest.in_channels) == ('WBSRResNet', 4, 3)
    for h, w in ((1, 1), (17, 23), (480, 270)):
        assert [manifest.flops(h, w, m) for m in range(4)] == [net.flops(h, w, subnet=m) for m in range(4)]
    assert manifest.wbsr['class_errors'] == meta['class_errors'] and manifest.wbsr['patch_size'] == 16
    assert sorted(os.listdir(osp.join(folder, 'subnets'))) == sorted(f'{s.name}.onnx' for s in net.subnets)
    assert not [name for name in os.listdir(osp.dirname(folder)) if name.startswith('.')]  # no staging left


def test_an_existing_folder_is_kept_unless_overwrite(tiny_export, capsys):
    checkpoint, folder = tiny_export
    manifest = osp.join(folder, 'manifest.json')
    with open(manifest) as f:
        before = f.read()
    with open(manifest, 'w') as f:
        f.write('{"mine": 1}')
    with pytest.raises(SystemExit) as exit_info:
        export.main(['--model', checkpoint, '-o', folder, '--dynamic'])
    assert exit_info.value.code == 2 and 'exists; choose another name or pass --overwrite' in capsys.readouterr().err
    with open(manifest) as f:
        assert json.load(f) == {'mine': 1}
    assert export.main(['--model', checkpoint, '-o', folder, '--dynamic', '--overwrite', '--no-check']) in (0, None)
    with open(manifest) as f:
        assert f.read() == before
    assert not [name for name in os.listdir(osp.dirname(folder)) if name.startswith('.')]


def test_dynamic_takes_no_weights_options(tiny_export, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main(['--model', tiny_export[0], '-o', tiny_export[1] + '2', '--dynamic', '--format', 'safetensors'])
    assert exit_info.value.code == 2 and '--dynamic writes fp32 ONNX and a manifest' in capsys.readouterr().err
