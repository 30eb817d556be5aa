"""File helpers: the image types the tools read, and atomic writes (a reader never sees a half-written
checkpoint, index, image or table)."""
import os
import tempfile
from contextlib import contextmanager
from os import path as osp

import torch

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm', '.pgm', '.pnm')


def list_images(path, *, recursive=False):
    """Image files of a folder (sorted paths; hidden files and folders skipped), or ``[path]`` for a file.

    Args:
        path (str): A folder or one image file.
        recursive (bool): Also look into subfolders. Default: False.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise FileNotFoundError(f'no such file or folder: {path}')
    found = []
    for folder, subfolders, files in os.walk(path):
        subfolders[:] = [d for d in subfolders if recursive and not d.startswith('.')]
        found += [osp.join(folder, f) for f in files if not f.startswith('.') and f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _default_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The temporary name keeps the extension, since writers such as ``cv2.imwrite``, ``np.savez``
    and ``savefig`` choose the format by it.
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix=f'.tmp{osp.splitext(path)[1]}', dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj, path):
    """``torch.save`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)
