"""The bad-input matrix of ``infer`` that applies to the torch-free ``wbsr-run``, and the export folder's own bad
cases: the same exit status 2, one ``error:`` line, no traceback, and the output folder as it was."""
import json
import os
import shutil

import pytest
from test_bad_inputs import CASES, IMAGE, files, snapshot  # noqa: F401  (files: the fixture of bad files)

from wbsr_runtime import cli
from wbsr_runtime.sessions import installed

pytestmark = pytest.mark.skipif(not installed('onnxruntime'), reason='onnxruntime is not installed')
# infer's cases that name no checkpoint file and no option file: the options both commands share
SHARED = [(argv, message) for command, argv, message in CASES
          if command == 'infer' and '{model}' in argv and '--opt' not in argv]
OWN = [('-i {image} -o {out}/x --model {model}', 'is not a folder'),
       ('-i {image} -o {out}/x --model {out}', 'has no manifest.json'),
       ('-i {image} -o {out}/x --model {outside}', 'lies outside the export folder'),
       ('-i {image} -o {out}/x --model {export} --subnet w99d9', 'subnet must be an index'),
       ('-i {image} -o {out}/x --model {export} --budget 0.5 --budget-unit time', 'needs a cost table of this machine'),
       ('-i {image} -o {out}/x --model {export} --plan-by time', 'needs a cost table of this machine'),
       ('-i {image} -o {out}/x --model {export} --precision bf16 --runtime onnxruntime', 'fp32 only'),
       ('-i {image} -o {out}/x --model {export} --suffix a/b', 'without a path separator')]


@pytest.fixture
def exported(tiny_export, files, tmp_path):  # noqa: F811
    """The bad files, a good export, and an export whose manifest names a file outside its folder."""
    outside = str(tmp_path / 'outside.wbsr')
    shutil.copytree(tiny_export[1], outside)
    with open(os.path.join(outside, 'manifest.json')) as f:
        manifest = json.load(f)
    manifest['subnets'][0]['file'] = '../tiny.wbsr/subnets/w8d1.onnx'
    with open(os.path.join(outside, 'manifest.json'), 'w') as f:
        json.dump(manifest, f)
    return dict(files, export=tiny_export[1], outside=outside)


@pytest.mark.parametrize('argv, message', SHARED + OWN, ids=[a for a, _ in SHARED + OWN])
def test_bad_input(exported, tmp_path, capsys, argv, message):
    values = dict(exported, image=IMAGE, missing=str(tmp_path / 'missing'))
    if argv in (a for a, _ in SHARED):
        values['model'] = exported['export']  # what wbsr-run loads where infer loads the checkpoint
    before = snapshot(exported['out'])
    try:
        status = cli.main(argv.format(**values).split())
    except SystemExit as exit_info:
        status = exit_info.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if 'error:' in line]
    assert status == 2, err
    assert len(lines) == 1 and (lines[0].startswith('error:') or ': error: ' in lines[0]), err
    assert message.format(**values) in lines[0] and 'Traceback' not in err
    assert snapshot(exported['out']) == before


def test_random_bytes_as_an_image_fail_that_image_only(exported, capsys):
    status = cli.main(['-i', exported['noise_png'], '-o', exported['out'] + '/x', '--model', exported['export']])
    err = capsys.readouterr().err
    assert status == 1 and 'Traceback' not in err and 'error:' not in err
    assert err.count(f"warning: skipped {exported['noise_png']}: cannot decode") == 1
    assert not os.path.exists(exported['out'] + '/x')
