"""Folder time of ``wbsr_plugin.infer``: reading, the engine and writing one after another (``--pipeline serial``)
against overlapped (``--pipeline overlapped``, the default on a GPU), side by side in one process.

    python benchmarks/bench_infer_folder.py --device cpu --threads 2 --lq-size 160x120
    python benchmarks/bench_infer_folder.py --device cuda --images 40

Makes an LR folder of ``--images`` photos of ``--data`` (sorted; reused in turn when there are fewer), each
downscaled x4 with OpenCV's INTER_AREA, and with ``--lq-size WxH`` cropped to its centre WxH. The network is a
random-weight ``--arch`` x4 supernet (seeded; speed does not depend on the weights) or ``--model``. One engine
runs the folder in both modes, alternately, ``--repeat`` times each after a warm-up image, each time into a new
output folder, as the CLI runs it (``--budget``, ``--save-map``). Prints a Markdown table per mode: wall time
over the folder (the model's loading excluded), the sum of the engine's own times (``report.time_s``), their
ratio (1 = reading and writing cost nothing), and images per second; medians over the repeats.
"""
import argparse
import os
import platform
import statistics
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO
from os import path as osp

import cv2
import torch

import wbsr_plugin  # noqa: F401
from wbsr_plugin import infer
from wbsr_plugin.archs.supernet_util import supernet_types
from wbsr_plugin.cli.folder_inference import WriterSettings
from wbsr_plugin.cli.image_io import read_image
from wbsr_plugin.cli.sharding import DistContext
from wbsr_runtime.files import list_images
from wbsr_runtime.run_totals import RankTotals

from basicsr.archs import build_network

DEFAULT_DATA = '../shared/data/train/sun_hays80/'
MODES = ('serial', 'overlapped')  # infer --pipeline


def parse_size(text):
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected WxH, got {text!r}') from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f'expected a positive WxH, got {text!r}')
    return w, h


def centre_crop(img, size):
    """The centre ``size`` (w, h) of ``img`` (all of a side that is shorter)."""
    w, h = size
    top, left = max(0, (img.shape[0] - h) // 2), max(0, (img.shape[1] - w) // 2)
    return img[top:top + h, left:left + w]


def make_lr_folder(data, folder, count, lq_size):
    """``count`` LR PNGs in ``folder``: the photos of ``data`` downscaled x4 (INTER_AREA), cropped to ``lq_size``."""
    photos = list_images(data)
    if not photos:
        raise SystemExit(f'error: --data: no images in {data}')
    os.makedirs(folder)
    for i in range(count):
        photo = cv2.imread(photos[i % len(photos)], cv2.IMREAD_COLOR)
        lr = cv2.resize(photo, (photo.shape[1] // 4, photo.shape[0] // 4), interpolation=cv2.INTER_AREA)
        cv2.imwrite(osp.join(folder, f'{i:03d}.png'), centre_crop(lr, lq_size) if lq_size else lr)


def random_checkpoint(arch, path):
    """A seeded random-weight x4 supernet of ``arch`` saved to ``path``."""
    torch.manual_seed(0)
    torch.save({'params': build_network({'type': arch, 'upscale': 4}).state_dict()}, path)


def infer_args(lr_folder, out, model, args):
    argv = ['-i', lr_folder, '-o', out, '--model', model, '--device', args.device, '--budget', str(args.budget)]
    argv += ['--threads', str(args.threads)] if args.threads else []
    argv += ['--save-map'] if args.save_map else []
    argv += ['--fp32'] if args.fp32 else []
    parser = infer.build_parser()
    parsed = parser.parse_args(argv)
    return parser, parsed


def folder_run(lr_folder, out, mode, engine, net, cli):
    """``(wall s, engine s)`` of infer's loop over the folder into ``out`` in one mode."""
    parser, args = cli(out)
    args.pipeline = mode
    paths, names, existing = infer.plan_outputs(args, parser, DistContext())
    totals = RankTotals()
    start = time.perf_counter()
    with redirect_stdout(StringIO()), redirect_stderr(StringIO()) as err:
        settings = WriterSettings(args.output, args.ext, args.save_map, args.overwrite, args.pipeline,
                                  existing=existing)
        infer.super_resolve(paths, engine, net, names, settings, totals)
    wall = time.perf_counter() - start
    if totals.failed or totals.images != len(paths):
        raise SystemExit(f'error: {len(totals.failed)} image(s) failed:\n{err.getvalue()[-2000:]}')
    return wall, totals.engine_s


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', default=DEFAULT_DATA, help=f'folder of photos. Default: {DEFAULT_DATA}')
    parser.add_argument('--images', type=int, default=20, help='images in the LR folder. Default: 20')
    parser.add_argument('--lq-size', type=parse_size, help='crop every LR image to its centre WxH')
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (infer --threads). Default: 2')
    parser.add_argument('--arch', choices=supernet_types(), default='WBSRResNet', help='Default: WBSRResNet')
    parser.add_argument('--model', help='checkpoint instead of random weights')
    parser.add_argument('--budget', type=float, default=0.6, help='infer --budget. Default: 0.6')
    parser.add_argument('--save-map', action='store_true', help='also write the subnet maps')
    parser.add_argument('--fp32', action='store_true', help='full precision on CUDA (infer --fp32)')
    parser.add_argument('--repeat', type=int, default=2, help='runs of each mode, alternately; medians. Default: 2')
    args = parser.parse_args(argv)

    load = ' '.join(f'{v:.1f}' for v in os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'
    runs = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as root:
        lr_folder, model = osp.join(root, 'lr'), args.model or osp.join(root, f'{args.arch}_x4.pth')
        make_lr_folder(args.data, lr_folder, args.images, args.lq_size)
        if not args.model:
            random_checkpoint(args.arch, model)
        sizes = sorted({cv2.imread(p).shape[1::-1] for p in list_images(lr_folder)})

        def cli(out):
            return infer_args(lr_folder, out, model, args)

        cli_parser, first = cli(osp.join(root, 'warm'))
        device = infer.select_device(first.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        engine, net, _, _ = infer.build_engine(first, cli_parser, device, None)
        engine.run(read_image(list_images(lr_folder)[0])[0])  # warm-up
        for i in range(args.repeat):
            order = list(MODES) if i % 2 == 0 else list(MODES)[::-1]
            for mode in order:
                runs[mode].append(folder_run(lr_folder, osp.join(root, f'{mode}{i}'), mode, engine, net, cli))

    shown = ', '.join(f'{w}x{h}' for w, h in sizes[:3]) + (' ...' if len(sizes) > 3 else '')
    print(f'{args.images} images of {shown} LR, {args.arch} x4 ({"--model" if args.model else "random weights"}), '
          f'--budget {args.budget}{" --save-map" if args.save_map else ""}, {args.device}, '
          f'{torch.get_num_threads()} threads, median of {args.repeat}; torch {torch.__version__}, '
          f'{platform.machine()}, load average before: {load}')
    print('| mode | wall s | engine s | wall / engine | images/s |')
    print('|---|---|---|---|---|')
    for mode, found in runs.items():
        wall, engine_s = statistics.median(w for w, _ in found), statistics.median(e for _, e in found)
        ratio = f'{wall / engine_s:.3f}' if engine_s > 0 else 'n/a'
        print(f'| {mode} | {wall:.2f} | {engine_s:.2f} | {ratio} | {args.images / wall:.2f} |')


if __name__ == '__main__':
    main()
