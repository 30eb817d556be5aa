"""Output folders checked before any computation, without creating them: a file where a folder should be, a
place that cannot be written (``/proc``, a read-only disk), and what killed runs left there."""
import tempfile
from os import path as osp

from wbsr_runtime.files import remove_stale_temp_files


class OutputFolderError(ValueError):
    """An output folder that cannot be used."""


def check_output_folder(folder, flag='-o'):
    """Check that files can be created in ``folder`` (or, while it does not exist, in the nearest folder above it,
    where it will be made), and remove the temporary files that killed runs of this host left in it.

    Raises:
        OutputFolderError: With one line naming ``flag`` and the folder.
    """
    if osp.exists(folder) and not osp.isdir(folder):
        raise OutputFolderError(f'{flag}: {folder} is a file, not a folder')
    existing = osp.abspath(folder)
    while not osp.exists(existing):
        existing = osp.dirname(existing)
    if not osp.isdir(existing):
        raise OutputFolderError(f'{flag}: {folder} lies under {existing}, which is a file')
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix='.wbsr-write-test-'):
            pass
    except OSError as err:
        raise OutputFolderError(f'{flag}: cannot write into {existing}: {err.strerror or err}') from None
    if osp.isdir(folder):
        remove_stale_temp_files(folder)
