"""Exports into one named file: ``export -o NAME.safetensors`` (or ``.pth``) with one subnet or the whole supernet.

* A subnet: the file :mod:`.export_files` would write into a folder (a ``.safetensors`` file holding the
  subnet's ``'wbsr'`` entry in its header, a ``.pth`` file BasicSR's ``{'params': ...}``).
* The supernet (``--supernet``): its weights (those inference uses: ``params_ema`` when the checkpoint holds
  them) with its ``'wbsr'`` entry, in either format: a checkpoint that ``--model`` and ``pretrain_network_g``
  read, as the training checkpoint it came from.
"""
from os import path as osp

from wbsr_plugin.utils.checkpoint_files import atomic_torch_save
from wbsr_plugin.utils.safetensors_files import write_safetensors

from .export_files import (
    WEIGHTS_FORMATS,
    ExportError,
    check_planned_files,
    prepare_output_folder,
    resolve_subnet,
    subnet_entry,
    write_published,
    write_subnet_weights,
)

WBSR_KEY = 'wbsr'


def weights_format_of(path):
    """'pth' or 'safetensors' when ``path`` names a weights file by its extension, else None (a folder)."""
    ext = osp.splitext(str(path))[1].lower().lstrip('.')
    return ext if ext in WEIGHTS_FORMATS else None


def supernet_file_name(net, weights_format):
    """``WBSRRCAN_x4.safetensors``: the supernet's file in an output folder."""
    return f'{type(net).__name__}_x{net.upscale}.{weights_format}'


def write_supernet(net, meta, path, *, overwrite=False):
    """Write the supernet's weights and its ``'wbsr'`` entry ``meta`` to ``path`` (``.pth`` or ``.safetensors``).

    Args:
        net (SupernetMixin): The supernet.
        meta (dict): Its checkpoint's ``'wbsr'`` entry ({} when it has none: the file then has none either).
        path (str): The output file.
        overwrite (bool): Replace an existing file. Default: False.
    """
    weights_format = weights_format_of(path)
    if weights_format is None:
        raise ExportError(f'{path}: a supernet is written as .pth or .safetensors.')
    prepare_output_folder(osp.dirname(osp.abspath(path)))
    check_planned_files([path], overwrite)
    state = {key: value.detach().cpu().contiguous() for key, value in net.state_dict().items()}
    if weights_format == 'safetensors':
        write_published(path, write_safetensors, state, replace=overwrite, meta=meta)
    else:
        write_published(path, lambda staging: atomic_torch_save(
            {'params': state, **({WBSR_KEY: meta} if meta else {})}, staging), replace=overwrite)


def export_subnet_file(net, key, path, *, overwrite=False, source=None, source_meta=None):
    """Write one subnet's weights to the file ``path`` (its extension picks the format).

    Args:
        net (SupernetMixin): The supernet.
        key (int | str): The subnet (index or name).
        path (str): ``NAME.pth`` or ``NAME.safetensors``.
        overwrite (bool): Replace an existing file. Default: False.
        source (str | None): The supernet checkpoint, recorded in the file. Default: None.
        source_meta (dict | None): Its ``'wbsr'`` entry. Default: None.

    Returns:
        ExportedSubnet: The subnet's export entry.
    """
    if weights_format_of(path) is None:
        raise ExportError(f'{path}: a single subnet is written as .pth or .safetensors.')
    spec = resolve_subnet(net, key)
    folder, name = osp.split(osp.abspath(path))
    prepare_output_folder(folder)
    check_planned_files([path], overwrite)
    entry = subnet_entry(net, spec)
    write_subnet_weights(net, spec, entry, folder, name, source=source, source_meta=source_meta, replace=overwrite)
    return entry
