"""Hierarchical Equalization Sampling (HES): candidate index, class thresholds and Eq. 8.

Paper: Rethinking Imbalance in Image Super-Resolution for Efficient Inference (WBSR, NeurIPS 2024),
Sec. 4.1.1, Eq. 7-8.

* Candidates: every LR image offers the LR patches of side ``gt_size // scale`` whose top-left
  corners lie on a grid of step ``stride`` (plus one flush with the right/bottom border).
* Difficulty: :func:`wbsr_plugin.data.difficulty.patch_difficulty` of each candidate, computed once
  and cached in an index file (``.npz``) beside the LR data.
* Classes: thresholds ``t_k = s[floor(k N / K)]``, k = 1..K-1, on the sorted scores ``s`` of the N
  candidates; a patch belongs to class ``#{k: t_k <= score}`` in 0..K-1
  (:func:`~wbsr_plugin.data.difficulty.difficulty_classes`, the rule inference uses too).
* Eq. 8: class k (1-based) is drawn with probability proportional to ``1 / (N_k delta^k)``;
  empty classes get probability 0.

The index stores the grid, the scores and a fingerprint of the data (names, sizes and modification
times of the files, or of the LMDB ``meta_info.txt`` and ``data.mdb``). :func:`load_index` refuses
an index whose data or grid no longer match.
"""
import hashlib
import io
import json
import os
import time
from os import path as osp

import numpy as np
from PIL import Image

from wbsr_plugin.file_util import atomic_path

from basicsr.data.data_util import paired_paths_from_folder, paired_paths_from_lmdb, paired_paths_from_meta_info_file
from basicsr.utils import FileClient, get_root_logger, imfrombytes

from .difficulty import (
    bgr_image_to_luma,
    default_stride,
    difficulty_classes,
    grid_positions,
    patch_difficulty,
    quantile_thresholds,
    threshold_table,
)

INDEX_VERSION = 1
INDEX_SUFFIX = '.npz'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
GRAYSCALE_MODES = ('1', 'L', 'LA', 'I', 'F', 'I;16', 'I;16B', 'I;16L', 'I;16N')

# name: (default, description). Keep docs/data.md in step with this table.
HES_OPTIONS = {
    'hes_enabled': (True, 'bool; false behaves exactly like PairedImageDataset'),
    'hes_num_classes': (10, 'int >= 2; K, the number of difficulty classes'),
    'hes_delta': (0.9, 'float in (0, 1]; delta of Eq. 8 (1 = equal class frequencies)'),
    'hes_stride': (None, 'int >= 1 or null; candidate grid step in LR pixels (null: half the LR patch)'),
    'hes_switch_ratio': (0.7, 'float in [0, 1]; class-level sampling after this fraction of train.total_iter'),
    'hes_switch_iter': (None, 'int >= 0 or null; class-level sampling after this iteration (overrides the ratio)'),
    'hes_index_path': (None, 'str or null; index file (null: beside dataroot_lq, built when missing or stale)'),
}


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value):
    return _is_int(value) or (isinstance(value, (float, np.floating)))


