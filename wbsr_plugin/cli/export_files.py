"""Export the subnets of a WBSR supernet as stand-alone networks for other tools.

Each subnet is exactly the supernet's plain BasicSR network (its ``PLAIN_TYPE``, such as
``MSRResNet(num_feat=w, num_block=d)``) cut out of it (``SupernetMixin.extract_subnet``):

* its weights, which the plain network loads with ``strict=True``: a BasicSR checkpoint ``{'params': state_dict}``
  (``STEM.pth``: BasicSR's ``test.py``, Real-ESRGAN-style scripts), or a ``STEM.safetensors`` file whose header
  holds the ``'wbsr'`` entry of :func:`~.export_metadata.subnet_checkpoint_meta` (``infer --model`` reads it);
* for an architecture spandrel knows under another layout (``SPANDREL_LAYOUT``: RCAN), the same weights in
  that layout, ``STEM_spandrel.pth`` or ``.safetensors`` (chaiNNer, ComfyUI);
* ONNX models (:mod:`.onnx_export`: float32, float16, or float16 weights with float32 input and output), with
  the subnet's record (:func:`~.export_metadata.subnet_record`) in ``metadata_props``.

Every file is written to a temporary name and renamed, so an interrupted export never leaves
a half-written file.
"""
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from os import path as osp

import torch

from wbsr_plugin.archs.supernet_util import REFERENCE_LQ_SIZE
from wbsr_plugin.cli.model_card import format_subnet_table
from wbsr_plugin.utils.checkpoint_files import atomic_torch_save
from wbsr_plugin.utils.progress import progress_bar
from wbsr_plugin.utils.safetensors_files import write_safetensors
from wbsr_runtime.files import atomic_write_text, publish_no_replace
from wbsr_runtime.output_folders import OutputFolderError, check_output_folder

from . import onnx_export
from .export_metadata import index_entry, index_header, onnx_metadata_props, subnet_checkpoint_meta, subnet_record
from .onnx_export import FILE_SUFFIXES, ONNX_INPUT, ONNX_OPSET, ONNX_OUTPUT, onnx_max_error, write_onnx  # noqa: F401

INDEX_NAME = 'index'
WEIGHTS_FORMATS = ('pth', 'safetensors')
SPANDREL_SUFFIX = '_spandrel'
ONNX_KINDS = {'fp32': 'onnx', 'fp16': 'onnx_fp16', 'fp16-weights': 'onnx_fp16w'}


class ExportError(ValueError):
    """An export that cannot be done as asked."""


@dataclass
class ExportedSubnet:
    """One exported subnet.

    Attributes:
        index (int): Position in the supernet's cost order (0 is the cheapest).
        name (str): ``'w{width}d{depth}'``.
        width (int): Channels (``num_feat`` of the plain network).
        depth (int): Blocks (``num_block`` of the plain network).
        params (int): Parameters.
        gflops (float): GFLOPs per 32x32 LR patch.
        percent (float): FLOPs in % of the full network.
        network_g (dict): BasicSR ``network_g`` options that build the plain network.
        files (dict[str, str]): Kind ('checkpoint', 'spandrel', 'onnx', 'onnx_fp16', 'onnx_fp16w') -> file name in
            the output folder.
        sizes (dict[str, int]): Kind -> file size in bytes.
        seconds (dict[str, float]): Kind -> seconds spent writing it.
        onnx_errors (dict[str, float]): ONNX kind -> largest |ONNX - PyTorch| on the check input, if checked.
        onnx_max_error (float | None): The largest of ``onnx_errors``, if checked.
    """
    index: int
    name: str
    width: int
    depth: int
    params: int
    gflops: float
    percent: float
    network_g: dict
    files: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    onnx_errors: dict = field(default_factory=dict)
    onnx_max_error: float = None


def resolve_subnet(net, key):
    """The subnet named by ``key``: an index in cost order (int or digits) or a name like ``'w48d16'``."""
    names = [s.name for s in net.subnets]
    if isinstance(key, int) and not isinstance(key, bool):
        if 0 <= key < len(net.subnets):
            return net.subnets[key]
    elif isinstance(key, str):
        text = key.strip()
        if text.isdigit() and int(text) < len(net.subnets):
            return net.subnets[int(text)]
        if text in names:
            return net.subnets[names.index(text)]
    raise ExportError(f'unknown subnet {key!r}; expected an index in [0, {len(net.subnets) - 1}] '
                      f'or one of {names}.')


