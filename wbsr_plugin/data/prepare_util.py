"""Data preparation: sub-images, MATLAB-bicubic LR images, LMDBs, HES index and statistics.

The command line is ``python -m wbsr_plugin.prepare``; everything it does lives here. Outputs that
already exist and are complete are reported as such (:class:`AlreadyDone`), partial outputs are
refused with a clear message (:class:`PreparationError`), never overwritten silently.
"""
import os
import shutil
from multiprocessing import Pool
from os import path as osp

import cv2
import numpy as np
import torch

from wbsr_plugin.data.hes import class_histogram
from wbsr_plugin.data.hes_index import HESIndex
from wbsr_plugin.data.paired_reading import PairReader
from wbsr_plugin.utils.progress import progress_bar
from wbsr_runtime.files import IMAGE_EXTENSIONS, list_images

from basicsr.utils import scandir
from basicsr.utils.lmdb_util import make_lmdb_from_imgs
from basicsr.utils.matlab_functions import imresize

from .difficulty import difficulty_classes, quantile_thresholds


class PreparationError(ValueError):
    """A preparation step cannot run (bad input or a partial output)."""


class AlreadyDone(Exception):
    """The output of a preparation step already exists and is complete."""


def input_images(folder):
    """Sorted image file names (relative) in ``folder`` and its subfolders; PreparationError when there are none."""
    if not osp.isdir(folder):
        raise PreparationError(f"input folder '{folder}' does not exist.")
    names = [osp.relpath(p, folder) for p in list_images(folder, recursive=True)]
    if not names:
        raise PreparationError(f"input folder '{folder}' holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
    return names


def read_image_file(path):
    """An image as OpenCV reads it (unchanged depth and channels); PreparationError if unreadable."""
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise PreparationError(f"'{path}' cannot be read as an image.")
    return img


def check_distinct(input_folder, save_folder):
    """PreparationError when the output folder is the input folder or lies inside it (its files would be taken
    for inputs, or for the complete output)."""
    source, target = osp.realpath(input_folder), osp.realpath(save_folder)
    if target == source or target.startswith(source.rstrip(os.sep) + os.sep):
        where = 'is' if target == source else 'lies inside'
        raise PreparationError(f"-o '{save_folder}' {where} the input folder '{input_folder}'; choose another "
                               'output folder.')


def _check_output(save_folder, expected):
    """AlreadyDone when every expected file exists, PreparationError when only some do."""
    if not osp.isdir(save_folder):
        return
    present = set(scandir(save_folder, recursive=True))
    missing = [name for name in expected if name not in present]
    if not missing and expected:
        raise AlreadyDone(f"'{save_folder}' is already complete ({len(expected)} images); nothing to do.")
    if present:
        raise PreparationError(f"'{save_folder}' exists and holds {len(present)} files but {len(missing)} of the "
                               f'{len(expected)} expected ones are missing (an interrupted run?); remove it and run '
                               'again.')


def crop_positions(length, crop_size, step, thresh_size):
    """Offsets of BasicSR's ``extract_subimages.py`` along one axis."""
    positions = list(range(0, length - crop_size + 1, step))
    if not positions:
        return []
    if length - (positions[-1] + crop_size) > thresh_size:
        positions.append(length - crop_size)
    return positions


def subimage_names(name, shape, crop_size, step, thresh_size):
    base = osp.splitext(name)[0]
    count = len(crop_positions(shape[0], crop_size, step, thresh_size)) * len(
        crop_positions(shape[1], crop_size, step, thresh_size))
    return [f'{base}_s{i:03d}.png' for i in range(1, count + 1)]


def _image_shape(path):
    from PIL import Image
    with Image.open(path) as img:
        return img.size[1], img.size[0]


def _subimages_worker(args):
    path, save_folder, name, crop_size, step, thresh_size, compression = args
    img = read_image_file(path)
    base = osp.splitext(name)[0]
    tops = crop_positions(img.shape[0], crop_size, step, thresh_size)
    lefts = crop_positions(img.shape[1], crop_size, step, thresh_size)
    index = 0
    for top in tops:
        for left in lefts:
            index += 1
            out = osp.join(save_folder, f'{base}_s{index:03d}.png')
            os.makedirs(osp.dirname(out), exist_ok=True)
            cv2.imwrite(out, np.ascontiguousarray(img[top:top + crop_size, left:left + crop_size, ...]),
                        [cv2.IMWRITE_PNG_COMPRESSION, compression])
    return index


def extract_subimages(input_folder, save_folder, crop_size=480, step=240, thresh_size=0, compression=3, n_thread=1):
    """Crop every image into overlapping sub-images, like BasicSR's ``scripts/data_preparation/extract_subimages.py``.

    Sub-image ``i`` (from 1, row-major) of ``name.ext`` is ``name_s{i:03d}.png`` (always lossless PNG).
    Images smaller than ``crop_size`` give none. HR defaults: 480/240/0; for x4 LR sub-images use 120/60/0.

    Args:
        input_folder (str): Images to crop.
        save_folder (str): Output folder (must not exist, or be complete).
        crop_size (int): Sub-image side. Default: 480.
        step (int): Step between sub-images. Default: 240.
        thresh_size (int): A remainder larger than this adds a sub-image flush with the border. Default: 0.
        compression (int): PNG compression level 0-9. Default: 3.
        n_thread (int): Worker processes. Default: 1.

    Returns:
        int: Number of sub-images written.
    """
    names = input_images(input_folder)
    check_distinct(input_folder, save_folder)
    expected = []
    for name in names:
        expected += subimage_names(name, _image_shape(osp.join(input_folder, name)), crop_size, step, thresh_size)
    _check_output(save_folder, expected)
    os.makedirs(save_folder, exist_ok=True)
    jobs = [(osp.join(input_folder, n), save_folder, n, crop_size, step, thresh_size, compression) for n in names]
    return _run(jobs, _subimages_worker, n_thread, 'subimages')


def _single_threaded_worker():
    """Pool initializer: torch in one thread (the processes are the parallelism). A forked child that opened
    a parallel region of the OpenMP pool it inherited from a parent that had used it would hang."""
    torch.set_num_threads(1)


def _run(jobs, worker, n_thread, desc):
    total = 0
    with progress_bar(total=len(jobs), unit='image', desc=desc) as pbar:
        if n_thread > 1:
            with Pool(n_thread, initializer=_single_threaded_worker) as pool:
                for count in pool.imap_unordered(worker, jobs):
                    total += count
                    pbar.update(1)
        else:
            for job in jobs:
                total += worker(job)
                pbar.update(1)
    return total


def _downsample_worker(args):
    path, out, scale = args
    img = read_image_file(path)
    if img.dtype != np.uint8:
        raise PreparationError(f"'{path}' is {img.dtype}, not 8-bit; convert it first.")
    if img.ndim != 3 or img.shape[2] != 3:
        raise PreparationError(f"'{path}' has shape {img.shape}; expected an 8-bit RGB image.")
    if img.shape[0] % scale or img.shape[1] % scale:
        raise PreparationError(f"'{path}' is {img.shape[0]}x{img.shape[1]}, not a multiple of scale {scale}; its LR "
                               'image would not pair with it (crop sub-images with a crop_size divisible by scale).')
    lr = imresize(img.astype(np.float64) / 255., 1 / scale, antialiasing=True)
    lr = np.clip(np.round(lr * 255.), 0, 255).astype(np.uint8)
    os.makedirs(osp.dirname(out), exist_ok=True)
    cv2.imwrite(out, lr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    return 1


def downsample(input_folder, save_folder, scale=4, n_thread=1):
    """LR images with BasicSR's MATLAB-compatible bicubic ``imresize`` (antialiased), same file names.

    Args:
        input_folder (str): HR images (sides divisible by ``scale``).
        save_folder (str): Output folder (must not exist, or be complete).
        scale (int): Downsampling factor. Default: 4.
        n_thread (int): Worker processes. Default: 1.

    Returns:
        int: Number of images written.
    """
    names = input_images(input_folder)
    check_distinct(input_folder, save_folder)
    outputs = [osp.splitext(n)[0] + '.png' for n in names]
    _check_output(save_folder, outputs)
    jobs = [(osp.join(input_folder, n), osp.join(save_folder, o), scale) for n, o in zip(names, outputs)]
    return _run(jobs, _downsample_worker, n_thread, f'downsample x{scale}')


def make_lmdb(input_folder, lmdb_path, compress_level=1, n_thread=1):
    """An LMDB in BasicSR's ``make_lmdb_from_imgs`` layout (keys: file names without extension).

    Written to ``<name>.partial.lmdb`` and renamed when complete.

    Args:
        input_folder (str): Images.
        lmdb_path (str): Output, ending in ``.lmdb``.
        compress_level (int): PNG compression level. Default: 1.
        n_thread (int): Reader threads. Default: 1.

    Returns:
        int: Number of images stored.
    """
    if not lmdb_path.endswith('.lmdb'):
        raise PreparationError(f"LMDB path '{lmdb_path}' must end with '.lmdb'.")
    names = input_images(input_folder)
    keys = [osp.splitext(n)[0] for n in names]
    if len(set(keys)) != len(keys):
        raise PreparationError(f"'{input_folder}' holds files that differ only by extension; LMDB keys would clash.")
    if osp.exists(lmdb_path):
        meta = osp.join(lmdb_path, 'meta_info.txt')
        if osp.isfile(meta) and osp.isfile(osp.join(lmdb_path, 'data.mdb')):
            with open(meta) as fin:
                stored = sorted(line.split('.')[0] for line in fin if line.strip())
            if stored == sorted(keys):
                raise AlreadyDone(f"LMDB '{lmdb_path}' is already complete ({len(keys)} images); nothing to do.")
            raise PreparationError(f"LMDB '{lmdb_path}' exists but holds {len(stored)} keys, not the {len(keys)} "
                                   f"images of '{input_folder}'; remove it and run again.")
        raise PreparationError(f"'{lmdb_path}' exists but is not a complete LMDB; remove it and run again.")
    partial = lmdb_path[:-len('.lmdb')] + '.partial.lmdb'
    if osp.exists(partial):
        shutil.rmtree(partial)
    make_lmdb_from_imgs(input_folder, partial, names, keys, compress_level=compress_level,
                        multiprocessing_read=n_thread > 1, n_thread=n_thread)
    os.replace(partial, lmdb_path)
    return len(keys)


def class_stats(index_path, num_classes=10, flat_below=20.0, edge_from=60.0):
    """Class thresholds, histogram and flat/edge fractions of an index.

    ``flat``: difficulty below ``flat_below``; ``edge``: difficulty at least ``edge_from``
    (difficulty = L1 norm of the gradient vector, luma in [0, 255]; see docs/data.md).

    Returns:
        dict: thresholds, counts, fractions, flat, edge, num_candidates, quantiles.
    """
    index = HESIndex(index_path)
    thresholds = quantile_thresholds(index.score, num_classes)
    counts = class_histogram(index.score, thresholds, num_classes)
    scores = index.score.astype(np.float64)
    return {
        'index': index,
        'thresholds': thresholds,
        'counts': counts,
        'fractions': counts / counts.sum(),
        'flat': float((scores < flat_below).mean()),
        'edge': float((scores >= edge_from).mean()),
        'num_candidates': len(scores),
        'quantiles': {q: float(np.quantile(scores, q)) for q in (0.1, 0.25, 0.488, 0.5, 0.75, 0.834, 0.9)},
    }


def example_grid(index, thresholds, save_path, per_class=8, seed=0, zoom=2):
    """Save a grid image: one row of example LR patches per class (easiest class on top)."""
    rng = np.random.default_rng(seed)
    classes = difficulty_classes(index.score, thresholds)
    meta = index.meta
    opt = {'io_backend': {'type': meta['io_backend']}, 'dataroot_lq': meta['dataroot_lq'],
           'dataroot_gt': meta['dataroot_gt']}
    reader = PairReader(opt)
    size, gap = index.patch_size, 2
    num_classes = len(thresholds) + 1
    canvas = np.full((num_classes * (size + gap), per_class * (size + gap), 3), 255, np.uint8)
    cache = {}
    for cls in range(num_classes):
        members = np.flatnonzero(classes == cls)
        if members.size == 0:
            continue
        for col, candidate in enumerate(rng.choice(members, size=min(per_class, members.size), replace=False)):
            image = int(index.image[candidate])
            if image not in cache:
                path = str(index.lq_paths[image])
                cache[image] = (reader.decode(reader.get(path, 'lq'), path, 'lq') * 255).round().astype(np.uint8)
            top, left = int(index.top[candidate]), int(index.left[candidate])
            patch = cache[image][top:top + size, left:left + size]
            y, x = cls * (size + gap), col * (size + gap)
            canvas[y:y + size, x:x + size] = patch
    canvas = cv2.resize(canvas, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    os.makedirs(osp.dirname(osp.abspath(save_path)), exist_ok=True)
    if not cv2.imwrite(save_path, canvas):
        raise PreparationError(f"cannot write '{save_path}'.")
    return save_path