def parse_hes_options(opt):
    """Validate and complete the ``hes_*`` options of a dataset option dict.

    Args:
        opt (dict): Dataset options; only its ``hes_*`` keys are read.

    Returns:
        dict: Every option of ``HES_OPTIONS`` with its value or default.

    Raises:
        ValueError: An unknown ``hes_*`` key or a bad value, naming the key and what is allowed.
    """
    hes = {key: default for key, (default, _) in HES_OPTIONS.items()}
    for key, value in opt.items():
        if not key.startswith('hes_'):
            continue
        if key not in HES_OPTIONS:
            raise ValueError(f"Unknown HES option '{key}'; allowed: {sorted(HES_OPTIONS)}.")
        hes[key] = value

    def bad(key, allowed):
        return ValueError(f"HES option '{key}' must be {allowed}, got {hes[key]!r}.")

    if not isinstance(hes['hes_enabled'], (bool, np.bool_)):
        raise bad('hes_enabled', 'true or false')
    if not _is_int(hes['hes_num_classes']) or hes['hes_num_classes'] < 2:
        raise bad('hes_num_classes', 'an integer >= 2')
    if not _is_number(hes['hes_delta']) or not 0 < hes['hes_delta'] <= 1:
        raise bad('hes_delta', 'a number in (0, 1]')
    if hes['hes_stride'] is not None and (not _is_int(hes['hes_stride']) or hes['hes_stride'] < 1):
        raise bad('hes_stride', 'null or an integer >= 1')
    if not _is_number(hes['hes_switch_ratio']) or not 0 <= hes['hes_switch_ratio'] <= 1:
        raise bad('hes_switch_ratio', 'a number in [0, 1]')
    if hes['hes_switch_iter'] is not None:
        if not _is_int(hes['hes_switch_iter']) or hes['hes_switch_iter'] < 0:
            raise bad('hes_switch_iter', 'null or an integer >= 0')
        if 'hes_switch_ratio' in opt:
            raise ValueError("HES options 'hes_switch_iter' and 'hes_switch_ratio' exclude each other; set one.")
    if hes['hes_index_path'] is not None and not isinstance(hes['hes_index_path'], str):
        raise bad('hes_index_path', 'null or a path string')
    hes['hes_delta'] = float(hes['hes_delta'])
    hes['hes_switch_ratio'] = float(hes['hes_switch_ratio'])
    return hes


def lq_patch_size(gt_size, scale):
    """LR patch side for a GT patch side; ``gt_size`` must be a multiple of ``scale``."""
    if not _is_int(gt_size) or not _is_int(scale) or scale < 1 or gt_size < scale or gt_size % scale:
        raise ValueError(f'gt_size ({gt_size!r}) must be a positive multiple of scale ({scale!r}).')
    return gt_size // scale


def switch_iteration(hes, total_iter):
    """Iterations 1..S use sample-level sampling, iterations > S class-level; None while S is unknown."""
    if hes['hes_switch_iter'] is not None:
        return int(hes['hes_switch_iter'])
    if hes['hes_switch_ratio'] == 0:
        return 0
    if total_iter is None or total_iter <= 0:
        return None
    return int(round(hes['hes_switch_ratio'] * total_iter))


# ----------------------------------------------------------------------------------------------
# Data access (folder, meta_info_file, LMDB) with clear errors


def _check_lmdb(folder, role):
    if not folder.endswith('.lmdb'):
        raise ValueError(f"dataroot_{role} '{folder}' must end with '.lmdb' for io_backend lmdb.")
    if not osp.isdir(folder):
        raise FileNotFoundError(f"dataroot_{role}: LMDB folder '{folder}' does not exist.")
    for name in ('data.mdb', 'meta_info.txt'):
        if not osp.isfile(osp.join(folder, name)):
            raise FileNotFoundError(f"dataroot_{role}: LMDB '{folder}' has no {name}; it is incomplete or not an "
                                    'LMDB made by BasicSR (make_lmdb_from_imgs) or wbsr_plugin.prepare lmdb.')
    import lmdb
    try:
        env = lmdb.open(folder, readonly=True, lock=False, readahead=False)
        env.close()
    except lmdb.Error as err:
        raise ValueError(f"dataroot_{role}: LMDB '{folder}' cannot be opened ({err}); it is corrupt.") from err


