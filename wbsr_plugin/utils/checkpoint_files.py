"""Reading checkpoint files safely: tensors only, on the CPU, and one clear line for anything else.

Every checkpoint the package reads (supernets, priors, training states, BasicSR's ``pretrain_network_*``) goes
through :func:`load_checkpoint_file`: ``torch.load(..., map_location='cpu', weights_only=True)``, so a file that
holds Python objects runs nothing. Network weights (``--model``, ``pretrain_network_*``) go through
:func:`load_weights_file`, which reads ``.safetensors`` files too (:mod:`.safetensors_files`), by their content.
A file that is not a checkpoint (empty, text, an HTML page, a git-LFS pointer,
random bytes) or that holds other Python objects gives a :class:`CheckpointError` naming the file and what it is.
"""
import pickle
from os import path as osp

import torch

from wbsr_runtime.files import atomic_path

from .safetensors_files import is_safetensors_path, looks_like_safetensors, read_safetensors_checkpoint

HEAD_BYTES = 512


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked."""


def describe_non_checkpoint(path):
    """What the first bytes of ``path`` look like: 'a git-LFS pointer ...', 'an HTML page', 'a text file', ..."""
    with open(path, 'rb') as f:
        head = f.read(HEAD_BYTES)
    if looks_like_safetensors(path):
        return 'a safetensors file, which holds network weights only: training states and priors are .pth'
    if head.startswith(b'version https://git-lfs'):
        return 'a git-LFS pointer: fetch the file itself with `git lfs pull`'
    text = head.lstrip().lower()
    if text.startswith((b'<!doctype html', b'<html')):
        return 'an HTML page: a failed download?'
    try:
        head.decode('utf-8')
        return 'a text file'
    except UnicodeDecodeError:
        pass
    if head.startswith(b'PK'):
        return 'a truncated or corrupt checkpoint (a zip archive torch cannot read)'
    return 'unrecognised bytes'


def _check_is_file(path, kind='checkpoint'):
    if not osp.exists(path):
        raise CheckpointError(f'no such {kind}: {path}')
    if osp.isdir(path):
        raise CheckpointError(f'{path} is a folder, not a {kind}')


def load_weights_file(path):
    """Network weights of a ``.pth`` checkpoint (:func:`load_checkpoint_file`) or of a ``.safetensors`` file (as
    ``{'params': state, 'wbsr': meta}``), told apart by content; a :class:`CheckpointError` with one line for
    anything else."""
    _check_is_file(path)
    if looks_like_safetensors(path):
        return read_safetensors_checkpoint(path, lambda reason: CheckpointError(f'{path}: {reason}'))
    try:
        return load_checkpoint_file(path)
    except CheckpointError as err:
        if is_safetensors_path(path) and 'is not a PyTorch checkpoint' in str(err):
            with open(path, 'rb') as f:
                zipped = f.read(2) == b'PK'
            what = 'a PyTorch checkpoint: name it .pth' if zipped else describe_non_checkpoint(path)
            raise CheckpointError(f'{path} is not a safetensors file ({what})') from None
        raise


def load_checkpoint_file(path, *, extra_globals=()):
    """``torch.load(path, map_location='cpu', weights_only=True)``, or a :class:`CheckpointError` with one line.

    Args:
        path (str): The file.
        extra_globals (Sequence[type]): Plain classes allowed beside tensors (``torch.serialization.safe_globals``).
    """
    _check_is_file(path)
    try:
        if osp.getsize(path) == 0:
            raise CheckpointError(f'{path} is empty, not a PyTorch checkpoint')
        if looks_like_safetensors(path):  # torch.load would read it; only network weights are safetensors
            raise CheckpointError(f'{path} is not a PyTorch checkpoint ({describe_non_checkpoint(path)})')
        with torch.serialization.safe_globals(list(extra_globals)):
            return torch.load(path, map_location='cpu', weights_only=True)
    except CheckpointError:
        raise
    except OSError as err:
        raise CheckpointError(f'cannot read {path}: {err.strerror or err}') from None
    except pickle.UnpicklingError as err:
        if 'global' in str(err).split('WeightsUnpickler error:')[-1].lower():  # a Python object, not a tensor
            raise CheckpointError(f'{path} holds Python objects besides tensors, which are never loaded (they could '
                                  'run code); save only tensors and plain containers') from None
        raise CheckpointError(f'{path} is not a PyTorch checkpoint ({describe_non_checkpoint(path)})') from None
    except Exception:  # noqa: BLE001  (torch raises KeyError, IndexError, RuntimeError, EOFError... on garbage)
        raise CheckpointError(f'{path} is not a PyTorch checkpoint ({describe_non_checkpoint(path)})') from None


def atomic_torch_save(obj, path):
    """``torch.save`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