@dataclass(frozen=True)
class ExportFormats:
    """Which files an export writes for each subnet.

    Args:
        checkpoint (bool): The weights file ``STEM.pth`` or ``STEM.safetensors``. Default: True.
        weights_format (str): 'pth' (BasicSR's ``{'params': ...}``) or 'safetensors'. Default: 'pth'.
        spandrel (bool): The weights in spandrel's layout too, ``STEM_spandrel.{pth,safetensors}`` (only for
            supernets with a ``SPANDREL_LAYOUT``). Default: False.
        onnx_precisions (tuple[str]): ONNX models to write: 'fp32' (``STEM.onnx``), 'fp16' (``STEM_fp16.onnx``),
            'fp16-weights' (``STEM_fp16w.onnx``). Default: () (none).
    """
    checkpoint: bool = True
    weights_format: str = 'pth'
    spandrel: bool = False
    onnx_precisions: tuple = ()

    def __post_init__(self):
        if self.weights_format not in WEIGHTS_FORMATS:
            raise ExportError(f'unknown weights format {self.weights_format!r}; expected one of {WEIGHTS_FORMATS}.')
        for precision in self.onnx_precisions:
            if precision not in ONNX_KINDS:
                raise ExportError(f'unknown ONNX precision {precision!r}; expected one of {tuple(ONNX_KINDS)}.')
        if not (self.checkpoint or self.spandrel or self.onnx_precisions):
            raise ExportError('nothing to export: ask for the checkpoint, ONNX or both.')

    def file_names(self, stem):
        """``{kind: file name}`` of the subnet files named ``stem``, in the order they are written."""
        ext = f'.{self.weights_format}'
        names = {'checkpoint': stem + ext} if self.checkpoint else {}
        names.update({'spandrel': stem + SPANDREL_SUFFIX + ext} if self.spandrel else {})
        names.update({ONNX_KINDS[p]: stem + FILE_SUFFIXES[p] for p in self.onnx_precisions})
        return names


def every_file_name(stem):
    """Every file name an export may give subnet ``stem``, in every format."""
    names = []
    for weights_format in WEIGHTS_FORMATS:
        formats = ExportFormats(weights_format=weights_format, spandrel=True, onnx_precisions=tuple(ONNX_KINDS))
        names += [name for name in formats.file_names(stem).values() if name not in names]
    return names


def subnet_state_dict(net, spec):
    """The plain network's state dict of subnet ``spec``: contiguous float32 CPU copies."""
    module = net.extract_subnet(spec.index)
    return OrderedDict((k, v.detach().to('cpu', torch.float32).contiguous()) for k, v in module.state_dict().items())


def prepare_output_folder(folder):
    """Check that files can be written in ``folder`` (made on the first write), without creating it."""
    try:
        check_output_folder(folder)
    except OutputFolderError as err:
        raise ExportError(str(err)) from None


def planned_files(net, specs, folder, formats, *, index):
    """Every path an export would write: each subnet's files, and the index with ``index``."""
    names = [name for spec in specs for name in formats.file_names(file_stem(net, spec)).values()]
    names += [f'{INDEX_NAME}.json', f'{INDEX_NAME}.md'] if index else []
    return [osp.join(folder, name) for name in names]


def check_planned_files(paths, overwrite):
    """No planned path is a folder; none exists unless ``overwrite`` (the output policy of ``infer``)."""
    folders = [p for p in paths if osp.isdir(p)]
    if folders:
        raise ExportError(f'{folders[0]} is a folder; it cannot be replaced by an exported file')
    existing = [p for p in paths if osp.exists(p)]
    if existing and not overwrite:
        listed = ', '.join(existing[:5]) + (f' and {len(existing) - 5} more' if len(existing) > 5 else '')
        raise ExportError(f'{len(existing)} file(s) this export would write exist already: {listed}; pass '
                          '--overwrite to replace them')


