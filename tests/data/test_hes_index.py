"""HES data access and the candidate index: pairs (folders, meta_info files, LMDBs) with their errors, the data
fingerprint, the default index path, image headers, building, loading and rebuilding the index, the threshold
table of a dataset. Every expected value is written out by hand or recomputed with plain numpy on tiny images."""
import io
import json
import logging
import os
import re
import shutil
from os import path as osp

import cv2
import lmdb
import numpy as np
import pytest
from PIL import Image

from wbsr_plugin.data.hes import parse_hes_options
from wbsr_plugin.data.hes_index import (
    HESIndex,
    build_index,
    data_fingerprint,
    dataset_threshold_table,
    default_index_path,
    load_index,
    load_or_build_index,
    load_thresholds,
)
from wbsr_plugin.data.paired_reading import PairReader, check_pair_shapes, image_header, list_pairs, lmdb_meta_shapes

from basicsr.utils import get_root_logger
from basicsr.utils.lmdb_util import make_lmdb_from_imgs

NOT_BASICSR_LMDB = 'it is incomplete or not an LMDB made by BasicSR (make_lmdb_from_imgs) or wbsr_plugin.prepare lmdb.'
REBUILD = '. Delete it or rebuild it with `python -m wbsr_plugin.prepare index`.'


# ---------------------------------------------------------------------------------------------- helpers


def lr_image(seed, height, width, amplitude=127):
    rng = np.random.default_rng(seed)
    return np.clip(128 + rng.integers(-amplitude, amplitude + 1, (height, width, 3)), 0, 255).astype(np.uint8)


def make_pairs(root, shapes, scale=4, ext='.png', amplitudes=None):
    """LR images ``im<i>`` of the given (h, w) in root/lq and their nearest-neighbour x``scale`` GT in root/gt."""
    lq, gt = root / 'lq', root / 'gt'
    lq.mkdir(parents=True)
    gt.mkdir(parents=True)
    images = {}
    for i, (height, width) in enumerate(shapes):
        img = lr_image(i, height, width, 127 if amplitudes is None else amplitudes[i])
        cv2.imwrite(str(lq / f'im{i}{ext}'), img)
        cv2.imwrite(str(gt / f'im{i}{ext}'), np.repeat(np.repeat(img, scale, 0), scale, 1))
        images[f'im{i}'] = img
    return images


def disk_opt(root, gt_size=16, scale=4, **extra):
    return dict({'dataroot_lq': str(root / 'lq'), 'dataroot_gt': str(root / 'gt'), 'io_backend': {'type': 'disk'},
                 'scale': scale, 'gt_size': gt_size}, **extra)


def lmdb_opt(root, gt_size=16, scale=4):
    """LMDBs (BasicSR's make_lmdb_from_imgs) of root/lq and root/gt."""
    for role in ('lq', 'gt'):
        names = sorted(os.listdir(root / role))
        make_lmdb_from_imgs(str(root / role), str(root / f'{role}.lmdb'), names, [osp.splitext(n)[0] for n in names],
                            map_size=1 << 24)
    return {'dataroot_lq': str(root / 'lq.lmdb'), 'dataroot_gt': str(root / 'gt.lmdb'), 'io_backend': {'type': 'lmdb'},
            'scale': scale, 'gt_size': gt_size}


def write_lmdb(folder, entries):
    """A hand-made LMDB in BasicSR's layout: entries are (key, value bytes, meta_info line); no lock.mdb."""
    os.makedirs(folder)
    env = lmdb.open(str(folder), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value, _ in entries:
            txn.put(key.encode(), value)
    env.close()
    os.remove(osp.join(folder, 'lock.mdb'))
    with open(osp.join(folder, 'meta_info.txt'), 'w') as fout:
        fout.write(''.join(line + '\n' for _, _, line in entries))
    return str(folder)


def encode(img, ext='.png'):
    ok, data = cv2.imencode(ext, img)
    assert ok
    return data.tobytes()


def difficulty_by_hand(bgr, top, left, size):
    """The documented difficulty in plain numpy: luma in [0, 255], forward differences, mean + std of each."""
    bgr = bgr.astype(np.float64)
    luma = 0.299 * bgr[..., 2] + 0.587 * bgr[..., 1] + 0.114 * bgr[..., 0]
    patch = luma[top:top + size, left:left + size]
    grad_x = np.abs(np.diff(patch, axis=1))
    grad_y = np.abs(np.diff(patch, axis=0))
    return grad_x.mean() + grad_x.std() + grad_y.mean() + grad_y.std()


def error_text(exc_type, func, *args, **kwargs):
    with pytest.raises(exc_type) as info:
        func(*args, **kwargs)
    return str(info.value)


@pytest.fixture
def hes_log():
    """Messages of BasicSR's root logger (it does not propagate, and logs INFO only once configured)."""
    logger = get_root_logger()
    messages = []

    class Collect(logging.Handler):

        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def set_mtime(path, delta_ns):
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + delta_ns))


# ---------------------------------------------------------------------------------------------- list_pairs


def test_list_pairs_of_folders_follows_the_filename_template(tmp_path):
    lq, gt = tmp_path / 'lq', tmp_path / 'gt'
    lq.mkdir()
    gt.mkdir()
    for name in ('a', 'b'):
        (gt / f'{name}.png').write_bytes(b'x')
        (lq / f'{name}_x4.png').write_bytes(b'x')
    pairs = list_pairs(disk_opt(tmp_path, filename_tmpl='{}_x4'))
    assert sorted(pairs, key=lambda p: p['gt_path']) == [
        {'lq_path': f'{lq}/a_x4.png', 'gt_path': f'{gt}/a.png'},
        {'lq_path': f'{lq}/b_x4.png', 'gt_path': f'{gt}/b.png'},
    ]


