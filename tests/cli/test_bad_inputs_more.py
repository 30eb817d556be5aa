"""More of the bad-input matrix: names that would leave the output folder, weights that are not finite, option files
whose aliases expand without bound, tiny images, a device that is not there, folders in the way of outputs. Every
case ends with one ``error:`` line and status 2 (or, for one image of many, a warning and status 1), no traceback,
nothing written where it should not be, and within seconds."""
import os
import time
from os import path as osp

import cv2
import numpy as np
import pytest
import torch
from conftest import FIXTURES, strong_tiny_resnet

from wbsr_plugin import curve, export, infer, prepare, subnets
from wbsr_plugin.cli.image_io import read_image
from wbsr_plugin.inference.checkpoint import WBSR_KEY, make_wbsr_meta
from wbsr_runtime.images import ImageReadError
from wbsr_runtime.output_names import OutputConflict, OutputNames

IMAGE = osp.join(FIXTURES, 'lr_x4', 'rocket.png')
HR = osp.join(FIXTURES, 'hr')
COMMANDS = {'infer': infer.main, 'export': export.main, 'subnets': subnets.main, 'curve': curve.main,
            'prepare': prepare.main}
BOMB = ''.join(f'{chr(97 + i)}: &{chr(97 + i)} [' + ', '.join([f'*{chr(96 + i)}' if i else 'x'] * 10) + ']\n'
               for i in range(9)) + 'network_g: {type: WBSRResNet, num_feat: *i}\n'  # 10^9 values once expanded


def save_checkpoint(path, scale_weights=1.0, poison=None):
    """A checkpoint of the tiny supernet: its conv weights times ``scale_weights``, one value set to ``poison``."""
    net = strong_tiny_resnet()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for key, value in state.items():
        if value.dim() == 4:
            value.mul_(scale_weights)
    if poison is not None:
        state['conv_first.weight'].view(-1)[0] = poison
    torch.save({'params': state, WBSR_KEY: make_wbsr_meta(net, [2. * k for k in range(1, 10)], 16)}, path)
    return str(path)


def outcome(command, argv, capsys):
    """``(status, stdout, stderr, seconds)`` of a command run in this process."""
    start = time.perf_counter()
    try:
        status = COMMANDS[command](argv)
    except SystemExit as info:
        status = info.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err, time.perf_counter() - start


def assert_one_error(status, err, message):
    lines = [line for line in err.splitlines() if 'error:' in line]
    assert status == 2 and len(lines) == 1 and message in lines[0] and 'Traceback' not in err, err


def tree(folder):
    return sorted(osp.relpath(osp.join(d, f), folder) for d, ds, fs in os.walk(folder) for f in fs + ds)


@pytest.mark.parametrize('suffix, message', [
    ('x/../../NAME', 'without a path separator'), ('..', "without '..'"), ('a\\b', 'without a path separator'),
    ('a\x01b', 'without control characters'), ('', 'got an empty string'), ('x' * 101, 'at most 100 characters')])
def test_a_suffix_never_leads_out_of_the_output_folder(tiny_checkpoint, tmp_path, capsys, suffix, message):
    (tmp_path / 'out').mkdir()
    before = tree(tmp_path)
    status, _, err, _ = outcome('infer', ['-i', IMAGE, '-o', str(tmp_path / 'out' / 'x'), '--model', tiny_checkpoint,
                                          '--suffix', suffix], capsys)
    assert_one_error(status, err, message)
    assert tree(tmp_path) == before
    with pytest.raises(OutputConflict, match='--suffix'):
        OutputNames(str(tmp_path), [IMAGE], suffix, 'auto', False)


def test_a_file_name_template_stays_a_name(capsys):
    for template, message in (('../{}', 'path separator'), ('x', "holding '{}'")):
        status, _, err, _ = outcome('prepare', ['index', '--gt', 'a', '--lq', 'b', '-s', '4', '--gt-size', '64',
                                                '--filename-tmpl', template], capsys)
        assert_one_error(status, err, message)


NONFINITE = {'nan': float('nan'), 'inf': float('inf')}


@pytest.mark.parametrize('command', ['infer', 'export', 'subnets', 'curve'])
@pytest.mark.parametrize('value', sorted(NONFINITE))
def test_weights_that_are_not_finite_are_refused_when_loaded(tmp_path, capsys, command, value):
    model = save_checkpoint(tmp_path / 'bad.pth', poison=NONFINITE[value])
    out = str(tmp_path / 'out')
    argv = {'infer': ['-i', IMAGE, '-o', out], 'export': ['-o', out, '--all'], 'subnets': [],
            'curve': ['--hr', HR, '-o', out]}[command] + ['--model', model]
    status, _, err, _ = outcome(command, argv, capsys)
    assert_one_error(status, err, 'weights that are not finite (NaN or Inf) in conv_first.weight')
    assert not osp.exists(out)


