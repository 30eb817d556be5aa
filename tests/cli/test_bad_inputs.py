"""The bad-input matrix: every command, every bad file or option that applies to it. Each case exits with status 2,
prints exactly one ``error:`` line and no traceback, and leaves the output location as it was."""
import os
import pickle
from os import path as osp

import pytest
import torch
from conftest import FIXTURES

from wbsr_plugin import curve, export, fit_prior, infer, prepare, subnets

RANDOM_BYTES = bytes((i * 97 + 13) % 256 for i in range(2048))
IMAGE = osp.join(FIXTURES, 'lr_x4', 'rocket.png')
HR = osp.join(FIXTURES, 'hr')


class Evil:

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


@pytest.fixture
def files(tmp_path, tiny_checkpoint):
    """Bad files of every kind, a good checkpoint, and an output folder with one earlier file in it."""
    made = {'model': tiny_checkpoint, 'pwned': str(tmp_path / 'pwned')}
    for name, content in (('text.pth', b'see the release page\n'), ('empty.pth', b''), ('noise.pth', RANDOM_BYTES),
                          ('page.pth', b'<!doctype html><html>404</html>'), ('noise.png', RANDOM_BYTES),
                          ('broken.yml', b'network_g: {type: WBSRResNet\n'), ('list.yml', b'- a\n- b\n'),
                          ('nonet.yml', b'name: x\n'), ('unknown.yml', b'network_g: {type: WBSRResNet, nope: 1}\n'),
                          ('evil.yml', f'network_g: !!python/object/apply:os.system ["touch {made["pwned"]}"]\n'
                           .encode())):
        (tmp_path / name).write_bytes(content)
        made[name.replace('.', '_')] = str(tmp_path / name)
    with open(tmp_path / 'evil.pth', 'wb') as f:
        pickle.dump({'params': {}, 'x': Evil(made['pwned'])}, f)
    torch.save({'params': {'w': torch.zeros(1)}, 'x': Evil(made['pwned'])}, tmp_path / 'evil_zip.pth')
    made['evil_pth'], made['evil_zip_pth'] = str(tmp_path / 'evil.pth'), str(tmp_path / 'evil_zip.pth')
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'earlier.txt').write_text('kept')
    made['out'], made['file'] = str(tmp_path / 'out'), made['text_pth']
    return made


def checkpoint_cases(command):
    return [(command, f"--model {{{name.replace('.', '_')}}}", message) for name, message in (
        ('missing', 'no such checkpoint'), ('text.pth', 'is not a PyTorch checkpoint (a text file)'),
        ('empty.pth', 'is empty, not a PyTorch checkpoint'), ('noise.pth', 'is not a PyTorch checkpoint'),
        ('page.pth', 'an HTML page'), ('evil.pth', 'is not a PyTorch checkpoint'),
        ('evil_zip.pth', 'holds Python objects besides tensors'))]


def opt_cases(command):
    return [(command, f"--model {{model}} --opt {{{name.replace('.', '_')}}}", message) for name, message in (
        ('missing', '--opt: no such file'), ('broken.yml', 'is not a valid option file (line 2)'),
        ('list.yml', 'holds no options'), ('nonet.yml', 'has no network_g section'),
        ('evil.yml', 'Python tags are not allowed'), ('unknown.yml', 'nope'))]


INFER = '-i {image} -o {out}/x -t 16'
CASES = (
    [('infer', INFER + ' ' + rest, m) for _, rest, m in checkpoint_cases('infer') + opt_cases('infer')]
    + [('export', '-o {out}/x --all ' + rest, m) for _, rest, m in checkpoint_cases('export') + opt_cases('export')]
    + [('subnets', rest, m) for _, rest, m in checkpoint_cases('subnets') + opt_cases('subnets')]
    + [('curve', '--hr {hr} -o {out}/x ' + rest, m) for _, rest, m in checkpoint_cases('curve')]
    + [
        ('infer', '-i {image} -o {file} --model {model}', '-o: {file} is a file, not a folder'),
        ('infer', '-i {image} -o {file}/sub --model {model}', 'which is a file'),
        ('infer', '-i {missing} -o {out}/x --model {model}', '-i: no such file or folder'),
        ('infer', '-i {image} -o {out}/x --model {model} --max-loss -1', "max_loss must be a loss in dB >= 0 or 'off'"),
        ('infer', '-i {image} -o {out}/x --model {model} --budget 2', 'budget must be a fraction'),
        ('infer', '-i {image} -o {out}/x --model {model} --threads 0', 'expected a positive integer'),
        ('export', '-o {file} --all --model {model}', 'names one file: give one --subnet or --supernet'),
        ('subnets', '--lq-size 0', 'expected a positive integer, got 0'),
        ('subnets', '--lq-size -5', 'expected a positive integer, got -5'),
        ('subnets', '-s 5', 'invalid choice: 5'),
        ('curve', '--hr {hr} -o {file} --model {model}', 'is a file, not a folder'),
        ('curve', '--hr {missing} -o {out}/x --model {model}', 'no such'),
        ('curve', '--hr {hr} -o {out}/x --model {model} --budgets 0', "budget must be a fraction in (0, 1], got '0'"),
        ('prepare', 'downsample -i {missing} -o {out}/x', "input folder '{missing}' does not exist"),
        ('prepare', 'subimages -i {missing} -o {out}/x', "input folder '{missing}' does not exist"),
        ('fit_prior', '-i {missing} -o {out}/x.pth -s 4', 'is neither an image folder nor a BasicSR LMDB folder'),
    ])
COMMANDS = {'infer': infer.main, 'export': export.main, 'subnets': subnets.main, 'curve': curve.main,
            'prepare': prepare.main, 'fit_prior': fit_prior.main}


def snapshot(folder):
    return {name: open(osp.join(folder, name), 'rb').read() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize('command, argv, message', CASES, ids=[f'{c}: {a}' for c, a, _ in CASES])
def test_bad_input(files, tmp_path, capsys, command, argv, message):
    values = dict(files, image=IMAGE, hr=HR, missing=str(tmp_path / 'missing'))
    before = snapshot(files['out'])
    try:
        status = COMMANDS[command](argv.format(**values).split())
    except SystemExit as exit_info:
        status = exit_info.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if 'error:' in line]
    assert status == 2, err
    assert len(lines) == 1 and (lines[0].startswith('error:') or ': error: ' in lines[0]), err  # argparse: PROG: error:
    assert message.format(**values) in lines[0] and 'Traceback' not in err and 'weights_only=False' not in err
    assert snapshot(files['out']) == before and not osp.exists(files['pwned'])


def test_random_bytes_as_an_image_fail_that_image_only(files, capsys):
    status = infer.main(['-i', files['noise_png'], '-o', files['out'] + '/x', '--model', files['model']])
    err = capsys.readouterr().err
    assert status == 1 and 'Traceback' not in err and 'error:' not in err
    assert err.count(f"warning: skipped {files['noise_png']}: cannot decode") == 1
    assert not osp.exists(files['out'] + '/x')