def test_list_pairs_names_the_missing_folder(tmp_path):
    opt = disk_opt(tmp_path)
    assert error_text(FileNotFoundError, list_pairs, opt) == f"dataroot_lq: folder '{tmp_path}/lq' does not exist."
    (tmp_path / 'lq').mkdir()
    assert error_text(FileNotFoundError, list_pairs, opt) == f"dataroot_gt: folder '{tmp_path}/gt' does not exist."


def test_list_pairs_names_folders_that_do_not_pair_up(tmp_path):
    (tmp_path / 'lq').mkdir()
    (tmp_path / 'gt').mkdir()
    (tmp_path / 'lq' / 'a.png').write_bytes(b'x')
    (tmp_path / 'gt' / 'a.png').write_bytes(b'x')
    (tmp_path / 'gt' / 'b.png').write_bytes(b'x')
    message = error_text(ValueError, list_pairs, disk_opt(tmp_path))
    assert message.startswith(f"Folders '{tmp_path}/lq' and '{tmp_path}/gt' do not pair up: ")
    assert 'different number of images: 1, 2' in message


def test_list_pairs_with_a_meta_info_file_keeps_its_subset_and_order(tmp_path):
    lq, gt = tmp_path / 'lq', tmp_path / 'gt'
    lq.mkdir()
    gt.mkdir()
    for name in ('a', 'b', 'c'):
        (gt / f'{name}.png').write_bytes(b'x')
        (lq / f'{name}_x4.png').write_bytes(b'x')
    meta = tmp_path / 'meta_info.txt'
    meta.write_text('c.png (96,96,3)\na.png (96,96,3)\n')
    pairs = list_pairs(disk_opt(tmp_path, filename_tmpl='{}_x4', meta_info_file=str(meta)))
    assert pairs == [{'lq_path': f'{lq}/c_x4.png', 'gt_path': f'{gt}/c.png'},
                     {'lq_path': f'{lq}/a_x4.png', 'gt_path': f'{gt}/a.png'}]


def test_list_pairs_meta_info_file_errors_name_the_file(tmp_path):
    lq, gt = tmp_path / 'lq', tmp_path / 'gt'
    lq.mkdir()
    gt.mkdir()
    meta = tmp_path / 'meta_info.txt'
    opt = disk_opt(tmp_path, meta_info_file=str(meta))
    assert error_text(FileNotFoundError, list_pairs, opt) == f"meta_info_file '{meta}' does not exist."
    (gt / 'd.png').write_bytes(b'x')  # no LQ d.png
    meta.write_text('d.png (96,96,3)\n')
    assert error_text(FileNotFoundError, list_pairs, opt) == f"'{lq}/d.png' (listed in {meta}) does not exist."
    (lq / 'e.png').write_bytes(b'x')  # no GT e.png
    meta.write_text('e.png (96,96,3)\n')
    assert error_text(FileNotFoundError, list_pairs, opt) == f"'{gt}/e.png' (listed in {meta}) does not exist."


def test_list_pairs_refuses_other_io_backends():
    opt = {'dataroot_lq': 'a', 'dataroot_gt': 'b', 'io_backend': {'type': 'memcached'}}
    expected = "io_backend type 'memcached' is not supported by HES; expected one of ['disk', 'lmdb']."
    assert error_text(ValueError, list_pairs, opt) == expected
    assert error_text(ValueError, data_fingerprint, opt, []) == expected


def test_list_pairs_of_lmdbs_checks_both_without_writing_to_them(tmp_path):
    png = encode(lr_image(0, 4, 4))
    lq = write_lmdb(tmp_path / 'lq.lmdb', [('b', png, 'b.png (4,4,3) 1'), ('a', png, 'a.png (4,4,3) 1')])
    gt = write_lmdb(tmp_path / 'gt.lmdb', [('a', png, 'a.png (16,16,3) 1'), ('b', png, 'b.png (16,16,3) 1')])
    opt = {'dataroot_lq': lq, 'dataroot_gt': gt, 'io_backend': {'type': 'lmdb'}}
    assert list_pairs(opt) == [{'lq_path': 'a', 'gt_path': 'a'}, {'lq_path': 'b', 'gt_path': 'b'}]
    assert sorted(os.listdir(lq)) == sorted(os.listdir(gt)) == ['data.mdb', 'meta_info.txt'], 'no lock file made'


def test_list_pairs_accepts_a_read_only_lmdb(tmp_path):
    """An LMDB on a read-only mount is opened read-only (for root every folder is writable: no check there)."""
    png = encode(lr_image(0, 4, 4))
    lq = write_lmdb(tmp_path / 'lq.lmdb', [('a', png, 'a.png (4,4,3) 1')])
    gt = write_lmdb(tmp_path / 'gt.lmdb', [('a', png, 'a.png (16,16,3) 1')])
    for folder in (lq, gt):
        for name in ('data.mdb', 'meta_info.txt'):
            os.chmod(osp.join(folder, name), 0o444)
        os.chmod(folder, 0o555)
    try:
        pairs = list_pairs({'dataroot_lq': lq, 'dataroot_gt': gt, 'io_backend': {'type': 'lmdb'}})
    finally:
        for folder in (lq, gt):
            os.chmod(folder, 0o755)
    assert pairs == [{'lq_path': 'a', 'gt_path': 'a'}]


