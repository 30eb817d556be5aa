"""Runs that write into one folder at the same time: a file is published only where its name is still free, so a
file another process wrote meanwhile is never replaced, and is never counted as this run's."""
import errno
import multiprocessing
import os
import subprocess
import sys
from os import path as osp

import cv2
import pytest
from conftest import FIXTURES, REPO_ROOT

from wbsr_plugin import infer
from wbsr_plugin.cli import folder_inference
from wbsr_runtime import files
from wbsr_runtime.files import atomic_write_bytes

NAMES = [f'{i:02d}.bin' for i in range(12)]
REPETITIONS = 20


def publish_all(folder, tag, barrier, results):
    """Write every name of NAMES with this process's ``tag`` as content, without replacing; report the names
    published."""
    barrier.wait()
    mine = []
    for name in NAMES:
        try:
            atomic_write_bytes(osp.join(folder, name), tag, replace=False)
            mine.append(name)
        except FileExistsError:
            pass
    results.put((tag, mine))


def test_two_processes_publishing_the_same_names_never_replace_each_other(tmp_path):
    context = multiprocessing.get_context('fork')
    for repetition in range(REPETITIONS):
        folder = tmp_path / str(repetition)
        folder.mkdir()
        barrier, results = context.Barrier(2), context.Queue()
        workers = [context.Process(target=publish_all, args=(str(folder), tag, barrier, results))
                   for tag in (b'first', b'second')]
        for worker in workers:
            worker.start()
        published = dict(results.get(timeout=60) for _ in workers)
        for worker in workers:
            worker.join(timeout=60)
        assert sorted(published[b'first'] + published[b'second']) == NAMES  # each name by exactly one process
        for tag, names in published.items():
            assert all((folder / name).read_bytes() == tag for name in names)
        assert sorted(os.listdir(folder)) == NAMES  # no temporary file left


def test_without_hard_links_a_rename_that_refuses_to_replace_is_used(tmp_path, monkeypatch):
    if not sys.platform.startswith(('linux', 'darwin')):
        pytest.skip('renameat2 / renamex_np')

    def no_links(source, target):
        raise OSError(errno.EPERM, 'Operation not permitted', source, None, target)

    monkeypatch.setattr(files.os, 'link', no_links)
    target = tmp_path / 'a.bin'
    atomic_write_bytes(str(target), b'first', replace=False)
    with pytest.raises(FileExistsError):
        atomic_write_bytes(str(target), b'second', replace=False)
    assert target.read_bytes() == b'first' and os.listdir(tmp_path) == ['a.bin']
    atomic_write_bytes(str(target), b'third')  # replace=True: checkpoints, tables, --overwrite
    assert target.read_bytes() == b'third'


def small_inputs(folder, count):
    folder.mkdir()
    rocket = cv2.imread(osp.join(FIXTURES, 'lr_x4', 'rocket.png'))[:16, :16]
    for i in range(count):
        assert cv2.imwrite(str(folder / f'{i:02d}.png'), rocket[::1 if i % 2 else -1])
    return folder


def run_with(model, inputs, out, *extra):
    return infer.main(['-i', str(inputs), '-o', str(out), '--model', model, '-t', '16', '--pipeline', 'serial',
                       *extra])


def files_appearing_meanwhile(monkeypatch, content):
    """Make every output appear (with ``content``) just before this run publishes it, as another run would."""
    publish = folder_inference.publish

    def racing(target, image, settings, taken):
        os.makedirs(osp.dirname(target), exist_ok=True)
        with open(target, 'wb') as f:
            f.write(content)
        return publish(target, image, settings, taken)

    monkeypatch.setattr(folder_inference, 'publish', racing)