def write_weights(state, path, meta=None):
    """Write a state dict by the extension of ``path`` (atomically): ``.pth`` as BasicSR's ``{'params': ...}``,
    ``.safetensors`` flat, with ``meta`` as the ``'wbsr'`` header entry."""
    if path.endswith('.safetensors'):
        write_safetensors(state, path, meta)
    elif path.endswith('.pth'):
        atomic_torch_save({'params': state}, path)
    else:
        raise ExportError(f'{path}: weights are written as .pth or .safetensors.')


def write_checkpoint(net, spec, path, meta=None):
    """Write subnet ``spec``'s weights to ``path``, ``.pth`` or ``.safetensors`` (see :func:`write_weights`)."""
    write_weights(subnet_state_dict(net, spec), path, meta)


def spandrel_layout_problem(net):
    """Why ``net``'s subnets have no spandrel file (None when they have one)."""
    if net.SPANDREL_LAYOUT is None:
        return (f'spandrel has no {net.PLAIN_TYPE} architecture; use the ONNX export (--onnx) or the BasicSR '
                'checkpoint instead')
    return None


def write_spandrel(net, spec, path):
    """Write subnet ``spec`` in the layout spandrel recognises (``SPANDREL_LAYOUT``): a flat state dict, in
    ``.pth`` or ``.safetensors``."""
    state = net.SPANDREL_LAYOUT(subnet_state_dict(net, spec), net.plain_network_options(spec.width, spec.depth))
    if path.endswith('.safetensors'):
        write_safetensors(state, path)
    else:
        atomic_torch_save(state, path)


def require_onnx(precisions=('fp32', )):
    """Import what ONNX export needs, or raise :class:`ExportError` saying how to install it."""
    try:
        onnx_export.require_onnx(precisions)
    except ImportError as err:
        raise ExportError(str(err)) from None


def file_stem(net, spec):
    """File name without extension: ``MSRResNet_x4_w64d16``."""
    return f'{net.PLAIN_TYPE}_x{net.upscale}_{spec.name}'


def write_published(path, write, *args, replace=False, **kwargs):
    """``write(*args, staging, **kwargs)`` into a staging file beside ``path``, then published as ``path``: replacing
    a file only when ``replace`` (``--overwrite``); else one that another run wrote meanwhile is kept (an error)."""
    folder, name = osp.split(path)
    staging = osp.join(folder, f'.{os.getpid()}.{name}')  # the same extension: writers go by it
    try:
        write(*args, staging, **kwargs)
        if replace:
            os.replace(staging, path)
        else:
            try:
                publish_no_replace(staging, path)
            except FileExistsError:
                raise ExportError(f'{path} appeared while exporting (another run?): kept it; pass --overwrite to '
                                  'replace it') from None
    finally:
        if osp.exists(staging):
            os.remove(staging)


def _timed_write(entry, kind, folder, name, write, *args, replace=False, **kwargs):
    path = osp.join(folder, name)
    start = time.perf_counter()
    write_published(path, write, *args, replace=replace, **kwargs)
    entry.seconds[kind] = time.perf_counter() - start
    entry.files[kind] = name
    entry.sizes[kind] = osp.getsize(path)


def subnet_entry(net, spec, table=None):
    """The :class:`ExportedSubnet` of ``spec`` before anything is written (``table``: ``net.subnet_table()``)."""
    table = net.subnet_table(REFERENCE_LQ_SIZE) if table is None else table
    _, width, depth, params, gflops, percent = table[spec.index]
    return ExportedSubnet(spec.index, spec.name, width, depth, params, gflops, percent,
                          net.plain_network_options(spec.width, spec.depth))


def write_subnet_weights(net, spec, entry, folder, name, *, source=None, source_meta=None, replace=False):
    """Write subnet ``spec``'s weights as ``folder/name`` (``.pth``, or ``.safetensors`` with its ``'wbsr'``
    entry) and record the file in ``entry``."""
    meta = subnet_checkpoint_meta(net, entry, source_meta, source) if name.endswith('.safetensors') else None
    _timed_write(entry, 'checkpoint', folder, name, write_checkpoint, net, spec, meta=meta, replace=replace)


