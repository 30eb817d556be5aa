"""Sharded folder inference: launch detection, devices, threads, file sharing, output names, torchrun."""
import glob
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from os import path as osp

import cv2
import pytest
import torch
from conftest import FIXTURES, TINY_RESNET, run_cli

from wbsr_plugin.cli.sharding import (
    DistContext,
    cpu_threads_per_rank,
    dist_context_from_env,
    image_pixels,
    plan_work,
    rank_device,
    share_files,
)
from wbsr_plugin.inference.checkpoint import WBSR_KEY, make_wbsr_meta
from wbsr_runtime.images import ImageInfo
from wbsr_runtime.output_names import OutputNames, output_extension

from basicsr.archs import build_network

TORCHRUN_ENV = {'RANK': '1', 'WORLD_SIZE': '2', 'LOCAL_RANK': '1', 'LOCAL_WORLD_SIZE': '2'}


def test_dist_context_from_env():
    assert dist_context_from_env({}) == DistContext()
    ctx = dist_context_from_env(TORCHRUN_ENV)
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.local_world_size) == (1, 2, 1, 2)
    assert ctx.distributed and not ctx.is_main
    assert dist_context_from_env({'RANK': '0', 'WORLD_SIZE': '1'}) == DistContext()
    with pytest.raises(ValueError, match='RANK is not set'):
        dist_context_from_env({'WORLD_SIZE': '2'})
    with pytest.raises(ValueError, match='inconsistent'):
        dist_context_from_env(dict(TORCHRUN_ENV, RANK='2'))
    with pytest.raises(ValueError, match="LOCAL_RANK must be an integer, got 'x'"):
        dist_context_from_env(dict(TORCHRUN_ENV, LOCAL_RANK='x'))


def test_rank_device_and_threads():
    one, two = DistContext(), DistContext(1, 2, 1, 2)
    assert rank_device('auto', one, cuda_count=0) == torch.device('cpu')
    assert rank_device('auto', one, cuda_count=1) == torch.device('cuda')
    assert rank_device('auto', two, cuda_count=1) == torch.device('cpu')  # fewer GPUs than ranks: all on the CPU
    assert rank_device('auto', two, cuda_count=2) == torch.device('cuda', 1)
    assert rank_device('cuda', two, cuda_count=1) == torch.device('cuda', 0)
    with pytest.raises(ValueError, match='CUDA is not available'):
        rank_device('cuda', two, cuda_count=0)
    with pytest.raises(ValueError, match='expected one of'):
        rank_device('gpu', one)

    cpu = torch.device('cpu')
    assert cpu_threads_per_rank(two, cpu, env={}, cpus=16) == 8
    assert cpu_threads_per_rank(two, cpu, env={'OMP_NUM_THREADS': '1'}, cpus=16) == 8  # torchrun's default
    assert cpu_threads_per_rank(two, cpu, env={'OMP_NUM_THREADS': '3'}, cpus=16) is None  # the user's choice
    assert cpu_threads_per_rank(DistContext(1, 3, 1, 3), cpu, env={}, cpus=2) == 1
    assert cpu_threads_per_rank(one, cpu, env={}, cpus=16) is None
    assert cpu_threads_per_rank(two, torch.device('cuda', 1), env={}, cpus=16) is None


def test_share_files_each_once_and_balanced():
    paths = [f'{i}.png' for i in range(7)]
    assert share_files(paths, 2) == [paths[0::2], paths[1::2]]  # equal sizes: round-robin
    weights = [100, 1, 1, 1, 1, 1, 95]
    shares = share_files(paths, 2, weights)
    assert sorted(p for share in shares for p in share) == paths
    loads = [sum(weights[paths.index(p)] for p in share) for share in shares]
    assert sorted(loads) == [100, 100] and all(share == sorted(share) for share in shares)
    assert share_files(paths, 3, [0] * 7) == [paths[0::3], paths[1::3], paths[2::3]]
    assert share_files(paths[:1], 3) == [paths[:1], [], []]
    with pytest.raises(ValueError, match='7 files'):
        share_files(paths, 2, [1])


def test_output_names_without_decoding(tmp_path):
    assert output_extension('a.jpg', 'auto', ImageInfo('rgb', 255)) == 'jpg'
    assert output_extension('a.jpg', 'auto', ImageInfo('rgba', 255)) == 'png'
    assert output_extension('a.tif', 'auto', ImageInfo('rgb', 65535)) == 'tif'
    out = str(tmp_path)
    names = OutputNames(out, ['in/a.JPG', 'in/b.tif', 'in/c.png'], 'out', 'auto', save_map=False)
    assert names.image_candidates('in/a.JPG') == [osp.join(out, 'a_out.jpg'), osp.join(out, 'a_out.png')]
    assert names.image_candidates('in/b.tif') == [osp.join(out, 'b_out.tif')]
    assert OutputNames(out, ['in/a.png'], 'x4', 'webp', False).image_candidates('in/a.png') == [
        osp.join(out, 'a_x4.webp')]
    assert not names.finished('in/a.JPG')
    (tmp_path / '.a_out.png.host-123-abc.tmp.png').write_bytes(b'')  # an unfinished write does not count
    assert not names.finished('in/a.JPG')
    (tmp_path / 'a_out.png').write_bytes(b'')  # an RGBA/16-bit JPEG-named input would give this
    assert names.finished('in/a.JPG') and not names.finished('in/b.tif')
    with_maps = OutputNames(out, ['in/a.JPG'], 'out', 'auto', save_map=True)
    assert not with_maps.finished('in/a.JPG') and with_maps.map_path('in/a.JPG') == osp.join(out, 'a_map.png')


