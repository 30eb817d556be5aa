"""The HES index: every candidate LR patch of a paired dataset and its difficulty, cached beside the data.

* Candidates: every LR image offers the LR patches of side ``gt_size // scale`` whose top-left
  corners lie on a grid of step ``stride`` (plus one flush with the right/bottom border).
* Difficulty: :func:`wbsr_plugin.data.difficulty.patch_difficulty` of each candidate, computed once
  and cached in an index file (``.npz``) beside the LR data.

The index stores the grid, the scores and a fingerprint of the data (names, sizes and modification
times of the files, or of the LMDB ``meta_info.txt`` and ``data.mdb``). :func:`load_index` refuses
an index whose data or grid no longer match. The class thresholds of dynamic inference are computed
from the same LR images, per patch side (:func:`dataset_threshold_table`).
"""
import hashlib
import json
import os
import time
from os import path as osp

import numpy as np

from wbsr_plugin.utils.progress import progress_bar
from wbsr_runtime.files import atomic_path

from basicsr.utils import get_root_logger

from .difficulty import (
    bgr_image_to_luma,
    default_stride,
    grid_positions,
    patch_difficulty,
    quantile_thresholds,
    threshold_table,
)
from .hes import lq_patch_size
from .paired_reading import PairReader, check_pair_shapes, file_image_header, image_header, list_pairs, lmdb_meta_shapes

INDEX_VERSION = 1
INDEX_SUFFIX = '.npz'


def data_fingerprint(opt, paths):
    """A hash of what the index depends on: pair names and the files' sizes and modification times."""
    digest = hashlib.sha1()
    backend = opt['io_backend']['type']
    if backend == 'lmdb':
        for folder in (opt['dataroot_lq'], opt['dataroot_gt']):
            with open(osp.join(folder, 'meta_info.txt'), 'rb') as fin:
                digest.update(fin.read())
            stat = os.stat(osp.join(folder, 'data.mdb'))
            digest.update(f'{stat.st_size} {stat.st_mtime_ns}\n'.encode())
        for pair in paths:
            digest.update(f"{pair['lq_path']}\0{pair['gt_path']}\n".encode())
    elif backend == 'disk':
        for pair in paths:
            for key in ('lq_path', 'gt_path'):
                stat = os.stat(pair[key])
                digest.update(f'{pair[key]}\0{stat.st_size} {stat.st_mtime_ns}\n'.encode())
    else:
        raise ValueError(f"io_backend type '{backend}' is not supported by HES; expected one of ['disk', 'lmdb'].")
    return digest.hexdigest()


def default_index_path(opt, patch_size, stride):
    """The index file beside ``dataroot_lq``; its name depends on the grid and on the list of pairs."""
    lq_folder = osp.normpath(opt['dataroot_lq'])
    naming = hashlib.sha1(json.dumps([opt['io_backend']['type'], osp.abspath(lq_folder),
                                      osp.abspath(osp.normpath(opt['dataroot_gt'])), opt.get('meta_info_file'),
                                      opt.get('filename_tmpl', '{}'), opt['scale']]).encode()).hexdigest()[:10]
    name = f'{osp.basename(lq_folder)}_hes_p{patch_size}_s{stride}_{naming}{INDEX_SUFFIX}'
    return osp.join(osp.dirname(osp.abspath(lq_folder)), name)


# ----------------------------------------------------------------------------------------------


