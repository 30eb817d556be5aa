"""File helpers: the image types the tools read, and atomic writes (a reader never sees a half-written
checkpoint, index, image or table)."""
import os
import re
import socket
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


def _host():
    return re.sub(r'[^A-Za-z0-9]', '_', socket.gethostname())


def _temp_owner():
    """What a temporary file's name says about the process writing it: host and PID."""
    return f'{_host()}-{os.getpid()}'


# .NAME.HOST-PID-RANDOM.tmp.EXT (RANDOM: mkstemp's letters, digits and underscores)
TEMP_NAME = re.compile(r'^\..+\.(?P<host>\w+)-(?P<pid>\d+)-\w+\.tmp(\.[^./]*)?$')


def _alive(pid):
    try:
        os.kill(pid, 0)  # PermissionError: another user's live process
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_temp_files(folder):
    """Remove the temporary files of :func:`atomic_path` that processes of this host left in ``folder`` when
    they were killed (never one whose process still runs); returns their names."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    host = _host()
    for name in names:
        match = TEMP_NAME.match(name)
        if match and match['host'] == host and not _alive(int(match['pid'])):
            try:
                os.remove(osp.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    The temporary name keeps the extension, since writers such as ``cv2.imwrite``, ``np.savez``
    and ``savefig`` choose the format by it, and names the host and process writing it, so that a
    later run can remove what a killed one left (:func:`remove_stale_temp_files`).
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.{_temp_owner()}-', suffix=f'.tmp{osp.splitext(path)[1]}',
                               dir=folder)
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