@pytest.mark.parametrize('pipeline', ['serial', 'overlapped'])
def test_a_file_that_appears_meanwhile_is_kept_and_reported(tiny_checkpoint, tmp_path, monkeypatch, capsys,
                                                            pipeline):
    inputs, out = small_inputs(tmp_path / 'in', 3), tmp_path / 'out'
    files_appearing_meanwhile(monkeypatch, b'the other run')
    status = infer.main(['-i', str(inputs), '-o', str(out), '--model', tiny_checkpoint, '-t', '16', '--pipeline',
                         pipeline])
    captured = capsys.readouterr()
    assert status == 1 and 'Traceback' not in captured.err
    assert all((out / f'{i:02d}_out.png').read_bytes() == b'the other run' for i in range(3))
    assert captured.err.count('appeared while this run computed it') == 3
    assert 'error: 3 of 3 image(s) not written' in captured.err and 'went on with the other images' in captured.err
    assert 'total: 0 image(s), 0 skipped, 0 failed, 3 not written' in captured.out  # never counted as written


def test_under_skip_existing_a_file_that_appears_meanwhile_is_kept_with_a_note(tiny_checkpoint, tmp_path,
                                                                                monkeypatch, capsys):
    inputs, out = small_inputs(tmp_path / 'in', 2), tmp_path / 'out'
    files_appearing_meanwhile(monkeypatch, b'the other run')
    assert run_with(tiny_checkpoint, inputs, out, '--skip-existing') == 0
    captured = capsys.readouterr()
    assert captured.err.count('note: kept') == 2 and 'error' not in captured.err
    assert 'total: 0 image(s), 2 skipped, 0 failed' in captured.out
    assert all((out / f'{i:02d}_out.png').read_bytes() == b'the other run' for i in range(2))


def test_overwrite_still_replaces(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    inputs, out = small_inputs(tmp_path / 'in', 1), tmp_path / 'out'
    files_appearing_meanwhile(monkeypatch, b'the other run')
    assert run_with(tiny_checkpoint, inputs, out, '--overwrite') == 0
    assert (out / '00_out.png').read_bytes() != b'the other run'
    assert cv2.imread(str(out / '00_out.png')).shape == (64, 64, 3)


RACER = '''import os, sys, time
from wbsr_plugin import infer
from wbsr_plugin.cli import folder_inference
publish, me, other = folder_inference.publish, sys.argv[1], sys.argv[2]

def after_both_started(*args, **kwargs):  # both runs have passed the start check before either writes
    if not os.path.exists(me):
        open(me, 'w').close()
        deadline = time.time() + 120
        while not os.path.exists(other) and time.time() < deadline:
            time.sleep(0.01)
    return publish(*args, **kwargs)

folder_inference.publish = after_both_started
sys.exit(infer.main(sys.argv[3:]))
'''


def test_two_infer_runs_racing_into_one_folder(tiny_checkpoint, tmp_path):
    """Both runs pass the start check; each file is then written by exactly one of them, which says so, and the
    other reports the conflict and exits 1."""
    inputs = small_inputs(tmp_path / 'in', 6)
    references = {}
    for subnet in ('0', '3'):  # what each run writes, computed alone
        assert run_with(tiny_checkpoint, inputs, tmp_path / f'alone{subnet}', '--subnet', subnet) == 0
        references[subnet] = {n: (tmp_path / f'alone{subnet}' / n).read_bytes()
                              for n in os.listdir(tmp_path / f'alone{subnet}')}
    assert references['0'] != references['3']
    script = tmp_path / 'racer.py'
    script.write_text(RACER)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS='1')
    out = tmp_path / 'out'
    procs = {subnet: subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / f'started{subnet}'), str(tmp_path / f'started{other}'), '-i',
         str(inputs), '-o', str(out), '--model', tiny_checkpoint, '-t', '16', '--subnet', subnet, '--pipeline',
         'serial'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for subnet, other in (('0', '3'), ('3', '0'))}
    results = {subnet: (proc.wait(timeout=300), *proc.communicate()) for subnet, proc in procs.items()}
    names = sorted(references['0'])
    assert sorted(os.listdir(out)) == names
    for name in names:
        writers = [s for s, (_, stdout, _) in results.items() if f'{name.replace("_out", "")}: ' in stdout]
        assert len(writers) == 1, (name, results)
        assert (out / name).read_bytes() == references[writers[0]][name]
    for subnet, (status, stdout, err) in results.items():
        lost = err.count('appeared while this run computed it')
        assert 'Traceback' not in err
        assert status == (1 if lost else 0) and lost + stdout.count('.png: ') == len(names)
    assert sum(err.count('appeared while') for _, _, err in results.values()) == len(names)