def _atomic_save_npz(path, arrays):
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def build_index(opt, index_path, stride=None, progress=False):
    """Score every candidate patch of a paired dataset and write the index file atomically.

    Args:
        opt (dict): Dataset options as for ``PairedImageDataset`` (``dataroot_gt``, ``dataroot_lq``,
            ``io_backend``, ``meta_info_file``, ``filename_tmpl``, ``gt_size``, ``scale``).
        index_path (str): Output ``.npz`` file.
        stride (int | None): Grid step in LR pixels. Default: None (half the LR patch).
        progress (bool): Show a tqdm progress bar. Default: False.

    Returns:
        HESIndex: The index just written.
    """
    scale = opt['scale']
    patch_size = lq_patch_size(opt['gt_size'], scale)
    stride = default_stride(patch_size, stride)
    paths = list_pairs(opt)
    if not paths:
        raise ValueError(f"No image pairs found in '{opt['dataroot_lq']}' / '{opt['dataroot_gt']}'.")
    fingerprint = data_fingerprint(opt, paths)
    reader = PairReader(opt)
    gt_shapes = lmdb_meta_shapes(opt['dataroot_gt']) if reader.backend == 'lmdb' else None
    lq_meta = lmdb_meta_shapes(opt['dataroot_lq']) if reader.backend == 'lmdb' else None

    start = time.time()
    image_ids, tops_all, lefts_all, scores_all, shapes = [], [], [], [], []
    iterator = progress_bar(paths, unit='image', desc='HES index') if progress else paths
    for i, pair in enumerate(iterator):
        lq_path, gt_path = pair['lq_path'], pair['gt_path']
        lq_name, gt_name = reader.name(lq_path, 'lq'), reader.name(gt_path, 'gt')
        content = reader.get(lq_path, 'lq')
        header = image_header(content, lq_name)
        if gt_shapes is not None:
            gt_shape = gt_shapes.get(gt_path)
            if gt_shape is None:
                raise ValueError(f"GT LMDB '{opt['dataroot_gt']}' meta_info.txt lists no key '{gt_path}'.")
            if lq_meta.get(lq_path, header + (3, ))[:2] != header:
                raise ValueError(f"'{lq_name}' is {header[0]}x{header[1]} but its meta_info.txt says "
                                 f'{lq_meta[lq_path][0]}x{lq_meta[lq_path][1]}.')
        else:
            gt_shape = file_image_header(gt_path)
        check_pair_shapes(header, gt_shape, scale, lq_name, gt_name, patch_size)
        img = reader.decode(content, lq_path, 'lq')
        tops = grid_positions(img.shape[0], patch_size, stride)
        lefts = grid_positions(img.shape[1], patch_size, stride)
        scores = patch_difficulty(bgr_image_to_luma(img), patch_size, tops, lefts).numpy()
        grid_t, grid_l = np.meshgrid(np.asarray(tops), np.asarray(lefts), indexing='ij')
        image_ids.append(np.full(scores.size, i, dtype=np.int32))
        tops_all.append(grid_t.ravel().astype(np.int32))
        lefts_all.append(grid_l.ravel().astype(np.int32))
        scores_all.append(scores.ravel().astype(np.float64))
        shapes.append(img.shape[:2])
    meta = {
        'version': INDEX_VERSION,
        'patch_size': patch_size,
        'stride': stride,
        'scale': scale,
        'gt_size': opt['gt_size'],
        'io_backend': reader.backend,
        'dataroot_lq': opt['dataroot_lq'],
        'dataroot_gt': opt['dataroot_gt'],
        'fingerprint': fingerprint,
        'build_seconds': time.time() - start,
    }
    arrays = {
        'meta': np.array(json.dumps(meta)),
        'lq_paths': np.array([p['lq_path'] for p in paths]),
        'gt_paths': np.array([p['gt_path'] for p in paths]),
        'lq_shapes': np.asarray(shapes, dtype=np.int32),
        'image': np.concatenate(image_ids),
        'top': np.concatenate(tops_all),
        'left': np.concatenate(lefts_all),
        'score': np.concatenate(scores_all),
    }
    _atomic_save_npz(index_path, arrays)
    get_root_logger().info(f'HES index: {len(arrays["score"])} candidate patches of {len(paths)} images '
                           f'written to {index_path} in {meta["build_seconds"]:.1f} s.')
    return HESIndex(index_path)


class HESIndex:
    """A loaded HES index (read-only, picklable).

    Args:
        index_path (str): The ``.npz`` file written by :func:`build_index`.

    Attributes:
        meta (dict): patch_size, stride, scale, gt_size, io_backend, dataroot_lq/gt, fingerprint.
        lq_paths, gt_paths (ndarray[str]): The pairs, in dataset order.
        lq_shapes (ndarray): (num_images, 2) LR heights and widths.
        image, top, left (ndarray[int32]): Image number and LR top-left corner of each candidate.
        score (ndarray[float64]): Difficulty of each candidate.
    """

    def __init__(self, index_path):
        if not osp.isfile(index_path):
            raise FileNotFoundError(f"HES index '{index_path}' does not exist; build it with "
                                    '`python -m wbsr_plugin.prepare index`.')
        try:
            with np.load(index_path, allow_pickle=False) as data:
                self.meta = json.loads(str(data['meta']))
                for key in ('lq_paths', 'gt_paths', 'lq_shapes', 'image', 'top', 'left', 'score'):
                    setattr(self, key, data[key])
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"HES index '{index_path}' is unreadable or not an index ({err}); "
                             'delete it and build it again.') from err
        if self.meta.get('version') != INDEX_VERSION:
            raise ValueError(f"HES index '{index_path}' has format version {self.meta.get('version')}, "
                             f'expected {INDEX_VERSION}; delete it and build it again.')
        self.path = index_path

    @property
    def patch_size(self):
        return int(self.meta['patch_size'])

    def __len__(self):
        return len(self.score)

    def thresholds(self, num_classes):
        return quantile_thresholds(self.score, num_classes)

    def mismatch(self, opt, paths, stride):
        """Why this index does not describe the data and grid of ``opt``, or None when it does."""
        patch_size = lq_patch_size(opt['gt_size'], opt['scale'])
        if (self.meta['patch_size'], self.meta['scale']) != (patch_size, opt['scale']):
            return (f"it was built for LR patches of {self.meta['patch_size']} at scale {self.meta['scale']}, "
                    f'the options ask for {patch_size} at scale {opt["scale"]}')
        if stride is not None and self.meta['stride'] != stride:
            return f"it was built with stride {self.meta['stride']}, the options ask for {stride}"
        lq_paths = [p['lq_path'] for p in paths]
        gt_paths = [p['gt_path'] for p in paths]
        if len(lq_paths) != len(self.lq_paths) or list(self.lq_paths) != lq_paths or list(self.gt_paths) != gt_paths:
            return f'it lists {len(self.lq_paths)} image pairs, the data has {len(paths)} different ones'
        if self.meta['fingerprint'] != data_fingerprint(opt, paths):
            return 'the image files changed since it was built (sizes or modification times differ)'
        return None