def lmdb_meta_shapes(folder):
    """``{key: (h, w, c)}`` from a BasicSR LMDB's ``meta_info.txt``."""
    shapes = {}
    meta = osp.join(folder, 'meta_info.txt')
    with open(meta) as fin:
        for line_no, line in enumerate(fin, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                shape = tuple(int(v) for v in parts[1].strip('()').split(','))
            except (IndexError, ValueError) as err:
                raise ValueError(f"{meta}, line {line_no}: expected 'name.png (h,w,c) level', got {line!r}.") from err
            shapes[parts[0].split('.')[0]] = shape
    return shapes


def list_pairs(opt):
    """The ``[{'lq_path', 'gt_path'}]`` list of BasicSR's ``PairedImageDataset`` for ``opt``, with clear errors."""
    gt_folder, lq_folder = opt['dataroot_gt'], opt['dataroot_lq']
    backend = opt['io_backend']['type']
    if backend == 'lmdb':
        _check_lmdb(lq_folder, 'lq')
        _check_lmdb(gt_folder, 'gt')
        try:
            return paired_paths_from_lmdb([lq_folder, gt_folder], ['lq', 'gt'])
        except (AssertionError, ValueError) as err:  # BasicSR raises ValueError for different keys
            raise ValueError(f"LMDBs '{lq_folder}' and '{gt_folder}' do not hold the same keys: {err}") from err
    elif backend == 'disk':
        for role, folder in (('lq', lq_folder), ('gt', gt_folder)):
            if not osp.isdir(folder):
                raise FileNotFoundError(f"dataroot_{role}: folder '{folder}' does not exist.")
        tmpl = opt.get('filename_tmpl', '{}')
        if opt.get('meta_info_file') is not None:
            if not osp.isfile(opt['meta_info_file']):
                raise FileNotFoundError(f"meta_info_file '{opt['meta_info_file']}' does not exist.")
            paths = paired_paths_from_meta_info_file([lq_folder, gt_folder], ['lq', 'gt'], opt['meta_info_file'],
                                                     tmpl)
            for pair in paths:
                for key in ('lq_path', 'gt_path'):
                    if not osp.isfile(pair[key]):
                        raise FileNotFoundError(f"'{pair[key]}' (listed in {opt['meta_info_file']}) does not exist.")
            return paths
        try:
            return paired_paths_from_folder([lq_folder, gt_folder], ['lq', 'gt'], tmpl)
        except AssertionError as err:
            raise ValueError(f"Folders '{lq_folder}' and '{gt_folder}' do not pair up: {err}") from err
    else:
        raise ValueError(f"io_backend type '{backend}' is not supported by HES; expected one of ['disk', 'lmdb'].")


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


def image_header(content, name):
    """``(height, width)`` of encoded image bytes; refuses grayscale and 16-bit images, naming the file."""
    if content is None:
        raise FileNotFoundError(f"'{name}' is missing (no such LMDB key).")
    if content[:8] == PNG_SIGNATURE and len(content) >= 26:
        bit_depth, color_type = content[24], content[25]
        if bit_depth == 16:
            raise ValueError(f"'{name}' is a 16-bit PNG; BasicSR's loader would silently reduce it to 8 bits. "
                             'Convert it to 8-bit RGB first.')
        if color_type in (0, 4):
            raise ValueError(f"'{name}' is a grayscale PNG; convert it to 8-bit RGB first.")
    try:
        with Image.open(io.BytesIO(content)) as img:
            width, height = img.size
            mode = img.mode
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"'{name}' is not a readable image ({err}).") from err
    if mode in GRAYSCALE_MODES:
        raise ValueError(f"'{name}' is a grayscale or 16-bit image (mode {mode}); convert it to 8-bit RGB first.")
    return height, width


def _file_header(path):
    with open(path, 'rb') as fin:
        head = fin.read(64 * 1024)
    try:
        return image_header(head, path)
    except ValueError:
        with open(path, 'rb') as fin:
            return image_header(fin.read(), path)


class PairReader:
    """Reads the LQ/GT bytes of the pairs of ``list_pairs`` through BasicSR's ``FileClient``.

    Args:
        opt (dict): Dataset options (``io_backend``, ``dataroot_lq``, ``dataroot_gt``).
    """

    def __init__(self, opt):
        io_opt = dict(opt['io_backend'])
        self.backend = io_opt.pop('type')
        if self.backend == 'lmdb':
            io_opt['db_paths'] = [opt['dataroot_lq'], opt['dataroot_gt']]
            io_opt['client_keys'] = ['lq', 'gt']
        self.roots = {'lq': opt['dataroot_lq'], 'gt': opt['dataroot_gt']}
        self.client = FileClient(self.backend, **io_opt)

    def name(self, path, role):
        return f"{self.roots[role]}:{path}" if self.backend == 'lmdb' else path

    def get(self, path, role):
        try:
            content = self.client.get(path, role)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"'{self.name(path, role)}' does not exist.") from err
        if content is None:
            raise FileNotFoundError(f"'{self.name(path, role)}' is missing (no such LMDB key).")
        return content

    def decode(self, content, path, role):
        img = imfrombytes(content) if content is not None else None  # BasicSR's float32=True fails on None
        if img is None:
            raise ValueError(f"'{self.name(path, role)}' cannot be decoded as an image.")
        return img.astype(np.float32) / 255.


