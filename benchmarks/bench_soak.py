"""Soak: ``wbsr_plugin.infer`` over many images of different sizes, with the process's resident memory logged.

    python benchmarks/bench_soak.py --images 200 --sizes 24 200 --save-map

Writes a random-weight SRResNet x4 supernet (``--num-feat``/``--num-block``; memory does not depend on the
weights) and ``--images`` LR crops of scikit-image's photographs, each of a different size between the two
``--sizes`` (pixels, width and height drawn independently, seeded), then runs the CLI on the folder in a
subprocess. The resident memory (VmRSS) is read from ``/proc`` whenever an image's line appears. Prints the
memory after chosen images and the growth from image 20 to the last (what a leak would show; the first
images warm up the caches of every size). Linux only (``/proc``).
"""
import argparse
import os
import platform
import re
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
from wbsr_plugin.inference.checkpoint import WBSR_KEY, make_wbsr_meta

from basicsr.archs import build_network

PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket')  # bundled with scikit-image (no download)
WARM = 20  # images before the growth is measured


def make_folder(folder, count, sizes, seed=0):
    """``count`` crops of the photos, of random sizes in [sizes[0], sizes[1]] (seeded)."""
    rng = np.random.default_rng(seed)
    photos = [getattr(skimage_data, name)() for name in PHOTOS]
    for i in range(count):
        rgb = photos[i % len(photos)]
        h, w = (int(rng.integers(sizes[0], min(sizes[1], side) + 1)) for side in rgb.shape[:2])
        top, left = int(rng.integers(rgb.shape[0] - h + 1)), int(rng.integers(rgb.shape[1] - w + 1))
        cv2.imwrite(osp.join(folder, f'{i:04d}.png'), np.ascontiguousarray(rgb[top:top + h, left:left + w, ::-1]))


def rss_mb(pid):
    with open(f'/proc/{pid}/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:')) / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--images', type=int, default=200)
    parser.add_argument('--sizes', type=int, nargs=2, default=[24, 200], help='smallest and largest LR side')
    parser.add_argument('--num-feat', type=int, default=32)
    parser.add_argument('--num-block', type=int, default=4)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--save-map', action='store_true', help='also write the maps')
    parser.add_argument('--plan-by', choices=('flops', 'time'), default='flops')
    args = parser.parse_args(argv)
    if not osp.isdir('/proc/self'):
        parser.exit(2, 'error: the soak reads /proc (Linux only).\n')
    with tempfile.TemporaryDirectory(prefix='wbsr-soak-') as root:
        torch.manual_seed(0)
        depths = sorted({max(1, args.num_block // 4), max(1, args.num_block // 2), args.num_block})
        net = build_network({'type': 'WBSRResNet', 'upscale': 4, 'num_feat': args.num_feat,
                             'num_block': args.num_block, 'widths': [args.num_feat // 2, args.num_feat * 3 // 4,
                                                                      args.num_feat], 'depths': depths})
        model = osp.join(root, 'net.pth')
        torch.save({'params': net.state_dict(), WBSR_KEY: make_wbsr_meta(net, None, 64)}, model)
        folder = osp.join(root, 'in')
        os.makedirs(folder)
        make_folder(folder, args.images, args.sizes)
        cli = [sys.executable, '-m', 'wbsr_plugin.infer', '-i', folder, '-o', osp.join(root, 'out'), '--model',
               model, '--device', 'cpu', '--threads', str(args.threads), '--plan-by', args.plan_by]
        cli += ['--save-map'] if args.save_map else []
        start = time.perf_counter()
        proc = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        memory = []
        for line in proc.stdout:
            if re.match(r'^\d{4}\.png: ', line):
                memory.append(rss_mb(proc.pid))
        status = proc.wait()
        seconds = time.perf_counter() - start
    if status != 0 or len(memory) != args.images:
        raise SystemExit(f'error: infer ended with status {status} after {len(memory)} of {args.images} images.')
    print(f'# torch {torch.__version__}, {platform.machine()}, {args.threads} thread(s), {args.images} images of '
          f'{args.sizes[0]}-{args.sizes[1]} LR pixels a side, SRResNet {args.num_feat}x{args.num_block}, '
          f'maps: {args.save_map}, plans by {args.plan_by}, {seconds:.0f} s\n')
    marks = sorted({1, WARM, len(memory) // 4, len(memory) // 2, 3 * len(memory) // 4, len(memory)})
    print('| after image | ' + ' | '.join(str(m) for m in marks) + f' | growth {WARM} -> {len(memory)} |')
    print('|---' * (len(marks) + 2) + '|')
    growth = memory[-1] - memory[WARM - 1]
    print('| resident MB | ' + ' | '.join(f'{memory[m - 1]:.0f}' for m in marks) + f' | {growth:+.1f} MB |')
    print(f'\npeak {max(memory):.0f} MB; largest growth between consecutive images '
          f'{max(b - a for a, b in zip(memory, memory[1:])):+.1f} MB')


if __name__ == '__main__':
    main()