def test_list_pairs_lmdb_errors_name_the_role_and_the_folder(tmp_path):
    png = encode(lr_image(0, 4, 4))
    good = write_lmdb(tmp_path / 'good.lmdb', [('a', png, 'a.png (4,4,3) 1')])

    def message(exc_type, lq, gt):
        return error_text(exc_type, list_pairs, {'dataroot_lq': lq, 'dataroot_gt': gt, 'io_backend': {'type': 'lmdb'}})

    plain = str(tmp_path / 'plain')
    assert message(ValueError, plain, good) == f"dataroot_lq '{plain}' must end with '.lmdb' for io_backend lmdb."
    assert message(ValueError, good, plain) == f"dataroot_gt '{plain}' must end with '.lmdb' for io_backend lmdb."
    missing = str(tmp_path / 'missing.lmdb')
    assert message(FileNotFoundError, missing, good) == f"dataroot_lq: LMDB folder '{missing}' does not exist."
    assert message(FileNotFoundError, good, missing) == f"dataroot_gt: LMDB folder '{missing}' does not exist."
    no_data = tmp_path / 'no_data.lmdb'
    no_data.mkdir()
    (no_data / 'meta_info.txt').write_text('a.png (4,4,3) 1\n')
    assert message(FileNotFoundError, str(no_data), good) == (f"dataroot_lq: LMDB '{no_data}' has no data.mdb; "
                                                                + NOT_BASICSR_LMDB)
    no_meta = tmp_path / 'no_meta.lmdb'
    shutil.copytree(good, no_meta)
    os.remove(no_meta / 'meta_info.txt')
    assert message(FileNotFoundError, good, str(no_meta)) == (f"dataroot_gt: LMDB '{no_meta}' has no meta_info.txt; "
                                                                + NOT_BASICSR_LMDB)
    corrupt = tmp_path / 'corrupt.lmdb'
    corrupt.mkdir()
    (corrupt / 'data.mdb').write_bytes(b'not an lmdb' * 1000)
    (corrupt / 'meta_info.txt').write_text('a.png (4,4,3) 1\n')
    text = message(ValueError, good, str(corrupt))
    assert text.startswith(f"dataroot_gt: LMDB '{corrupt}' cannot be opened (") and text.endswith('); it is corrupt.')


def test_lmdb_meta_shapes_skips_blank_lines_and_names_a_bad_line(tmp_path):
    meta = tmp_path / 'meta_info.txt'
    meta.write_text('a.png (4,5,3) 1\n\nb.v2.png (6,7,3) 1\n')
    assert lmdb_meta_shapes(str(tmp_path)) == {'a': (4, 5, 3), 'b': (6, 7, 3)}
    meta.write_text('a.png (4,5,3) 1\nb.png\n')
    assert error_text(ValueError, lmdb_meta_shapes, str(tmp_path)) == (
        f"{meta}, line 2: expected 'name.png (h,w,c) level', got 'b.png\\n'.")


# ---------------------------------------------------------------------------------------------- fingerprint, path