def check_pair_shapes(lq_shape, gt_shape, scale, lq_name, gt_name, patch_size=None):
    """Clear errors for a GT/LQ pair whose sizes do not match ``scale`` or that is smaller than a patch."""
    if gt_shape[0] != lq_shape[0] * scale or gt_shape[1] != lq_shape[1] * scale:
        raise ValueError(f"GT '{gt_name}' is {gt_shape[0]}x{gt_shape[1]} (HxW) but LQ '{lq_name}' is "
                         f'{lq_shape[0]}x{lq_shape[1]}: GT must be exactly scale={scale} times LQ.')
    if patch_size is not None and min(lq_shape[:2]) < patch_size:
        raise ValueError(f"LQ '{lq_name}' is {lq_shape[0]}x{lq_shape[1]}, smaller than the LR patch "
                         f'{patch_size}x{patch_size} (gt_size / scale); remove it or lower gt_size.')


# ----------------------------------------------------------------------------------------------
# Index


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
    iterator = paths
    if progress:
        from tqdm import tqdm
        iterator = tqdm(paths, unit='image', desc='HES index')
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
            gt_shape = _file_header(gt_path)
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


def class_probabilities(class_sizes, delta):
    """Eq. 8: ``P_k = (sum_j 1/N_j) / (N_k delta^k)`` (k = 1..K), normalised; empty classes get 0."""
    sizes = np.asarray(class_sizes, dtype=np.float64)
    if not 0 < delta <= 1:
        raise ValueError(f'delta must be in (0, 1], got {delta!r}.')
    if sizes.sum() <= 0:
        raise ValueError('every class is empty.')
    k = np.arange(1, sizes.size + 1, dtype=np.float64)
    nonempty = sizes > 0
    weights = np.zeros_like(sizes)
    inv_sum = (1.0 / sizes[nonempty]).sum()
    weights[nonempty] = inv_sum / (sizes[nonempty] * delta**k[nonempty])
    return weights / weights.sum()


def class_histogram(scores, thresholds, num_classes):
    """Number of candidates in each class."""
    return np.bincount(difficulty_classes(scores, thresholds), minlength=num_classes)


class ClassLevelDrawer:
    """Class-level draws of HES for one process (the main process or one DataLoader worker).

    A class is drawn by Eq. 8; the candidate is the next one of that class in a shuffled queue
    (without replacement, reshuffled when used up). The candidates of each class are striped over
    ``num_shards`` shards (``rank * num_workers + worker_id``), so two ranks, or two workers, never
    hold the same candidate unless a class has fewer candidates than shards.

    Args:
        members (list[ndarray]): Candidate numbers of each class.
        probabilities (ndarray): Eq. 8 class probabilities.
        seed (int): Seed of this process's stream.
        shard (int): This process's shard.
        num_shards (int): Number of shards.
    """

    def __init__(self, members, probabilities, seed, shard, num_shards):
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed % (1 << 64), shard, 0x484553])))
        self.probabilities = probabilities
        self.cumulative = np.cumsum(probabilities)
        self.cumulative[-1] = 1.0
        self.pools = []
        for candidates in members:
            stripe = candidates[shard::num_shards]
            self.pools.append(stripe if stripe.size else candidates)
        self.queues = [None] * len(members)
        self.positions = [0] * len(members)

    def draw(self):
        """``(class, candidate)``."""
        cls = int(np.searchsorted(self.cumulative, self.rng.random(), side='right'))
        cls = min(cls, len(self.pools) - 1)
        while self.probabilities[cls] == 0:  # only reachable through rounding at the top end
            cls -= 1
        queue = self.queues[cls]
        if queue is None or self.positions[cls] >= queue.size:
            queue = self.queues[cls] = self.rng.permutation(self.pools[cls])
            self.positions[cls] = 0
        candidate = int(queue[self.positions[cls]])
        self.positions[cls] += 1
        return cls, candidate


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
