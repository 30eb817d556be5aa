"""infer's overlapped pipeline (wbsr_plugin.cli.image_pipeline) against ``--pipeline serial``: the same files, lines and
exit status; the conversion on the device against the host's; full disks, failures and interrupts."""
import errno
import os
import re
import sys
import threading
import time
from os import path as osp

import cv2
import numpy as np
import pytest
import torch
from conftest import FIXTURES

from wbsr_plugin import infer
from wbsr_plugin.cli import folder_inference
from wbsr_plugin.cli.image_io import HostImage, device_pixels, to_image
from wbsr_plugin.cli.image_pipeline import ReadAhead, WriteBehind
from wbsr_plugin.inference.engine import DynamicInferenceEngine
from wbsr_runtime.images import ImageInfo

ROCKET = cv2.imread(osp.join(FIXTURES, 'lr_x4', 'rocket.png'))[:16, :20]
COFFEE = cv2.imread(osp.join(FIXTURES, 'lr_x4', 'coffee.png'))[4:20, 2:18]


def mixed_folder(tmp_path):
    """8-bit, 16-bit, grayscale, RGBA and JPEG inputs, and an unreadable file in the middle (sorted order)."""
    inputs = tmp_path / 'in'
    inputs.mkdir()
    images = {
        'a_rgb.png': ROCKET,
        'b_rgb16.png': COFFEE.astype(np.uint16) * 257 + 3,
        'd_gray.png': cv2.cvtColor(COFFEE, cv2.COLOR_BGR2GRAY),
        'e_rgba.png': np.dstack([ROCKET, np.linspace(0, 255, ROCKET.size // 3).astype(np.uint8).reshape(16, 20)]),
        'f_rgba16.png': np.dstack([COFFEE, np.full(COFFEE.shape[:2], 200, np.uint8)]).astype(np.uint16) * 250,
        'g_photo.jpg': COFFEE,
    }
    for name, image in images.items():
        assert cv2.imwrite(str(inputs / name), image)
    (inputs / 'c_broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnot really')
    return inputs


def run_infer(model, inputs, out, *extra):
    return infer.main(['-i', str(inputs), '-o', str(out), '--model', model, '-t', '16', '--budget', '0.6', *extra])


def contents(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def image_lines(text):
    """The names of the images whose status line ``NAME: ...`` was printed, in order."""
    return re.findall(r'^(\S+): \d+x\d+ -> ', text, flags=re.M)


def pipeline_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith(('wbsr-read', 'wbsr-write'))]


def test_overlapped_writes_the_same_files_and_lines_as_serial(tiny_checkpoint, tmp_path, capsys):
    inputs = mixed_folder(tmp_path)
    runs = {}
    for mode in ('overlapped', 'serial'):
        extra = ['--pipeline', mode]
        status = run_infer(tiny_checkpoint, inputs, tmp_path / mode, '--save-map', *extra)
        captured = capsys.readouterr()
        messages = [line for line in captured.err.splitlines() if 'warning' in line or 'failed' in line]
        runs[mode] = status, contents(tmp_path / mode), image_lines(captured.out), messages
    assert runs['overlapped'][0] == runs['serial'][0] == 1  # the broken input failed
    overlapped, serial = runs['overlapped'][1], runs['serial'][1]
    assert sorted(overlapped) == sorted(serial) and len(serial) == 12  # 6 images and 6 maps
    assert [name for name in serial if overlapped[name] != serial[name]] == []
    assert runs['overlapped'][2] == runs['serial'][2] == [n for n in sorted(os.listdir(inputs)) if 'broken' not in n]
    assert runs['overlapped'][3] == runs['serial'][3] == [f'warning: skipped {inputs / "c_broken.png"}: cannot decode '
                                                          '(corrupt or not an image).', '1 of 7 image(s) failed.']
    assert cv2.imread(str(tmp_path / 'serial' / 'b_rgb16_out.png'), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert pipeline_threads() == []


def test_device_pixels_round_clamp_and_order_by_hand():
    sr = torch.zeros(1, 3, 1, 6)
    sr[0, 0] = torch.tensor([-0.1, 0., 0.25, 0.5, 1., 1.2])  # R
    sr[0, 2, 0, 3] = 0.75  # B
    expected_r = {255: [0, 0, 64, 128, 255, 255], 65535: [0, 0, 16384, 32768, 65535, 65535]}  # 127.5 -> 128 (even)
    for max_value, dtype in ((255, torch.uint8), (65535, torch.uint16)):
        pixels = device_pixels(sr, max_value)
        assert pixels.dtype == dtype and pixels.shape == (1, 6, 3)
        assert pixels[0, :, 2].tolist() == expected_r[max_value]  # R is last: BGR
        assert pixels[0, :, 1].tolist() == [0] * 6
        assert pixels[0, 3, 0].item() == round(0.75 * max_value)
    with pytest.raises(ValueError, match='expected one of'):
        device_pixels(sr, 1023)


@pytest.mark.parametrize('mode, max_value', [('rgb', 255), ('rgb', 65535), ('rgba', 255), ('rgba', 65535),
                                             ('gray', 255), ('gray', 65535)])
@pytest.mark.parametrize('with_map', [False, True])
def test_host_image_equals_to_image(mode, max_value, with_map):
    generator = torch.Generator().manual_seed(3)
    sr = torch.rand(1, 3, 20, 28, generator=generator) * 1.4 - 0.2  # some values outside [0, 1]
    sr[0, :, 0, :8] = torch.tensor([0., 0.25, 0.5, 0.75, 1., 2., -1., 0.5])[None]  # exact halves of 255 and 65535
    alpha = torch.rand(5, 7, generator=generator).numpy() if mode == 'rgba' else None
    info = ImageInfo(mode, max_value, alpha)
    host = HostImage(sr, info, with_map=with_map)
    expected = to_image(sr, info)
    image = host.image()
    assert image.dtype == expected.dtype and image.shape == expected.shape
    assert image.tobytes() == expected.tobytes()
    if with_map:
        assert host.map_base().tobytes() == to_image(sr, ImageInfo('rgb', 255)).tobytes()
    else:
        with pytest.raises(ValueError, match='no map base'):
            host.map_base()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('max_value', [255, 65535])
def test_host_image_from_cuda_is_pinned_and_equals_to_image(max_value):
    sr = torch.rand(1, 3, 64, 48, device='cuda') * 1.4 - 0.2
    info = ImageInfo('rgb', max_value)
    host = HostImage(sr, info, with_map=max_value == 255)
    assert host._host.is_pinned() and host._host.device.type == 'cpu'
    assert host.image().tobytes() == to_image(sr, info).tobytes()
    if max_value == 255:  # the map is drawn over the same copy
        assert host.map_base().tobytes() == to_image(sr, info).tobytes()


def four_rockets(tmp_path):
    """A folder of a.png .. d.png, the same rocket each."""
    inputs = tmp_path / 'in'
    inputs.mkdir()
    for name in ('a.png', 'b.png', 'c.png', 'd.png'):
        cv2.imwrite(str(inputs / name), ROCKET)
    return inputs


@pytest.mark.parametrize('serial', [False, True])
def test_a_full_disk_stops_the_run_with_one_line(tiny_checkpoint, tmp_path, capsys, monkeypatch, serial):
    inputs = four_rockets(tmp_path)
    write = folder_inference.write_image_atomic
    tried = []

    def full_after_a(path, img, **kwargs):
        tried.append(osp.basename(path))
        if not path.endswith('a_out.png'):
            raise OSError(errno.ENOSPC, 'No space left on device')
        write(path, img, **kwargs)

    monkeypatch.setattr(folder_inference, 'write_image_atomic', full_after_a)
    out = tmp_path / 'out'
    status = run_infer(tiny_checkpoint, inputs, out, '--pipeline', 'serial' if serial else 'overlapped')
    captured = capsys.readouterr()
    assert status == 1 and os.listdir(out) == ['a_out.png']
    assert [line for line in captured.err.splitlines() if 'error' in line] == [
        f'error: -o: no space left on the device of {out} (writing b.png); 1 image(s) written.']
    assert image_lines(captured.out) == ['a.png'] and tried == ['a_out.png', 'b_out.png']  # c and d never written
    assert pipeline_threads() == []


@pytest.mark.parametrize('serial', [False, True])
def test_a_failed_write_or_out_of_memory_skips_its_image_only(tiny_checkpoint, tmp_path, capsys, monkeypatch, serial):
    inputs = four_rockets(tmp_path)
    write, run = folder_inference.write_image_atomic, DynamicInferenceEngine.run
    calls = []

    def refuse_b(path, img, **kwargs):
        if path.endswith('b_out.png'):
            raise PermissionError(errno.EACCES, 'Permission denied')
        write(path, img, **kwargs)

    def out_of_memory_on_third(self, lq):
        calls.append(lq.shape)
        if len(calls) == 3:
            raise RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')
        return run(self, lq)

    monkeypatch.setattr(folder_inference, 'write_image_atomic', refuse_b)
    monkeypatch.setattr(DynamicInferenceEngine, 'run', out_of_memory_on_third)
    out = tmp_path / 'out'
    assert run_infer(tiny_checkpoint, inputs, out, '--pipeline', 'serial' if serial else 'overlapped') == 1
    captured = capsys.readouterr()
    assert sorted(os.listdir(out)) == ['a_out.png', 'd_out.png'] and image_lines(captured.out) == ['a.png', 'd.png']
    warnings = [line for line in captured.err.splitlines() if 'warning' in line]
    assert warnings == [f'warning: skipped {inputs / "b.png"}: Permission denied',
                        f'warning: skipped {inputs / "c.png"}: out of memory; try --budget, a smaller --tile or '
                        'fewer --threads.']
    assert '2 of 4 image(s) failed.' in captured.err


def test_an_interrupt_counts_every_file_written_and_leaves_no_temporary_file(tiny_checkpoint, tmp_path, capsys,
                                                                            monkeypatch):
    inputs = tmp_path / 'in'
    inputs.mkdir()
    for i in range(6):
        cv2.imwrite(str(inputs / f'{i}.png'), ROCKET)
    write, run = folder_inference.write_image_atomic, DynamicInferenceEngine.run
    calls = []

    def slow_write(path, img, **kwargs):  # the writer is behind when Ctrl-C comes
        time.sleep(0.3)
        write(path, img, **kwargs)

    def interrupted_on_fourth(self, lq):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return run(self, lq)

    monkeypatch.setattr(folder_inference, 'write_image_atomic', slow_write)
    monkeypatch.setattr(DynamicInferenceEngine, 'run', interrupted_on_fourth)
    out = tmp_path / 'out'
    assert run_infer(tiny_checkpoint, inputs, out) == 130
    written = sorted(os.listdir(out))
    err = capsys.readouterr().err
    assert f'interrupted: {len(written)} image(s) written' in err
    assert 1 <= len(written) <= 3 and written == [f'{i}_out.png' for i in range(len(written))]  # in order, no .tmp
    assert pipeline_threads() == []


def test_read_ahead_reads_in_order_and_at_most_ahead():
    started = []

    def read(path):
        started.append(path)
        if path == 2:
            raise ValueError('unreadable')
        return path * 10

    with ReadAhead(read, range(6), ahead=2) as reads:
        for index, (path, future) in enumerate(reads):
            assert path == index
            if path == 2:
                with pytest.raises(ValueError, match='unreadable'):
                    future.result()
            else:
                assert future.result() == path * 10
            assert max(started) <= index + 2
    assert started == list(range(6))
    with pytest.raises(ValueError, match='ahead'):
        ReadAhead(read, [], ahead=0)


def test_write_behind_keeps_the_order_bounds_the_queue_and_halts():
    release, ran, queued = threading.Event(), [], []

    def job(name):
        release.wait(5)
        ran.append(name)
        if name == 'full':
            raise OSError(errno.ENOSPC, 'No space left on device')
        return name.upper()

    writes = WriteBehind(depth=2, halts=lambda err: getattr(err, 'errno', None) == errno.ENOSPC)
    writes.submit('a', job, 'a')
    writes.add_failed('b', ValueError('unreadable'))
    writes.submit('c', job, 'c')
    blocked = threading.Thread(target=lambda: (writes.submit('full', job, 'full'), queued.append('full')))
    blocked.start()
    time.sleep(0.2)
    assert queued == [] and list(writes.finished()) == []  # two jobs wait: the third is held back
    release.set()
    blocked.join(5)
    assert queued == ['full']
    writes.submit('d', job, 'd')
    outcomes = list(writes.finished(wait_all=True))
    writes.close()
    assert [key for key, _ in outcomes] == ['a', 'b', 'c', 'full', 'd']
    assert outcomes[0][1].result() == 'A' and outcomes[2][1].result() == 'C'
    with pytest.raises(ValueError, match='unreadable'):
        outcomes[1][1].result()
    with pytest.raises(OSError, match='No space'):
        outcomes[3][1].result()
    assert outcomes[4][1].exception() is not None and ran == ['a', 'c', 'full']  # d never ran


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='per-thread niceness is Linux only')
def test_background_threads_run_at_a_lower_priority():
    def niceness(_):
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    with ReadAhead(niceness, [0]) as reads:
        (_, future), = reads
        main = niceness(None)
        assert future.result() == min(19, main + 10)


@pytest.mark.parametrize('pipeline, device, threads, cpus, expected', [
    ('auto', 'cpu', 2, 2, False),  # every core computes: the threads would only take cores from the network
    ('auto', 'cpu', 2, 4, True),  # a core to spare
    ('auto', 'meta', 2, 2, True),  # a GPU (any device but the CPU) computes: the host cores are free
    ('overlapped', 'cpu', 2, 2, True),
    ('serial', 'meta', 1, 8, False),
])
def test_auto_overlaps_only_where_a_core_is_free(monkeypatch, pipeline, device, threads, cpus, expected):
    monkeypatch.setattr(folder_inference.torch, 'get_num_threads', lambda: threads)
    monkeypatch.setattr(folder_inference, 'available_cpus', lambda: cpus)
    net = torch.nn.Conv2d(1, 1, 1, device=device)
    assert folder_inference.overlaps_io(folder_inference.WriterSettings('out', pipeline=pipeline), net) is expected
