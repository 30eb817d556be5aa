"""Folder throughput of ``wbsr_plugin.infer`` in one process against N processes under torchrun (CPU).

    python benchmarks/bench_sharded_infer.py --images 8 --size 64 --settings 1x2 2x1 1x1 --repeat 2

Writes a random-weight SRResNet x4 supernet (speed does not depend on the weights) and a folder of
``--images`` LR crops (``--size`` pixels square) of scikit-image's photographs, then runs the CLI on
the folder once per setting PxT: P processes (P = 1: a plain process; P > 1: ``torchrun
--nproc_per_node=P``) of T threads each (``--threads T``). Prints a Markdown table: wall time of
the whole command (start-up included), the slowest process's time over its files (start-up
excluded, from the totals line), and images per second on both.
"""
import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from os import path as osp

import cv2
import numpy as np
import torch
from skimage import data as skimage_data

import wbsr_plugin  # noqa: F401
from wbsr_plugin.cli.sharding import available_cpus

from basicsr.archs import build_network

PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket')  # bundled with scikit-image (no download)


def make_folder(folder, count, size):
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        rgb = getattr(skimage_data, PHOTOS[i % len(PHOTOS)])()
        step = i // len(PHOTOS)
        crop = rgb[step * size:(step + 1) * size, step * size:(step + 1) * size]
        if crop.shape[:2] != (size, size):
            raise SystemExit(f'--size {size} is too large for {count} images (photos are at least 300 pixels).')
        cv2.imwrite(osp.join(folder, f'{i:03d}.png'), np.ascontiguousarray(crop[:, :, ::-1]))


def setting(text):
    try:
        procs, threads = (int(v) for v in text.split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'a setting is PROCESSESxTHREADS such as 2x1, got {text!r}') from None
    if procs < 1 or threads < 1:
        raise argparse.ArgumentTypeError(f'processes and threads must be positive, got {text!r}')
    return procs, threads


def run(procs, threads, folder, model, out, extra):
    cli = ['-m', 'wbsr_plugin.infer', '-i', folder, '-o', out, '--model', model, '--device', 'cpu',
           '--threads', str(threads), *extra]
    if procs == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={procs}', *cli]
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f'{cmd} failed:\n{proc.stderr[-3000:]}')
    match = re.search(r'^total: .*\| ([\d.]+) s wall', proc.stdout, flags=re.MULTILINE)
    return wall, float(match.group(1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--images', type=int, default=8, help='images in the folder. Default: 8')
    parser.add_argument('--size', type=int, default=64, help='LR side of each image. Default: 64')
    cpus = available_cpus()
    parser.add_argument('--settings', type=setting, nargs='+', default=[(1, cpus), (cpus, 1), (1, 1)],
                        help=f'PROCESSESxTHREADS each. Default: 1x{cpus} {cpus}x1 1x1')
    parser.add_argument('--budget', default='0.6', help='--budget of infer. Default: 0.6')
    parser.add_argument('--repeat', type=int, default=1, help='runs of each setting, interleaved; medians. Default: 1')
    args = parser.parse_args(argv)

    load = ' '.join(f'{v:.1f}' for v in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'
    with tempfile.TemporaryDirectory() as root:
        folder, model = osp.join(root, 'in'), osp.join(root, 'srresnet_x4.pth')
        make_folder(folder, args.images, args.size)
        torch.manual_seed(0)
        torch.save({'params': build_network({'type': 'WBSRResNet', 'upscale': 4}).state_dict()}, model)
        runs = {s: [] for s in args.settings}
        for i in range(args.repeat):
            for procs, threads in args.settings:
                out = osp.join(root, f'out{procs}x{threads}_{i}')
                runs[procs, threads].append(run(procs, threads, folder, model, out, ['--budget', args.budget]))
        rows = [(s, statistics.median(w for w, _ in r), statistics.median(t for _, t in r)) for s, r in runs.items()]

    print(f'{args.images} images of {args.size}x{args.size} LR, SRResNet x4 supernet (paper widths), '
          f'--budget {args.budget}, median of {args.repeat}; {cpus} cores, torch {torch.__version__}, '
          f'{platform.machine()}, load average before: {load}')
    print('| processes | threads each | command wall s | images/s | slowest process over its files s | images/s |')
    print('|---|---|---|---|---|---|')
    for (procs, threads), wall, loop in rows:
        print(f'| {procs} | {threads} | {wall:.1f} | {args.images / wall:.2f} | {loop:.1f} | '
              f'{args.images / loop:.2f} |')


if __name__ == '__main__':
    main()
