"""The output policy of infer (wbsr_runtime.output_names): no run loses work, conflicts stop it before any
computation."""
import os
import subprocess
import sys
from os import path as osp

import cv2
import numpy as np
import pytest
from conftest import FIXTURES

from wbsr_plugin import infer
from wbsr_runtime.files import remove_stale_temp_files

ROCKET = cv2.imread(osp.join(FIXTURES, 'lr_x4', 'rocket.png'))[:16, :16]


def folder_of(tmp_path, names):
    """A folder of small images: ``NAME.EXT``, ``NAME.webp`` written RGBA."""
    inputs = tmp_path / 'in'
    inputs.mkdir(exist_ok=True)
    for name in names:
        image = np.dstack([ROCKET, np.full(ROCKET.shape[:2], 200, np.uint8)]) if name.endswith('.webp') else ROCKET
        assert cv2.imwrite(str(inputs / name), image, [cv2.IMWRITE_WEBP_QUALITY, 101])
    return inputs


def run(model, inputs, out, *extra):
    return infer.main(['-i', str(inputs), '-o', str(out), '--model', model, '-t', '16', *extra])


def stamps(folder):
    """{name: (size, mtime)} of every file in ``folder``."""
    return {n: (os.stat(folder / n).st_size, os.stat(folder / n).st_mtime_ns) for n in os.listdir(folder)}


def test_inputs_that_share_a_name_get_their_extension_in_it(tiny_checkpoint, tmp_path, capsys):
    inputs = folder_of(tmp_path, ['a.png', 'a.jpg', 'b.png'])
    assert run(tiny_checkpoint, inputs, tmp_path / 'out', '--ext', 'png') == 0
    assert sorted(os.listdir(tmp_path / 'out')) == ['a_jpg_out.png', 'a_png_out.png', 'b_out.png']
    lines = capsys.readouterr().out
    assert 'a.jpg: ' in lines and 'a.png: ' in lines  # the file name, not only the stem


def test_an_rgba_webp_beside_a_png_loses_nothing_and_skip_existing_skips_it(tiny_checkpoint, tmp_path, capsys):
    inputs = folder_of(tmp_path, ['a.png', 'a.webp'])
    out = tmp_path / 'out'
    assert run(tiny_checkpoint, inputs, out) == 0
    assert sorted(os.listdir(out)) == ['a_png_out.png', 'a_webp_out.png']  # the RGBA webp is written as PNG
    before = stamps(out)
    assert run(tiny_checkpoint, inputs, out, '--skip-existing') == 0
    assert '2 of 2 image(s) skipped' in capsys.readouterr().out and stamps(out) == before


def test_output_folder_inside_the_input_folder(tiny_checkpoint, tmp_path, capsys):
    inputs = folder_of(tmp_path, ['cat.png', 'dog.png'])
    mine = b'the user\'s own file'
    (inputs / 'cat_out.png').write_bytes(mine)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # cat_out.png exists: nothing is computed, nothing changes
        run(tiny_checkpoint, inputs, inputs)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count('error:') == 1 and 'cat_out.png' in err and '--overwrite' in err
    assert sorted(os.listdir(inputs)) == ['cat.png', 'cat_out.png', 'dog.png']
    assert run(tiny_checkpoint, inputs, inputs, '--skip-existing') == 0  # cat is done; dog is not
    assert (inputs / 'cat_out.png').read_bytes() == mine
    assert 'left out 1 file(s)' in capsys.readouterr().err  # cat_out.png is not an input
    assert sorted(os.listdir(inputs)) == ['cat.png', 'cat_out.png', 'dog.png', 'dog_out.png']
    assert run(tiny_checkpoint, inputs, inputs, '--overwrite') == 0
    assert (inputs / 'cat_out.png').read_bytes() != mine  # replaced, as asked; no cat_out_out.png
    assert sorted(os.listdir(inputs)) == ['cat.png', 'cat_out.png', 'dog.png', 'dog_out.png']