@pytest.fixture
def folder(tmp_path):
    """A tiny supernet checkpoint and 5 tiny images of different sizes (crops of the fixtures)."""
    net = build_network(dict(TINY_RESNET, upscale=4)).eval()
    model = str(tmp_path / 'tiny.pth')
    torch.save({'params': net.state_dict(), WBSR_KEY: make_wbsr_meta(net, [2. * k for k in range(1, 10)], 16)}, model)
    inputs = tmp_path / 'in'
    inputs.mkdir()
    lr = osp.join(FIXTURES, 'lr_x4')
    for i, name in enumerate(sorted(os.listdir(lr))):
        cv2.imwrite(str(inputs / name), cv2.imread(osp.join(lr, name))[:24 - 4 * i, :20])
    cv2.imwrite(str(inputs / 'hr_crop.png'), cv2.imread(osp.join(FIXTURES, 'hr', 'rocket.png'))[:48, :40])
    return model, str(inputs), tmp_path / 'out'


def test_plan_work_shares_by_pixels_and_skips_done(folder):
    model, inputs, _ = folder
    paths = sorted(osp.join(inputs, n) for n in os.listdir(inputs))
    large = osp.join(inputs, 'hr_crop.png')
    assert image_pixels(large) == 48 * 40 and image_pixels(model) == 0
    shares, skipped = plan_work(paths, 2, is_done=lambda p: 'coffee' in p)
    assert skipped == 1 and sorted(shares[0] + shares[1]) == [p for p in paths if 'coffee' not in p]
    assert shares[0] == [large]  # the largest image alone outweighs the others


def run_sharded(model, inputs, out, *extra, check=True):
    """Run infer under torchrun with 2 ranks; each rank's stdout and stderr go to their own files (``--redirects``),
    so that lines of the two ranks can never cut into each other. Returns the process (its ``stdout`` and
    ``stderr`` the ranks' files, rank 0's first, and torchrun's own), the (rank, name) of every image done and the
    totals lines."""
    logs = tempfile.mkdtemp(prefix='torchrun-logs-', dir=osp.dirname(inputs))
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '--log-dir', logs,
                '--redirects', '3']
    proc = run_cli([*torchrun, '-m', 'wbsr_plugin.infer', '-i', inputs, '-o', str(out), '--model', model, '-t', '16',
                    '--device', 'cpu', *extra], cwd=osp.dirname(inputs), timeout=120, check=check)
    for stream in ('stdout', 'stderr'):
        files = sorted(glob.glob(osp.join(logs, '**', f'{stream}.log'), recursive=True),
                       key=lambda f: int(osp.basename(osp.dirname(f))))  # .../attempt_0/RANK/stdout.log
        assert len(files) == 2, files
        setattr(proc, stream, ''.join(open(f).read() for f in files) + getattr(proc, stream))
    shutil.rmtree(logs)
    done = re.findall(r'^\[rank (\d)\] (\w+)\.png: \d+x\d+ -> ', proc.stdout, flags=re.M)
    totals = [line for line in proc.stdout.splitlines() if line.startswith('total: ')]
    return proc, done, totals


@pytest.mark.skipif(sys.platform != 'linux', reason='torchrun with gloo is exercised on Linux')
def test_torchrun_two_gloo_processes_then_skip_existing(folder):
    model, inputs, out = folder
    names = sorted(osp.splitext(n)[0] for n in os.listdir(inputs))
    _, done, totals = run_sharded(model, inputs, out)
    assert sorted(name for _, name in done) == names  # every image once
    per_rank = Counter(rank for rank, _ in done)
    assert per_rank == Counter({'0': 1, '1': 4})  # by pixels: the 48x40 crop against four smaller ones
    assert len(totals) == 1 and totals[0].startswith('total: 5 image(s) (rank 0: 1, rank 1: 4), 0 skipped, 0 failed')
    assert sorted(os.listdir(out)) == [f'{n}_out.png' for n in names]
    assert cv2.imread(str(out / 'hr_crop_out.png')).shape == (192, 160, 3)

    # resume: only the deleted output is redone; a corrupt input fails on the other rank, and every
    # rank exits with status 1 after rank 0 has reported
    os.remove(out / 'chelsea_out.png')
    with open(osp.join(inputs, 'broken.png'), 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\nnot really')
    proc, done, totals = run_sharded(model, inputs, out, '--skip-existing', check=False)
    assert proc.returncode == 1
    assert done == [('0', 'chelsea')]
    assert len(totals) == 1
    assert totals[0].startswith('total: 1 image(s) (rank 0: 1, rank 1: 0), 4 skipped, 1 failed')
    assert '[rank 1] warning: skipped' in proc.stderr and '1 of 6 image(s) failed.' in proc.stderr
    assert sorted(os.listdir(out)) == [f'{n}_out.png' for n in names]


@pytest.mark.skipif(sys.platform != 'linux', reason='torchrun with gloo is exercised on Linux')
def test_torchrun_ranks_share_one_measurement_of_the_costs(folder, tmp_path, monkeypatch):
    model, inputs, out = folder
    monkeypatch.setenv('WBSR_CACHE_DIR', str(tmp_path / 'cache'))
    proc, done, _ = run_sharded(model, inputs, out, '--plan-by', 'time')
    assert len(done) == 5 and proc.stderr.count("measuring this device's costs") == 1  # rank 0 only
    assert len(list((tmp_path / 'cache').iterdir())) == 1
    proc, done, _ = run_sharded(model, inputs, out, '--plan-by', 'time', '--suffix', 'again')
    assert len(done) == 5 and "measuring this device's costs" not in proc.stderr  # both ranks read it