def _export_one(net, spec, table, folder, formats, check_lq, source, source_meta, replace):
    entry = subnet_entry(net, spec, table)
    names = formats.file_names(file_stem(net, spec))
    if formats.checkpoint:
        write_subnet_weights(net, spec, entry, folder, names['checkpoint'], source=source, source_meta=source_meta,
                             replace=replace)
    if formats.spandrel:
        _timed_write(entry, 'spandrel', folder, names['spandrel'], write_spandrel, net, spec, replace=replace)
    for precision in formats.onnx_precisions:
        kind = ONNX_KINDS[precision]
        metadata = onnx_metadata_props(subnet_record(net, entry, source), precision)
        _timed_write(entry, kind, folder, names[kind], write_onnx, net, spec, precision=precision, metadata=metadata,
                     replace=replace)
        if check_lq is not None:
            entry.onnx_errors[kind] = onnx_max_error(osp.join(folder, names[kind]), net, spec, check_lq)
    entry.onnx_max_error = max(entry.onnx_errors.values()) if entry.onnx_errors else None
    return entry


def export_subnets(net, subnets, folder, *, checkpoint=True, onnx=False, fp16=False, check_lq=None, index=False,
                   overwrite=False, formats=None, source=None, source_meta=None):
    """Write each subnet of ``subnets`` into ``folder``.

    Args:
        net (SupernetMixin): The supernet.
        subnets (list[int | str]): Subnets (indices or names, see :func:`resolve_subnet`).
        folder (str): Output folder (created; must be writable).
        checkpoint (bool): Write the BasicSR checkpoint ``STEM.pth``. Default: True.
        onnx (bool): Write ``STEM.onnx`` (``STEM_fp16.onnx`` with ``fp16``). Default: False.
        fp16 (bool): Half-precision ONNX. Default: False.
        check_lq (Tensor | None): LR input on which every ONNX file is compared with PyTorch
            (``onnx_errors``). Default: None (no check).
        index (bool): An index will be written too (:func:`write_index`): its files count as planned. Default:
            False.
        overwrite (bool): Replace files that exist; without it an existing file stops the export before anything
            is written. Default: False.
        formats (ExportFormats | None): The files to write; replaces ``checkpoint``, ``onnx`` and ``fp16``.
            Default: None (those three).
        source (str | None): The supernet checkpoint, recorded in the files' metadata. Default: None.
        source_meta (dict | None): Its ``'wbsr'`` entry (classes and patch size for ``.safetensors`` files).
            Default: None.

    Returns:
        list[ExportedSubnet]: One entry per subnet, in the order asked.
    """
    specs = [resolve_subnet(net, key) for key in subnets]
    if formats is None:
        formats = ExportFormats(checkpoint=checkpoint, onnx_precisions=(('fp16' if fp16 else 'fp32'), ) if onnx
                                else ())
    if formats.spandrel and spandrel_layout_problem(net):
        raise ExportError(spandrel_layout_problem(net))
    if formats.onnx_precisions:
        require_onnx(formats.onnx_precisions)
    prepare_output_folder(folder)
    check_planned_files(planned_files(net, specs, folder, formats, index=index), overwrite)
    table = net.subnet_table(REFERENCE_LQ_SIZE)
    return [_export_one(net, spec, table, folder, formats, check_lq, source, source_meta, overwrite)
            for spec in progress_bar(specs, desc='export', unit='subnet')]


def write_index(net, exported, folder, source=None):
    """Write ``index.json`` and ``index.md`` into ``folder`` and return their paths: ``exported``, and in the
    files column every exported file of each subnet that the folder holds (earlier exports' too)."""
    doc = {**index_header(net, source), 'subnets': [index_entry(e) for e in exported]}
    json_path, md_path = osp.join(folder, f'{INDEX_NAME}.json'), osp.join(folder, f'{INDEX_NAME}.md')
    atomic_write_text(json_path, json.dumps(doc, indent=2) + '\n')
    files = [', '.join(name for name in every_file_name(file_stem(net, s)) if osp.isfile(osp.join(folder, name)))
             for s in net.subnets]
    head = f'Exported from {source}\n\n' if source else ''
    atomic_write_text(md_path, head + format_subnet_table(net, extra_columns={'files': files}) + '\n')
    return json_path, md_path