def load_index(opt, index_path, stride=None):
    """Load an index and check that it still matches the data of ``opt``; ValueError naming the file if not."""
    index = HESIndex(index_path)
    problem = index.mismatch(opt, list_pairs(opt), stride)
    if problem is not None:
        raise ValueError(f"HES index '{index_path}' no longer matches the data: {problem}. Delete it or rebuild "
                         'it with `python -m wbsr_plugin.prepare index`.')
    return index


def load_or_build_index(opt, hes, progress=False):
    """The index of ``opt``: an explicit ``hes_index_path`` must exist and match; the default one is
    (re)built beside ``dataroot_lq`` when missing or stale."""
    patch_size = lq_patch_size(opt['gt_size'], opt['scale'])
    stride = default_stride(patch_size, hes['hes_stride'])
    if hes['hes_index_path'] is not None:
        return load_index(opt, hes['hes_index_path'], stride)
    index_path = default_index_path(opt, patch_size, stride)
    logger = get_root_logger()
    if osp.isfile(index_path):
        index = HESIndex(index_path)
        problem = index.mismatch(opt, list_pairs(opt), stride)
        if problem is None:
            return index
        logger.warning(f'HES index {index_path} is stale ({problem}); rebuilding it.')
    else:
        logger.info(f'HES index {index_path} does not exist; building it.')
    try:
        return build_index(opt, index_path, stride=stride, progress=progress)
    except PermissionError as err:
        raise PermissionError(f"Cannot write the HES index beside the data ('{index_path}'); set hes_index_path "
                              'to a writable file or build it with `python -m wbsr_plugin.prepare index`.') from err


def load_thresholds(index_path, num_classes=10):
    """Class thresholds and LR patch size of an index, for inference.

    Args:
        index_path (str): Index file.
        num_classes (int): K. Default: 10.

    Returns:
        tuple[list[float], int]: The K-1 thresholds and the LR patch side they were measured on.
    """
    index = HESIndex(index_path)
    return [float(t) for t in index.thresholds(num_classes)], index.patch_size


# ----------------------------------------------------------------------------------------------
# Classes and Eq. 8


# Images read for the per-patch-size thresholds of a checkpoint (evenly spread over larger datasets).
THRESHOLD_TABLE_MAX_IMAGES = 2000


def dataset_threshold_table(dataset_opt, num_classes, max_images=THRESHOLD_TABLE_MAX_IMAGES):
    """Class thresholds per LR patch size (:func:`~wbsr_plugin.data.difficulty.threshold_table`) of the LR
    images of a paired dataset (``PairedImageDataset`` options: disk or LMDB).

    Args:
        dataset_opt (dict): Dataset options (``dataroot_lq``, ``dataroot_gt``, ``io_backend``, ...).
        num_classes (int): K.
        max_images (int): At most this many images, evenly spread over the dataset, are read (once each).
            Default: 2000.

    Returns:
        dict[int, list[float]]: K - 1 thresholds per LR patch side.
    """
    paths = list_pairs(dataset_opt)
    if not paths:
        raise ValueError(f"No image pairs found in '{dataset_opt['dataroot_lq']}'.")
    reader = PairReader(dataset_opt)
    step = -(-len(paths) // max_images)

    def lumas():
        for pair in paths[::step]:
            path = pair['lq_path']
            yield bgr_image_to_luma(reader.decode(reader.get(path, 'lq'), path, 'lq'))

    return threshold_table(lumas(), num_classes)
