"""File helpers: the image types the tools read, and atomic writes (a reader never sees a half-written
checkpoint, index, image or table).

A file is written under a temporary name beside its target and then published under its own name: replacing what
is there (checkpoints, cost tables, files a command was told to ``--overwrite``), or only where the name is still
free (:func:`publish_no_replace`), so that a file another process wrote meanwhile is never replaced.
"""
import ctypes
import ctypes.util
import errno
import os
import re
import socket
import tempfile
from contextlib import contextmanager
from os import path as osp

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


def default_mode(full=0o666):
    """``full`` (0o666 for a file, 0o777 for a folder) less the process's umask: what a new one would get."""
    umask = os.umask(0)
    os.umask(umask)
    return full & ~umask


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


# errors of os.link where the file system has no hard links (FAT, some network and FUSE file systems)
NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS}
RENAME_NOREPLACE = 1  # renameat2's flag (Linux)
RENAME_EXCL = 4  # renamex_np's flag (macOS)
AT_FDCWD = -100


def _rename_no_replace(source, target):
    """Rename ``source`` to ``target`` unless ``target`` exists, in one step of the file system (Windows'
    ``os.rename``, Linux's ``renameat2`` or macOS's ``renamex_np``)."""
    if os.name == 'nt':
        os.rename(source, target)  # refuses an existing target
        return
    libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    old, new = os.fsencode(source), os.fsencode(target)
    if hasattr(libc, 'renameat2'):
        status = libc.renameat2(AT_FDCWD, old, AT_FDCWD, new, RENAME_NOREPLACE)
    elif hasattr(libc, 'renamex_np'):
        status = libc.renamex_np(old, new, RENAME_EXCL)
    else:
        raise OSError(errno.ENOTSUP, 'this platform cannot rename without replacing', target)
    if status != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)


def publish_no_replace(source, target):
    """Give the complete file ``source`` the name ``target`` only if no file has it: ``FileExistsError`` otherwise,
    and ``source`` stays. A hard link (then removing ``source``) where the file system has them, else a rename that
    refuses to replace; never a check followed by a rename, which another process could slip between."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target) from None
    except OSError as err:
        if err.errno not in NO_HARD_LINKS:
            raise
        _rename_no_replace(source, target)
        return
    os.remove(source)


@contextmanager
def atomic_path(path, *, replace=True):
    """Yield a temporary path beside ``path``; publish it as ``path`` only if the block succeeds.

    The temporary name keeps the extension, since writers such as ``cv2.imwrite``, ``np.savez``
    and ``savefig`` choose the format by it, and names the host and process writing it, so that a
    later run can remove what a killed one left (:func:`remove_stale_temp_files`).

    Args:
        path (str): The file to write.
        replace (bool): Replace a file that has the name (checkpoints, tables, ``--overwrite``); False: raise
            ``FileExistsError`` and keep it (:func:`publish_no_replace`). Default: True.
    """
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.{_temp_owner()}-', suffix=f'.tmp{osp.splitext(path)[1]}',
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, default_mode())
        if replace:
            os.replace(tmp, path)
        else:
            publish_no_replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path, text, *, replace=True):
    """Write ``text`` (UTF-8) to ``path`` atomically (``replace``: as :func:`atomic_path`'s)."""
    with atomic_path(path, replace=replace) as tmp:
        with open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)


def atomic_write_bytes(path, data, *, replace=True):
    """Write ``data`` to ``path`` atomically (``replace``: as :func:`atomic_path`'s)."""
    with atomic_path(path, replace=replace) as tmp:
        with open(tmp, 'wb') as f:
            f.write(data)
