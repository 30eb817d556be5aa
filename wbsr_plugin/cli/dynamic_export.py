"""``export --dynamic``: a whole supernet for dynamic inference without torch (:mod:`wbsr_runtime.manifest`).

Every subnet is written as ONNX (fp32, dynamic batch and size) and checked against PyTorch with ONNX Runtime.
``manifest.json`` holds the architecture, the subnets' FLOPs, the checkpoint's ``'wbsr'`` entry (thresholds,
class errors with their counts, patch size), the tiling defaults, and the cost tables of this machine that the
torch engine has measured for OpenVINO and ONNX Runtime (``infer --runtime R --plan-by time`` measures one).
The folder is built under a temporary name beside ``-o`` and renamed into place, so it is complete or absent; an
existing ``-o`` stops the export before anything is written unless ``--overwrite`` (then the old folder is
replaced at once, after the new one is complete).
"""
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from os import path as osp

import torch

from wbsr_plugin.inference.cost_model import cached_cost_table, cost_key
from wbsr_plugin.inference.runtimes import candidate_runtimes
from wbsr_runtime.engine import DEFAULT_MAX_BATCH_PIXELS
from wbsr_runtime.files import atomic_write_text, default_mode
from wbsr_runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST, check_finite_json, manifest_entry
from wbsr_runtime.tile_geometry import DEFAULT_OVERLAP, DEFAULT_TRIM

from .export_files import ExportError
from .export_metadata import package_version
from .onnx_export import onnx_max_error, require_onnx, write_onnx

ONNX_TOLERANCE = 1e-4  # largest |ONNX Runtime - PyTorch| accepted on the check input


def check_dynamic_output(folder, overwrite):
    """Raise :class:`ExportError` when ``-o`` cannot take the export (before anything is computed)."""
    if osp.exists(folder) and not overwrite:
        raise ExportError(f'-o: {folder} exists; choose another name or pass --overwrite to replace it')
    if osp.exists(folder) and not osp.isdir(folder):
        raise ExportError(f'-o: {folder} is a file; --dynamic writes a folder')


def known_cost_tables(net):
    """This machine's cached cost tables of ``net`` in OpenVINO and ONNX Runtime (at torch's thread count), as
    dicts: what the torch-free runtime plans by time with."""
    found = []
    for runtime in candidate_runtimes('cpu'):
        if runtime.name != 'torch':
            table = cached_cost_table(cost_key(net, 'cpu', torch.float32, True, runtime))
            if table is not None:
                found.append(asdict(table))
    return found


def manifest_of(net, meta, files, source):
    """The manifest (a dict) of ``net`` with its subnets' ONNX ``files`` (relative paths, cost order)."""
    subnets = [manifest_entry(spec.name, spec.width, spec.depth, file,
                              lambda h, w, index=spec.index: net.flops(h, w, subnet=index))
               for spec, file in zip(net.subnets, files)]
    return {'format': FORMAT, 'format_version': FORMAT_VERSION, 'package': f'wbsr_plugin {package_version()}',
            'source': source, 'arch': type(net).__name__, 'scale': net.upscale,
            'in_channels': net.conv_first.in_channels, 'subnets': subnets,
            'wbsr': check_finite_json(dict(meta or {})), 'planning': {
                'overlap': DEFAULT_OVERLAP, 'trim': DEFAULT_TRIM, 'max_batch_pixels': DEFAULT_MAX_BATCH_PIXELS},
            'cost_tables': known_cost_tables(net)}


def publish_folder(staging, folder, overwrite):
    """Rename the complete folder ``staging`` to ``folder``; an existing ``folder`` is refused, or with
    ``overwrite`` replaced (moved aside, then removed)."""
    if not osp.exists(folder):
        try:
            os.rename(staging, folder)  # an empty folder made meanwhile is replaced; one with files is not
            return
        except OSError:
            if not overwrite:
                raise ExportError(f'-o: {folder} appeared while the export ran; it is kept') from None
    aside = tempfile.mkdtemp(dir=osp.dirname(folder), prefix=f'.{osp.basename(folder)}.old-')
    os.rename(folder, osp.join(aside, 'old'))
    os.rename(staging, folder)
    shutil.rmtree(aside, ignore_errors=True)


def export_dynamic(net, meta, folder, *, overwrite=False, source=None, check_lq=None):
    """Write ``folder``: every subnet of ``net`` as ONNX and ``manifest.json``; returns the largest ONNX check
    error (None without ``check_lq``)."""
    require_onnx()
    folder = osp.abspath(folder)
    check_dynamic_output(folder, overwrite)
    os.makedirs(osp.dirname(folder), exist_ok=True)
    staging = tempfile.mkdtemp(dir=osp.dirname(folder), prefix=f'.{osp.basename(folder)}.')
    try:
        files, worst = [], None
        for spec in net.subnets:
            file = f'subnets/{spec.name}.onnx'
            os.makedirs(osp.join(staging, 'subnets'), exist_ok=True)
            write_onnx(net, spec, osp.join(staging, file), metadata={'wbsr_subnet': spec.name})
            if check_lq is not None:
                error = onnx_max_error(osp.join(staging, file), net, spec, check_lq)
                if not error <= ONNX_TOLERANCE:
                    raise ExportError(f'{spec.name}: ONNX Runtime differs from PyTorch by {error:.2e}')
                worst = error if worst is None else max(worst, error)
            files.append(file)
        text = json.dumps(manifest_of(net, meta, files, source), indent=1, allow_nan=False)
        atomic_write_text(osp.join(staging, MANIFEST), text + '\n')
        os.chmod(staging, default_mode(0o777))  # mkdtemp's folder is private
        publish_folder(staging, folder, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return worst
