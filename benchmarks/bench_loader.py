"""Loader throughput of PairedImageDataset vs ClassBalancedPairedDataset (HES), and the index build time.

    python benchmarks/bench_loader.py --data /path/to/photos [--work /tmp/hes_bench] [--batches 100]

Prepares (once, in --work) HR sub-images (480/240), x4 MATLAB-bicubic LR sub-images, both as folders
and as LMDBs, with ``python -m wbsr_plugin.prepare``'s library functions; then times the index build
and draws ``--batches`` batches of 16 (gt_size 128) through BasicSR's EnlargedSampler and DataLoader
for each dataset, backend and worker count. Prints a table in patches/s.
"""
import argparse
import os
import sys
import time
from os import path as osp

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import wbsr_plugin  # noqa: E402, F401
from wbsr_plugin.data import prepare_util  # noqa: E402
from wbsr_plugin.data.class_balanced_paired_dataset import ClassBalancedPairedDataset  # noqa: E402
from wbsr_plugin.data.hes_index import build_index, default_index_path  # noqa: E402
from wbsr_plugin.data.training_progress import publish_training_progress  # noqa: E402

from basicsr.data.data_sampler import EnlargedSampler  # noqa: E402
from basicsr.data.paired_image_dataset import PairedImageDataset  # noqa: E402


def prepare(data, work):
    steps = [
        (prepare_util.extract_subimages, (data, osp.join(work, 'hr_sub')), {'n_thread': 2}),
        (prepare_util.downsample, (osp.join(work, 'hr_sub'), osp.join(work, 'lr_x4_sub')), {'scale': 4,
                                                                                           'n_thread': 2}),
        (prepare_util.make_lmdb, (osp.join(work, 'hr_sub'), osp.join(work, 'hr_sub.lmdb')), {}),
        (prepare_util.make_lmdb, (osp.join(work, 'lr_x4_sub'), osp.join(work, 'lr_x4_sub.lmdb')), {}),
    ]
    for func, args, kwargs in steps:
        try:
            func(*args, **kwargs)
        except prepare_util.AlreadyDone as done:
            print(done)


def dataset_opt(work, backend, **extra):
    suffix = '.lmdb' if backend == 'lmdb' else ''
    opt = {
        'name': 'sun_hays80', 'phase': 'train', 'scale': 4, 'gt_size': 128, 'use_hflip': True, 'use_rot': True,
        'dataroot_gt': osp.join(work, 'hr_sub' + suffix), 'dataroot_lq': osp.join(work, 'lr_x4_sub' + suffix),
        'io_backend': {'type': backend}
    }
    opt.update(extra)
    return opt


def warm_cache(opt):
    """Read every file once so that the first variant timed does not pay for a cold page cache."""
    for folder in (opt['dataroot_gt'], opt['dataroot_lq']):
        for root, _, files in os.walk(folder):
            for name in files:
                with open(osp.join(root, name), 'rb') as fin:
                    while fin.read(1 << 24):
                        pass


def throughput(dataset, num_workers, batches, batch_size=16):
    sampler = EnlargedSampler(dataset, 1, 0, ratio=100)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                        persistent_workers=num_workers > 0)
    iterator = iter(loader)
    for _ in range(min(5, batches)):  # warm up: worker start, file handles
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', default='/work/shared/data/train/sun_hays80', help='folder of HR photos')
    parser.add_argument('--work', default='/tmp/hes_bench', help='scratch folder for the prepared data')
    parser.add_argument('--batches', type=int, default=100, help='timed batches of 16 per configuration')
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 2], help='DataLoader worker counts')
    parser.add_argument('--repeats', type=int, default=3, help='interleaved runs per configuration (median)')
    args = parser.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    prepare(args.data, args.work)
    torch.manual_seed(0)

    rows = []
    for backend in ('disk', 'lmdb'):
        opt = dataset_opt(args.work, backend)
        index_path = default_index_path(opt, 32, 16)
        start = time.perf_counter()
        index = build_index(opt, index_path, stride=16)
        print(f'index build ({backend}): {len(index)} candidates of {len(index.lq_paths)} images in '
              f'{time.perf_counter() - start:.2f} s')
        warm_cache(opt)
        variants = [
            ('PairedImageDataset', lambda: PairedImageDataset(dataset_opt(args.work, backend)), None),
            ('HES sample-level', lambda: ClassBalancedPairedDataset(dataset_opt(args.work, backend)), (0, 1000)),
            ('HES class-level', lambda: ClassBalancedPairedDataset(dataset_opt(args.work, backend)), (1000, 1000)),
        ]
        for workers in args.workers:
            rates = {name: [] for name, _, _ in variants}
            for _ in range(args.repeats):  # interleaved, so drifts hit every variant alike
                for name, make, progress in variants:
                    publish_training_progress(*(progress or (0, 0)))
                    rates[name].append(throughput(make(), workers, args.batches))
            for name, _, _ in variants:
                rows.append((backend, workers, name, float(np.median(rates[name]))))

    publish_training_progress(1000, 1000)
    hes = ClassBalancedPairedDataset(dataset_opt(args.work, 'disk'))
    drawer = hes._current_drawer()
    start = time.perf_counter()
    for _ in range(100000):
        drawer.draw()
    draw_us = (time.perf_counter() - start) * 10
    print(f'HES class-level draw (class by Eq. 8 + candidate): {draw_us:.1f} us per patch')

    print(f'\n{"backend":<8} {"workers":>7}  {"dataset":<20} {"patches/s":>10} {"vs Paired":>10}')
    for backend, workers, name, rate in rows:
        base = next(r[3] for r in rows if r[:2] == (backend, workers) and r[2] == 'PairedImageDataset')
        print(f'{backend:<8} {workers:>7}  {name:<20} {rate:>10.1f} {100 * (rate / base - 1):>+9.1f}%')


if __name__ == '__main__':
    main()
