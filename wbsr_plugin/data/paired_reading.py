"""Paired LR/HR data as BasicSR's ``PairedImageDataset`` lists it (folders, ``meta_info_file``, LMDB), read
through BasicSR's ``FileClient``, with errors that name the file and what is wrong.
"""
import io
from os import path as osp

import numpy as np
from PIL import Image

from basicsr.data.data_util import paired_paths_from_folder, paired_paths_from_lmdb, paired_paths_from_meta_info_file
from basicsr.utils import FileClient, imfrombytes

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
GRAYSCALE_MODES = ('1', 'L', 'LA', 'I', 'F', 'I;16', 'I;16B', 'I;16L', 'I;16N')


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


def file_image_header(path):
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
