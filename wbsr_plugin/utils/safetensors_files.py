"""Network weights as ``.safetensors`` files: one flat state dict, and the package's metadata as JSON in the header.

A safetensors file holds tensors and a header of string pairs, nothing else, so reading one never runs code. The
package writes the ``'wbsr'`` entry of its checkpoints (``inference/checkpoint.py``) as JSON under the header key
``'wbsr'``, and the tensors of the weights the file holds (``params_ema`` preferred, as inference reads them).
:func:`read_safetensors_checkpoint` gives the file back as a checkpoint dict, ``{'params': ..., 'wbsr': ...}``, so
every reader of ``.pth`` weights (``--model``, ``pretrain_network_g``) reads both. Training states stay ``.pth``.
"""
import json
import struct
from os import path as osp

from wbsr_runtime.files import atomic_path

SAFETENSORS_EXT = '.safetensors'
META_KEY = 'wbsr'
HEADER_LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


def looks_like_safetensors(path):
    """True when the first bytes of ``path`` are a safetensors header: a little-endian u64 length ``n`` that fits
    the file, then ``n`` bytes of JSON starting with ``{``."""
    try:
        size = osp.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(HEADER_LENGTH_BYTES + 1)
    except OSError:
        return False
    if len(head) < HEADER_LENGTH_BYTES + 1:
        return False
    (length, ) = struct.unpack('<Q', head[:HEADER_LENGTH_BYTES])
    return 0 < length <= min(MAX_HEADER_BYTES, size - HEADER_LENGTH_BYTES) and head[HEADER_LENGTH_BYTES:] == b'{'


def is_safetensors_path(path):
    """True when ``path`` is named ``*.safetensors`` or its content is one."""
    return str(path).lower().endswith(SAFETENSORS_EXT) or looks_like_safetensors(path)


def _require_safetensors():
    try:
        import safetensors.torch
    except ImportError as err:  # a dependency of the package; only a broken install lacks it
        raise ImportError(f'reading and writing .safetensors files needs the safetensors package ({err}): '
                          'pip install safetensors') from None
    return safetensors.torch


def header_metadata(meta):
    """The safetensors header of the ``'wbsr'`` entry ``meta`` (None or {}: no entry): ``{'format': 'pt'}`` and
    ``{'wbsr': JSON}``."""
    header = {'format': 'pt'}
    if meta:
        header[META_KEY] = json.dumps(meta, default=_plain_number)
    return header


def _plain_number(value):
    if hasattr(value, 'item'):  # numpy and torch scalars
        return value.item()
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def write_safetensors(state, path, meta=None):
    """Write the state dict ``state`` to ``path`` (atomically), with ``meta`` as JSON under the header key ``'wbsr'``.

    Args:
        state (dict[str, Tensor]): Weights; copied to contiguous CPU tensors.
        path (str): Output file.
        meta (dict | None): JSON-serialisable metadata. Default: None (none).
    """
    save_file = _require_safetensors().save_file
    tensors = {key: value.detach().to('cpu').contiguous() for key, value in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=header_metadata(meta))


def read_safetensors(path, error):
    """``(state dict, header metadata)`` of ``path``, on the CPU; ``error(reason)`` is raised for a file that is
    not a readable safetensors file.

    Args:
        path (str): The file.
        error (callable): Builds the exception of one line from a reason (the caller's error type).
    """
    safe_open = _require_safetensors().safe_open
    if not looks_like_safetensors(path):
        raise error('not a safetensors file')
    try:
        with safe_open(path, framework='pt', device='cpu') as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except OSError as err:
        raise error(f'unreadable: {err.strerror or err}') from None
    except Exception as err:  # noqa: BLE001  (safetensors raises its own SafetensorError on a corrupt file)
        raise error(f'a truncated or corrupt safetensors file: {str(err).splitlines()[0] if str(err) else err}') \
            from None
    return state, metadata


def read_safetensors_checkpoint(path, error):
    """A safetensors file as a checkpoint dict: ``{'params': state}``, plus ``{'wbsr': meta}`` when its header
    holds the entry. ``error(reason)`` builds the exception for a file that cannot be read (see
    :func:`read_safetensors`), or whose ``'wbsr'`` header entry is not a JSON object."""
    state, metadata = read_safetensors(path, error)
    ckpt = {'params': state}
    if META_KEY in metadata:
        try:
            meta = json.loads(metadata[META_KEY])
        except ValueError:
            raise error(f"its '{META_KEY}' header entry is not JSON") from None
        if not isinstance(meta, dict):
            raise error(f"its '{META_KEY}' header entry is not a JSON object")
        ckpt[META_KEY] = meta
    return ckpt