@pytest.mark.parametrize('pipeline', ['serial', 'overlapped'])
def test_an_output_that_is_not_finite_is_never_written(tmp_path, capsys, pipeline):
    model = save_checkpoint(tmp_path / 'huge.pth', scale_weights=1e25)  # finite weights whose products overflow
    out = tmp_path / 'out'
    status, _, err, _ = outcome('infer', ['-i', IMAGE, '-o', str(out), '--model', model, '-t', '16', '--pipeline',
                                          pipeline], capsys)
    assert status == 1 and 'values that are not finite (NaN or Inf); the image is not written' in err
    assert 'Traceback' not in err and not (out.exists() and os.listdir(out))


@pytest.mark.parametrize('command', ['infer', 'export', 'subnets', 'curve'])
def test_an_option_file_whose_aliases_expand_without_bound(tiny_checkpoint, tmp_path, capsys, command):
    bomb = tmp_path / 'bomb.yml'
    bomb.write_text(BOMB)
    out = str(tmp_path / 'out')
    argv = {'infer': ['-i', IMAGE, '-o', out], 'export': ['-o', out, '--all'], 'subnets': [],
            'curve': ['--hr', HR, '-o', out]}[command] + ['--model', tiny_checkpoint, '--opt', str(bomb)]
    status, _, err, seconds = outcome(command, argv, capsys)
    assert_one_error(status, err, 'its aliases expand to more than 100000 values')
    assert seconds < 10 and len(err) < 500


def test_an_alias_inside_itself(tiny_checkpoint, tmp_path, capsys):
    looped = tmp_path / 'loop.yml'
    looped.write_text('a: &a [x, *a]\nnetwork_g: {type: WBSRResNet}\n')
    status, _, err, _ = outcome('subnets', ['--opt', str(looped)], capsys)
    assert_one_error(status, err, 'an alias refers to a value that holds it')


@pytest.mark.parametrize('size', [(1, 1), (4, 4), (12, 12), (4, 200), (200, 4)])
def test_curve_refuses_hr_images_too_small_for_its_metrics(tiny_checkpoint, tmp_path, capsys, size):
    hr = tmp_path / 'hr'
    hr.mkdir()
    cv2.imwrite(str(hr / 'tiny.png'), np.full(size + (3, ), 128, np.uint8))
    status, _, err, _ = outcome('curve', ['--hr', str(hr), '-o', str(tmp_path / 'out'), '--model', tiny_checkpoint],
                                capsys)
    assert_one_error(status, err, f'{size[1]}x{size[0]} is too small for PSNR/SSIM at x4: HR images need at least '
                     '20x20 pixels')
    assert not (tmp_path / 'out').exists()


def test_curve_accepts_the_smallest_hr_images_its_metrics_allow(tiny_checkpoint, tmp_path, capsys):
    hr = tmp_path / 'hr'
    hr.mkdir()
    cv2.imwrite(str(hr / 'small.png'), cv2.imread(osp.join(HR, sorted(os.listdir(HR))[0]))[:20, :23])
    status, out, err, _ = outcome('curve', ['--hr', str(hr), '-o', str(tmp_path / 'out'), '--model', tiny_checkpoint,
                                            '--budgets', '0.5'], capsys)
    assert status == 0 and 'nan' not in out.lower(), err


def summary_of(out):
    """The FLOPs share of an image's summary line and the note after it."""
    line = next(line for line in out.splitlines() if ' GFLOPs (' in line)
    return float(line.split(' GFLOPs (')[1].split('% of full')[0]), line


def test_an_unreachable_budget_gets_a_note(tiny_checkpoint, tmp_path, capsys):
    status, out, _, _ = outcome('infer', ['-i', IMAGE, '-o', str(tmp_path / 'a'), '--model', tiny_checkpoint, '-t',
                                          '16', '--budget', '0.05'], capsys)
    share, line = summary_of(out)
    assert status == 0 and share > 5 and f'budget 0.05 out of reach for this image: ran at {share:.1f}% of full' in line
    status, out, _, _ = outcome('infer', ['-i', IMAGE, '-o', str(tmp_path / 'b'), '--model', tiny_checkpoint, '-t',
                                          '16', '--budget', '0.9'], capsys)
    share, line = summary_of(out)
    assert status == 0 and share <= 90 and 'out of reach' not in line