@pytest.mark.parametrize('names, extra, message', [
    (['a.png'], ['--save-map', '--suffix', 'map', '--ext', 'png'], 'choose another --suffix than map'),
    (['a.png', 'a.PNG', 'a_png_2.png'], [], 'a_png_2_out.png; rename one of the inputs'),  # a.png: a_png_2
    (['a.png', 'a_out.png'], ['--suffix', 'out'], None),  # -o is not -i: a_out.png is an input like any other
])
def test_conflicts_stop_the_run_before_computing(tiny_checkpoint, tmp_path, capsys, names, extra, message):
    inputs = folder_of(tmp_path, names)
    out = tmp_path / 'out'
    if message is None:
        assert run(tiny_checkpoint, inputs, out, *extra) == 0
        assert sorted(os.listdir(out)) == ['a_out.png', 'a_out_out.png']
        return
    with pytest.raises(SystemExit) as info:
        run(tiny_checkpoint, inputs, out, *extra)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and err.count('error:') == 1 and not out.exists()


def test_output_folders_that_cannot_be_used(tiny_checkpoint, tmp_path, capsys):
    inputs = folder_of(tmp_path, ['a.png'])
    (tmp_path / 'file').write_text('x')
    cases = [(tmp_path / 'file', 'is a file, not a folder'), (tmp_path / 'file' / 'sub', 'which is a file')]
    if sys.platform == 'linux' and osp.isdir('/proc/self'):
        cases.append((osp.join('/proc', 'wbsr_out'), 'cannot write into /proc'))
    for out, message in cases:
        with pytest.raises(SystemExit) as info:
            run(tiny_checkpoint, inputs, out)
        err = capsys.readouterr().err
        assert info.value.code == 2 and message in err and err.startswith('error: -o: ')


def test_temporary_files_of_killed_runs_are_removed_by_later_ones(tiny_checkpoint, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has ended
    from wbsr_runtime.files import _host
    stale = out / f'.a_out.png.{_host()}-{pid}-abc_12.tmp.png'
    live = out / f'.a_out.png.{_host()}-{os.getpid()}-abc_12.tmp.png'
    other_host = out / f'.a_out.png.elsewhere-{pid}-abc_12.tmp.png'
    for path in (stale, live, other_host):
        path.write_bytes(b'partial')
    assert run(tiny_checkpoint, folder_of(tmp_path, ['b.png']), out) == 0
    assert not stale.exists() and live.exists() and other_host.exists()
    assert remove_stale_temp_files(str(out)) == []  # the live one stays


@pytest.mark.parametrize('pipeline,signals', [('serial', 1), ('serial', 2), ('overlapped', 1)])
def test_sigterm_ends_the_run_cleanly(tiny_checkpoint, tmp_path, pipeline, signals):
    """SIGTERM while a file is being published exits with 130 and counts exactly the files it leaves: once, the
    image being written is finished and counted; twice, the run stops at once and that file is removed."""
    import signal
    import time
    inputs = folder_of(tmp_path, [f'{i:02d}.png' for i in range(40)])
    out = tmp_path / 'out'
    slow = tmp_path / 'slow.py'  # every publish waits 0.5 s with its file complete, so the signals land inside one
    slow.write_text('import sys, time\nfrom wbsr_plugin import infer\nfrom wbsr_runtime import files\n'
                    'publish = files.publish_no_replace\n'
                    'def slow_publish(source, target):\n    time.sleep(0.5)\n    publish(source, target)\n'
                    'files.publish_no_replace = slow_publish\nsys.exit(infer.main(sys.argv[1:]))\n')
    env = dict(os.environ, PYTHONPATH=osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    proc = subprocess.Popen([sys.executable, str(slow), '-i', str(inputs), '-o', str(out), '--model', tiny_checkpoint,
                             '-t', '16', '--pipeline', pipeline], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline, temp = time.time() + 60, []
    while time.time() < deadline and not temp:  # the second image's file, complete, waiting to be published
        temp = [name for name in (os.listdir(out) if out.exists() else []) if name.startswith('.01_out.png.')]
        time.sleep(0.01)
    assert temp, 'no image was being written within 60 s'
    for _ in range(signals):
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and 'interrupted:' in err and 'Traceback' not in err
    written = sorted(os.listdir(out))
    if pipeline == 'serial':
        assert written == (['00_out.png', '01_out.png'] if signals == 1 else ['00_out.png'])
    else:  # images queued behind the one being written may be written too
        assert written[:2] == ['00_out.png', '01_out.png'] and not any(name.startswith('.') for name in written)
    assert f'interrupted: {len(written)} image(s) written' in err