def test_fingerprint_changes_with_a_file_size_or_time_and_not_otherwise(tmp_path):
    make_pairs(tmp_path, [(4, 4), (4, 4)])
    opt = disk_opt(tmp_path)
    fingerprint = data_fingerprint(opt, list_pairs(opt))
    assert re.fullmatch('[0-9a-f]{40}', fingerprint)
    assert data_fingerprint(opt, list_pairs(opt)) == fingerprint
    gt_file = tmp_path / 'gt' / 'im1.png'
    set_mtime(gt_file, 10**9)
    assert data_fingerprint(opt, list_pairs(opt)) != fingerprint
    set_mtime(gt_file, -10**9)
    assert data_fingerprint(opt, list_pairs(opt)) == fingerprint
    lq_file = tmp_path / 'lq' / 'im0.png'
    stat = os.stat(lq_file)
    with open(lq_file, 'ab') as fout:
        fout.write(b'\0')
    os.utime(lq_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert data_fingerprint(opt, list_pairs(opt)) != fingerprint


def test_lmdb_fingerprint_follows_data_mdb_and_meta_info(tmp_path):
    make_pairs(tmp_path, [(4, 4)])
    opt = lmdb_opt(tmp_path)
    fingerprint = data_fingerprint(opt, list_pairs(opt))
    (tmp_path / 'lq.lmdb' / 'notes.txt').write_text('not part of the LMDB')
    assert data_fingerprint(opt, list_pairs(opt)) == fingerprint
    set_mtime(tmp_path / 'gt.lmdb' / 'data.mdb', 10**9)
    assert data_fingerprint(opt, list_pairs(opt)) != fingerprint
    set_mtime(tmp_path / 'gt.lmdb' / 'data.mdb', -10**9)
    assert data_fingerprint(opt, list_pairs(opt)) == fingerprint
    meta = tmp_path / 'lq.lmdb' / 'meta_info.txt'
    meta.write_text(meta.read_text().replace(') 1', ') 0'))
    assert data_fingerprint(opt, list_pairs(opt)) != fingerprint


def test_default_index_path_is_beside_the_lq_folder_and_changes_with_grid_and_data(tmp_path, monkeypatch):
    data = tmp_path / 'data'
    base = {'dataroot_lq': str(data / 'lr_x4'), 'dataroot_gt': str(data / 'hr'), 'io_backend': {'type': 'disk'},
            'scale': 4}
    path = default_index_path(base, 8, 4)
    assert osp.dirname(path) == str(data)
    name = re.fullmatch(r'lr_x4_hes_p8_s4_([0-9a-f]{10})\.npz', osp.basename(path))
    assert name, path
    digest = name.group(1)
    assert default_index_path(base, 8, 2) == str(data / f'lr_x4_hes_p8_s2_{digest}.npz')
    assert default_index_path(base, 16, 4) == str(data / f'lr_x4_hes_p16_s4_{digest}.npz')

    monkeypatch.chdir(tmp_path)
    same = [
        dict(base, dataroot_lq=str(data / 'lr_x4') + '/', dataroot_gt=str(data / 'hr') + '/'),
        dict(base, dataroot_lq='data/lr_x4', dataroot_gt='data/./hr'),
        dict(base, filename_tmpl='{}'),
        dict(base, meta_info_file=None),
    ]
    for opt in same:
        assert default_index_path(opt, 8, 4) == path, opt
    different = [
        dict(base, dataroot_gt=str(data / 'hr_other')),
        dict(base, dataroot_lq=str(tmp_path / 'elsewhere' / 'lr_x4')),
        dict(base, meta_info_file='meta_info.txt'),
        dict(base, filename_tmpl='{}_x4'),
        dict(base, scale=2),
        dict(base, io_backend={'type': 'lmdb'}),
    ]
    digests = {digest}
    for opt in different:
        other = osp.basename(default_index_path(opt, 8, 4))
        assert other.startswith('lr_x4_hes_p8_s4_') and len(other) == len(osp.basename(path)), other
        digests.add(other[-14:-4])
    assert len(digests) == len(different) + 1, 'every data option changes the name'


# ---------------------------------------------------------------------------------------------- image headers


def test_image_header_is_height_then_width_of_8_bit_colour_images():
    img = lr_image(0, 5, 7)
    for ext in ('.png', '.jpg', '.bmp'):
        assert image_header(encode(img, ext), 'x' + ext) == (5, 7)
    bmp = encode(img, '.bmp')
    assert bmp[25] == 0, 'byte 25 of a BMP (its height) is not a PNG colour type'
    rgba = np.dstack([img, np.full((5, 7), 255, np.uint8)])
    assert image_header(encode(rgba), 'rgba.png') == (5, 7)


def test_image_header_refuses_grayscale_and_16_bit_pngs_from_their_header():
    img = lr_image(1, 6, 5)
    gray = encode(img[..., 0])
    assert gray[25] == 0
    buffer = io.BytesIO()
    Image.fromarray(np.dstack([img[..., 0], img[..., 1]]), 'LA').save(buffer, 'PNG')
    gray_alpha = buffer.getvalue()
    assert gray_alpha[25] == 4
    deep = encode(img.astype(np.uint16) * 257)
    assert deep[24] == 16
    grayscale = "'g.png' is a grayscale PNG; convert it to 8-bit RGB first."
    sixteen = ("'g.png' is a 16-bit PNG; BasicSR's loader would silently reduce it to 8 bits. "
               'Convert it to 8-bit RGB first.')
    assert error_text(ValueError, image_header, gray, 'g.png') == grayscale
    assert error_text(ValueError, image_header, gray_alpha, 'g.png') == grayscale
    assert error_text(ValueError, image_header, deep, 'g.png') == sixteen
    # the first 26 bytes (signature, IHDR up to the colour type) decide
    assert error_text(ValueError, image_header, deep[:26], 'g.png') == sixteen
    assert error_text(ValueError, image_header, gray[:26], 'g.png') == grayscale
    assert error_text(ValueError, image_header, gray[:25], 'g.png').startswith("'g.png' is not a readable image (")


def test_image_header_refuses_grayscale_images_of_other_formats_by_mode():
    gray_jpeg = encode(lr_image(2, 8, 8)[..., 0], '.jpg')
    assert error_text(ValueError, image_header, gray_jpeg, 'g.jpg') == (
        "'g.jpg' is a grayscale or 16-bit image (mode L); convert it to 8-bit RGB first.")


def test_image_header_missing_and_unreadable_content():
    assert error_text(FileNotFoundError, image_header, None, 'db:k') == "'db:k' is missing (no such LMDB key)."
    message = error_text(ValueError, image_header, b'definitely not an image, but long enough', 'k.png')
    assert message.startswith("'k.png' is not a readable image (") and message.endswith(').')


def test_check_pair_shapes_of_non_square_pairs():
    assert check_pair_shapes((8, 10), (32, 40), 4, 'l', 'g', patch_size=8) is None
    assert check_pair_shapes((8, 10, 3), (32, 40, 3), 4, 'l', 'g', patch_size=8) is None  # HWC shapes too
    assert check_pair_shapes((2, 3), (8, 12), 4, 'l', 'g') is None  # no patch size: no minimum
    assert error_text(ValueError, check_pair_shapes, (8, 10), (32, 44), 4, 'l', 'g') == (
        "GT 'g' is 32x44 (HxW) but LQ 'l' is 8x10: GT must be exactly scale=4 times LQ.")
    assert error_text(ValueError, check_pair_shapes, (8, 10), (36, 40), 4, 'l', 'g') == (
        "GT 'g' is 36x40 (HxW) but LQ 'l' is 8x10: GT must be exactly scale=4 times LQ.")
    assert error_text(ValueError, check_pair_shapes, (7, 10), (28, 40), 4, 'l', 'g', patch_size=8) == (
        "LQ 'l' is 7x10, smaller than the LR patch 8x8 (gt_size / scale); remove it or lower gt_size.")


# ---------------------------------------------------------------------------------------------- PairReader


def test_pair_reader_names_missing_files_keys_and_undecodable_content(tmp_path):
    make_pairs(tmp_path, [(4, 4)])
    disk = PairReader(disk_opt(tmp_path))
    missing = str(tmp_path / 'lq' / 'nope.png')
    assert disk.name(missing, 'lq') == missing
    assert error_text(FileNotFoundError, disk.get, missing, 'lq') == f"'{missing}' does not exist."
    assert error_text(ValueError, disk.decode, None, missing, 'lq') == f"'{missing}' cannot be decoded as an image."

    opt = lmdb_opt(tmp_path)
    reader = PairReader(opt)
    lq, gt = opt['dataroot_lq'], opt['dataroot_gt']
    assert reader.name('im0', 'gt') == f'{gt}:im0'
    assert error_text(FileNotFoundError, reader.get, 'nope', 'lq') == f"'{lq}:nope' is missing (no such LMDB key)."
    assert error_text(FileNotFoundError, reader.get, 'nope', 'gt') == f"'{gt}:nope' is missing (no such LMDB key)."
    assert error_text(ValueError, reader.decode, None, 'im0', 'gt') == f"'{gt}:im0' cannot be decoded as an image."
    assert reader.decode(reader.get('im0', 'gt'), 'im0', 'gt').shape == (16, 16, 3)


# ---------------------------------------------------------------------------------------------- build_index

# LR 10x12 and 12x9, LR patch 16 / 4 = 4, stride 3: offsets 0, 3, 6 (+ a flush one when the last misses the end)
GRID = {'im0': ([0, 3, 6], [0, 3, 6, 8]), 'im1': ([0, 3, 6, 8], [0, 3, 5])}


def test_build_index_scores_every_grid_candidate_like_plain_numpy(tmp_path):
    images = make_pairs(tmp_path, [(10, 12), (12, 9)])
    opt = disk_opt(tmp_path)
    index_path = str(tmp_path / 'index.npz')
    index = build_index(opt, index_path, stride=3)
    assert isinstance(index, HESIndex) and index.path == index_path
    names = [osp.splitext(osp.basename(p))[0] for p in index.lq_paths]
    assert sorted(names) == ['im0', 'im1']
    assert [str(p) for p in index.lq_paths] == [f'{tmp_path}/lq/{n}.png' for n in names]
    assert [str(p) for p in index.gt_paths] == [f'{tmp_path}/gt/{n}.png' for n in names]
    assert index.lq_shapes.tolist() == [list(images[n].shape[:2]) for n in names]
    assert index.image.dtype == index.top.dtype == index.left.dtype == np.int32
    assert index.score.dtype == np.float64
    assert len(index) == 3 * 4 + 4 * 3
    found = {(names[i], int(t), int(l)): s for i, t, l, s in zip(index.image, index.top, index.left, index.score)}
    assert len(found) == len(index)
    assert set(found) == {(n, t, l) for n, (tops, lefts) in GRID.items() for t in tops for l in lefts}
    for (name, top, left), score in found.items():
        assert score == pytest.approx(difficulty_by_hand(images[name], top, left, 4), rel=1e-6, abs=1e-4)

    meta = dict(index.meta)
    seconds, fingerprint = meta.pop('build_seconds'), meta.pop('fingerprint')
    assert meta == {'version': 1, 'patch_size': 4, 'stride': 3, 'scale': 4, 'gt_size': 16, 'io_backend': 'disk',
                    'dataroot_lq': f'{tmp_path}/lq', 'dataroot_gt': f'{tmp_path}/gt'}
    assert 0 <= seconds < 60 and re.fullmatch('[0-9a-f]{40}', fingerprint)
    # Eq. 7 by hand on the 24 scores: t_k = s[floor(k * 24 / 10)]
    ordered = np.sort(index.score)
    thresholds, patch_size = load_thresholds(index_path)
    assert patch_size == 4
    np.testing.assert_array_equal(thresholds, ordered[[2, 4, 7, 9, 12, 14, 16, 19, 21]])


def test_build_index_of_lmdbs_equals_the_folder_index(tmp_path):
    make_pairs(tmp_path, [(10, 12), (12, 9)])
    from_disk = build_index(disk_opt(tmp_path), str(tmp_path / 'disk.npz'), stride=3)
    from_lmdb = build_index(lmdb_opt(tmp_path), str(tmp_path / 'lmdb.npz'), stride=3)
    assert list(from_lmdb.lq_paths) == list(from_lmdb.gt_paths) == ['im0', 'im1']
    assert from_lmdb.meta['io_backend'] == 'lmdb'

    def candidates(index):
        names = [osp.splitext(osp.basename(p))[0] for p in index.lq_paths]
        return sorted((names[i], int(t), int(l), s) for i, t, l, s in zip(index.image, index.top, index.left,
                                                                           index.score))

    assert candidates(from_lmdb) == candidates(from_disk)


@pytest.mark.parametrize('gt_size, stride, tops', [(32, 4, [0, 4, 8]), (12, 1, list(range(14)))])
def test_default_stride_is_half_the_lr_patch_and_at_least_1(tmp_path, gt_size, stride, tops):
    make_pairs(tmp_path, [(16, 16)])
    opt = disk_opt(tmp_path, gt_size=gt_size)
    index = build_index(opt, str(tmp_path / 'index.npz'))
    assert index.meta['stride'] == stride and sorted(set(index.top.tolist())) == tops
    os.remove(tmp_path / 'index.npz')
    built = load_or_build_index(opt, parse_hes_options({}))
    assert built.meta['stride'] == stride
    assert f'_hes_p{gt_size // 4}_s{stride}_' in osp.basename(built.path)


def test_build_index_logs_what_it_wrote_and_shows_progress_only_when_asked(tmp_path, hes_log, capsys, monkeypatch):
    from wbsr_plugin.utils import progress
    monkeypatch.setattr(progress, 'show_progress', lambda stream=None: True)  # as in a terminal, on rank 0
    make_pairs(tmp_path, [(8, 8)])
    opt = disk_opt(tmp_path)
    bar = re.compile(r'HES index: +\d+%\|')
    index_path = str(tmp_path / 'a.npz')
    build_index(opt, index_path, stride=4)
    assert not bar.search(capsys.readouterr().err)
    assert len(hes_log) == 1
    prefix = f'HES index: 4 candidate patches of 1 images written to {index_path} in '
    assert hes_log[0].startswith(prefix) and re.fullmatch(r'\d+\.\d s\.', hes_log[0][len(prefix):]), hes_log
    build_index(opt, str(tmp_path / 'b.npz'), stride=4, progress=True)
    assert re.search(r'HES index: +0%\|.*\| 0/1 \[.*image/s\]', capsys.readouterr().err)  # cleared when done

    load_or_build_index(opt, parse_hes_options({}))
    assert not bar.search(capsys.readouterr().err)
    os.remove(default_index_path(opt, 4, 2))
    load_or_build_index(opt, parse_hes_options({}), progress=True)
    assert re.search(r'HES index: +0%\|.*\| 0/1 ', capsys.readouterr().err)


def test_build_index_refuses_an_empty_dataset(tmp_path):
    (tmp_path / 'lq').mkdir()
    (tmp_path / 'gt').mkdir()
    opt = disk_opt(tmp_path)
    assert error_text(ValueError, build_index, opt, str(tmp_path / 'i.npz')) == (
        f"No image pairs found in '{tmp_path}/lq' / '{tmp_path}/gt'.")
    assert error_text(ValueError, dataset_threshold_table, opt, 4) == f"No image pairs found in '{tmp_path}/lq'."


def test_build_index_names_a_grayscale_gt_file(tmp_path):
    images = make_pairs(tmp_path, [(8, 8)])
    gt_file = tmp_path / 'gt' / 'im0.png'
    cv2.imwrite(str(gt_file), np.repeat(np.repeat(images['im0'][..., 0], 4, 0), 4, 1))
    assert error_text(ValueError, build_index, disk_opt(tmp_path), str(tmp_path / 'i.npz')) == (
        f"'{gt_file}' is a grayscale PNG; convert it to 8-bit RGB first.")


def test_build_index_reads_a_gt_header_beyond_the_first_64_kib(tmp_path):
    """A JPEG whose frame header follows 128 KiB of metadata: the header is read from the whole file."""
    make_pairs(tmp_path, [(8, 8)], ext='.jpg')
    gt_file = tmp_path / 'gt' / 'im0.jpg'
    data = gt_file.read_bytes()
    segment = b'\xff\xef' + (65535).to_bytes(2, 'big') + bytes(65533)  # APP15, the largest a segment can be
    gt_file.write_bytes(data[:2] + segment + segment + data[2:])
    index = build_index(disk_opt(tmp_path), str(tmp_path / 'i.npz'), stride=4)
    assert len(index) == 4


def test_build_index_refuses_an_lmdb_whose_meta_info_disagrees_with_the_image(tmp_path):
    make_pairs(tmp_path, [(10, 12), (12, 9)])
    opt = lmdb_opt(tmp_path)
    meta = tmp_path / 'lq.lmdb' / 'meta_info.txt'
    assert 'im0.png (10,12,3) 1' in meta.read_text()
    meta.write_text(meta.read_text().replace('im0.png (10,12,3)', 'im0.png (12,10,3)'))
    assert error_text(ValueError, build_index, opt, str(tmp_path / 'i.npz')) == (
        f"'{tmp_path}/lq.lmdb:im0' is 10x12 but its meta_info.txt says 12x10.")


def test_build_index_refuses_a_gt_lmdb_whose_meta_info_lacks_the_key(tmp_path):
    """BasicSR pairs LMDB keys by the text before the first '.', the shapes by the first word: ' a' vs 'a'."""
    img = lr_image(3, 4, 4)
    lq = write_lmdb(tmp_path / 'lq.lmdb', [(' a', encode(img), ' a.png (4,4,3) 1')])
    gt = write_lmdb(tmp_path / 'gt.lmdb',
                    [(' a', encode(np.repeat(np.repeat(img, 4, 0), 4, 1)), ' a.png (16,16,3) 1')])
    opt = {'dataroot_lq': lq, 'dataroot_gt': gt, 'io_backend': {'type': 'lmdb'}, 'scale': 4, 'gt_size': 16}
    assert error_text(ValueError, build_index, opt, str(tmp_path / 'i.npz')) == (
        f"GT LMDB '{gt}' meta_info.txt lists no key ' a'.")


# ---------------------------------------------------------------------------------------------- loading


def save_index(path, meta=None, **arrays):
    content = {
        'meta': np.array(json.dumps({'version': 1} if meta is None else meta)),
        'lq_paths': np.array(['a']), 'gt_paths': np.array(['a']), 'lq_shapes': np.zeros((1, 2), np.int32),
        'image': np.zeros(1, np.int32), 'top': np.zeros(1, np.int32), 'left': np.zeros(1, np.int32),
        'score': np.zeros(1)
    }
    content.update(arrays)
    np.savez(path, **content)
    return str(path)


def test_hes_index_load_errors_say_what_to_do(tmp_path):
    missing = str(tmp_path / 'missing.npz')
    assert error_text(FileNotFoundError, HESIndex, missing) == (
        f"HES index '{missing}' does not exist; build it with `python -m wbsr_plugin.prepare index`.")
    assert len(HESIndex(save_index(tmp_path / 'ok.npz'))) == 1

    garbage = tmp_path / 'garbage.npz'
    garbage.write_bytes(b'not a zip file at all')
    no_score = tmp_path / 'no_score.npz'
    np.savez(no_score, meta=np.array(json.dumps({'version': 1})))
    pickled = save_index(tmp_path / 'pickled.npz', lq_paths=np.array(['a'], dtype=object))
    for path in (str(garbage), str(no_score), pickled):
        message = error_text(ValueError, HESIndex, path)
        assert message.startswith(f"HES index '{path}' is unreadable or not an index (")
        assert message.endswith('); delete it and build it again.')

    old = save_index(tmp_path / 'old.npz', meta={'version': 0})
    assert error_text(ValueError, HESIndex, old) == (
        f"HES index '{old}' has format version 0, expected 1; delete it and build it again.")


def test_load_index_says_why_an_index_no_longer_matches(tmp_path):
    make_pairs(tmp_path, [(8, 8), (8, 8)])
    opt = disk_opt(tmp_path)
    index_path = str(tmp_path / 'index.npz')
    build_index(opt, index_path, stride=2)
    assert load_index(opt, index_path).meta['stride'] == 2
    assert load_index(opt, index_path, stride=2).path == index_path

    def problem(opt, stride=None):
        message = error_text(ValueError, load_index, opt, index_path, stride)
        prefix = f"HES index '{index_path}' no longer matches the data: "
        assert message.startswith(prefix) and message.endswith(REBUILD), message
        return message[len(prefix):-len(REBUILD)]

    assert problem(dict(opt, gt_size=32)) == 'it was built for LR patches of 4 at scale 4, the options ask for 8 at ' \
                                             'scale 4'
    assert problem(dict(opt, gt_size=8, scale=2)) == 'it was built for LR patches of 4 at scale 4, the options ask ' \
                                                     'for 4 at scale 2'
    assert problem(opt, stride=3) == 'it was built with stride 2, the options ask for 3'
    shutil.copytree(tmp_path / 'gt', tmp_path / 'gt_copy')
    assert problem(dict(opt, dataroot_gt=str(tmp_path / 'gt_copy'))) == ('it lists 2 image pairs, the data has 2 '
                                                                           'different ones')
    shutil.copytree(tmp_path / 'lq', tmp_path / 'lq_copy')
    assert problem(dict(opt, dataroot_lq=str(tmp_path / 'lq_copy'))) == ('it lists 2 image pairs, the data has 2 '
                                                                          'different ones')
    set_mtime(tmp_path / 'lq' / 'im1.png', 10**9)
    assert problem(opt) == 'the image files changed since it was built (sizes or modification times differ)'
    cv2.imwrite(str(tmp_path / 'lq' / 'im2.png'), lr_image(2, 8, 8))
    cv2.imwrite(str(tmp_path / 'gt' / 'im2.png'), lr_image(2, 32, 32))
    assert problem(opt) == 'it lists 2 image pairs, the data has 3 different ones'


def test_default_index_is_built_reused_and_rebuilt_when_stale(tmp_path, hes_log):
    make_pairs(tmp_path, [(8, 8)])
    opt = disk_opt(tmp_path)
    hes = parse_hes_options({'hes_stride': 1})  # not the default stride (2)
    default = default_index_path(opt, 4, 1)
    index = load_or_build_index(opt, hes)
    assert index.path == default and index.meta['stride'] == 1 and len(index) == 5 * 5
    assert hes_log[0] == f'HES index {default} does not exist; building it.'
    assert len(hes_log) == 2 and hes_log[1].startswith('HES index: 25 candidate patches')

    hes_log.clear()
    stat = os.stat(default)
    assert load_or_build_index(opt, hes).path == default
    assert hes_log == [] and os.stat(default).st_mtime_ns == stat.st_mtime_ns, 'a matching index is reused'

    build_index(opt, default, stride=3)  # another grid under the default name
    hes_log.clear()
    assert load_or_build_index(opt, hes).meta['stride'] == 1
    assert hes_log[0] == (f'HES index {default} is stale (it was built with stride 3, the options ask for 1); '
                          'rebuilding it.')

    set_mtime(tmp_path / 'gt' / 'im0.png', 10**9)
    hes_log.clear()
    assert load_or_build_index(opt, hes).meta['stride'] == 1
    assert hes_log[0] == (f'HES index {default} is stale (the image files changed since it was built (sizes or '
                          'modification times differ)); rebuilding it.')
    assert load_index(opt, default, 1).path == default


def test_explicit_index_path_must_exist_and_match_and_is_never_built(tmp_path):
    make_pairs(tmp_path, [(8, 8)])
    opt = disk_opt(tmp_path)
    explicit = str(tmp_path / 'mine.npz')
    assert error_text(FileNotFoundError, load_or_build_index, opt, parse_hes_options({'hes_index_path': explicit})) == (
        f"HES index '{explicit}' does not exist; build it with `python -m wbsr_plugin.prepare index`.")
    assert not list(tmp_path.glob('*.npz'))
    build_index(opt, explicit, stride=1)
    assert load_or_build_index(opt, parse_hes_options({'hes_index_path': explicit, 'hes_stride': 1})).path == explicit
    message = error_text(ValueError, load_or_build_index, opt, parse_hes_options({'hes_index_path': explicit}))
    assert message == (f"HES index '{explicit}' no longer matches the data: it was built with stride 1, the options "
                       f'ask for 2{REBUILD}')  # the default stride: half the LR patch of 4
    assert [p.name for p in tmp_path.glob('*.npz')] == ['mine.npz']


def test_unwritable_data_folder_asks_for_an_explicit_index(tmp_path):
    make_pairs(tmp_path / 'data', [(8, 8)])
    opt = disk_opt(tmp_path / 'data')
    os.chmod(tmp_path / 'data', 0o555)
    try:
        if os.access(tmp_path / 'data', os.W_OK):
            pytest.skip('this user writes to read-only folders (root)')
        message = error_text(PermissionError, load_or_build_index, opt, parse_hes_options({}))
    finally:
        os.chmod(tmp_path / 'data', 0o755)
    assert message == (f"Cannot write the HES index beside the data ('{default_index_path(opt, 4, 2)}'); set "
                       'hes_index_path to a writable file or build it with `python -m wbsr_plugin.prepare index`.')


# ---------------------------------------------------------------------------------------------- threshold table


def test_dataset_threshold_table_spreads_max_images_over_the_dataset(tmp_path):
    """Five 16x20 LR images: one 16-pixel patch size fits, two candidates each (left 0 and the flush left 4)."""
    images = make_pairs(tmp_path, [(16, 20)] * 5, amplitudes=[3, 10, 30, 60, 120])
    meta = tmp_path / 'meta_info.txt'
    meta.write_text(''.join(f'im{i}.png (64,80,3)\n' for i in range(5)))  # dataset order im0..im4
    opt = disk_opt(tmp_path, meta_info_file=str(meta))
    scores = {name: [difficulty_by_hand(img, 0, left, 16) for left in (0, 4)] for name, img in images.items()}

    def expected(names, positions):
        ordered = np.sort(np.concatenate([scores[n] for n in names]))
        return ordered[positions]

    # K = 4: t_k = s[floor(k N / 4)]
    everything = dataset_threshold_table(opt, 4)
    assert list(everything) == [16]
    np.testing.assert_allclose(everything[16], expected(['im0', 'im1', 'im2', 'im3', 'im4'], [2, 5, 7]), atol=1e-4)
    two = dataset_threshold_table(opt, 4, max_images=2)  # every 3rd image: im0, im3
    np.testing.assert_allclose(two[16], expected(['im0', 'im3'], [1, 2, 3]), atol=1e-4)
    three = dataset_threshold_table(opt, 4, max_images=3)  # every 2nd image: im0, im2, im4
    np.testing.assert_allclose(three[16], expected(['im0', 'im2', 'im4'], [1, 3, 4]), atol=1e-4)

    from_lmdb = lmdb_opt(tmp_path)  # keys sorted: the same order
    np.testing.assert_allclose(dataset_threshold_table(from_lmdb, 4, max_images=2)[16], two[16], rtol=1e-12)


@pytest.mark.parametrize('backend', ['disk', 'lmdb'])
@pytest.mark.parametrize('reader', ['index', 'thresholds'])
def test_an_undecodable_lq_image_is_named(tmp_path, backend, reader):
    make_pairs(tmp_path, [(8, 8)])
    lq_file = tmp_path / 'lq' / 'im0.png'
    data = lq_file.read_bytes()
    lq_file.write_bytes(data[:len(data) // 2])  # header intact, pixel data cut
    opt, name = disk_opt(tmp_path), lq_file
    if backend == 'lmdb':  # the same bytes under the key im0 (BasicSR's maker would refuse to read them)
        gt_png = (tmp_path / 'gt' / 'im0.png').read_bytes()
        lq = write_lmdb(tmp_path / 'lq.lmdb', [('im0', data[:len(data) // 2], 'im0.png (8,8,3) 1')])
        gt = write_lmdb(tmp_path / 'gt.lmdb', [('im0', gt_png, 'im0.png (32,32,3) 1')])
        opt = dict(opt, dataroot_lq=lq, dataroot_gt=gt, io_backend={'type': 'lmdb'})
        name = f'{lq}:im0'
    if reader == 'index':
        message = error_text(ValueError, build_index, opt, str(tmp_path / 'i.npz'), stride=4)
    else:
        message = error_text(ValueError, dataset_threshold_table, opt, 4)
    assert message == f"'{name}' cannot be decoded as an image."


def test_lmdbs_with_different_keys_are_named(tmp_path):
    png = encode(lr_image(0, 4, 4))
    lq = write_lmdb(tmp_path / 'lq.lmdb', [('a', png, 'a.png (4,4,3) 1'), ('b', png, 'b.png (4,4,3) 1')])
    gt = write_lmdb(tmp_path / 'gt.lmdb', [('a', png, 'a.png (16,16,3) 1'), ('c', png, 'c.png (16,16,3) 1')])
    message = error_text(ValueError, list_pairs, {'dataroot_lq': lq, 'dataroot_gt': gt, 'io_backend': {'type': 'lmdb'}})
    assert message.startswith(f"LMDBs '{lq}' and '{gt}' do not hold the same keys: ")