@pytest.mark.parametrize('size', [(1, 1), (1, 64)])
def test_reported_flops_never_exceed_the_plain_network(tiny_checkpoint, tmp_path, capsys, size):
    cv2.imwrite(str(tmp_path / 'tiny.png'), np.full(size + (3, ), 128, np.uint8))
    status, out, _, _ = outcome('infer', ['-i', str(tmp_path / 'tiny.png'), '-o', str(tmp_path / 'out'), '--model',
                                          tiny_checkpoint, '--budget', '0.6'], capsys)
    assert status == 0 and summary_of(out)[0] <= 100


def test_a_file_that_cannot_be_opened_is_called_so(tmp_path, monkeypatch, capfd):
    path = str(tmp_path / 'locked.png')
    cv2.imwrite(path, np.zeros((4, 4, 3), np.uint8))

    def denied(file, *args, **kwargs):
        raise PermissionError(13, 'Permission denied', file)

    monkeypatch.setattr(np, 'fromfile', denied)
    with pytest.raises(ImageReadError, match='locked.png: cannot read it: permission denied'):
        read_image(path)
    assert '[ WARN' not in capfd.readouterr().err


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() == 0, reason='root reads every file')
def test_an_unreadable_input_is_reported_without_opencv_lines(tiny_checkpoint, tmp_path, capfd):
    path = tmp_path / 'locked.png'
    cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))
    path.chmod(0)
    assert infer.main(['-i', str(path), '-o', str(tmp_path / 'out'), '--model', tiny_checkpoint]) == 1
    err = capfd.readouterr().err
    assert 'permission denied' in err and 'corrupt' not in err and '[ WARN' not in err


@pytest.mark.parametrize('flag', [[], ['--overwrite'], ['--skip-existing']])
def test_a_folder_in_the_way_of_an_output_stops_the_run_before_computing(tiny_checkpoint, tmp_path, capsys, flag):
    inputs, out = tmp_path / 'in', tmp_path / 'out'
    inputs.mkdir()
    cv2.imwrite(str(inputs / 'a.png'), cv2.imread(IMAGE))
    (out / 'a_out.png').mkdir(parents=True)
    status, _, err, _ = outcome('infer', ['-i', str(inputs), '-o', str(out), '--model', tiny_checkpoint, *flag],
                                capsys)
    assert_one_error(status, err, f'-o: {out / "a_out.png"} is a folder, where an output of this run would be written')
    assert 'policy:' not in err and tree(out) == ['a_out.png']  # nothing computed, nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason='CUDA is available here')
@pytest.mark.parametrize('command', ['infer', 'curve'])
def test_a_device_that_is_not_available_is_a_usage_error(tiny_checkpoint, tmp_path, capsys, command):
    argv = {'infer': ['-i', IMAGE], 'curve': ['--hr', HR]}[command]
    status, _, err, _ = outcome(command, argv + ['-o', str(tmp_path / 'out'), '--model', tiny_checkpoint, '--device',
                                                 'cuda'], capsys)
    assert_one_error(status, err, "--device: device 'cuda' asked for, but CUDA is not available")


@pytest.mark.parametrize('step', ['downsample', 'subimages'])
@pytest.mark.parametrize('inside', ['', 'sub'])
def test_prepare_refuses_an_output_folder_in_its_input(tmp_path, capsys, step, inside):
    inputs = tmp_path / 'hr'
    inputs.mkdir()
    cv2.imwrite(str(inputs / 'a.png'), np.zeros((8, 8, 3), np.uint8))
    status, out, err, _ = outcome('prepare', [step, '-i', str(inputs), '-o', str(inputs / inside)], capsys)
    assert_one_error(status, err, 'is the input folder' if not inside else 'lies inside the input folder')
    assert 'complete' not in out + err and tree(inputs) == ['a.png']


def test_names_that_differ_only_in_case_get_distinct_outputs(tiny_checkpoint, tmp_path, capsys):
    inputs = tmp_path / 'in'
    inputs.mkdir()
    rocket = cv2.imread(IMAGE)[:16, :16]
    for name in ('A.png', 'a.png', 'a.PNG', 'a.jpg', 'b.png'):
        assert cv2.imwrite(str(inputs / name), rocket)
    assert infer.main(['-i', str(inputs), '-o', str(tmp_path / 'out'), '--model', tiny_checkpoint, '-t', '16',
                       '--ext', 'png']) == 0
    written = sorted(os.listdir(tmp_path / 'out'))
    assert written == ['A_png_out.png', 'a_jpg_out.png', 'a_png_2_out.png', 'a_png_3_out.png', 'b_out.png']
    assert len({name.casefold() for name in written}) == 5  # distinct on file systems that ignore case too
    assert '(output)' not in capsys.readouterr().err
