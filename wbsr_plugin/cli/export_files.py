"""Export the subnets of a WBSR supernet as stand-alone networks for other tools.

Each subnet is exactly the supernet's plain BasicSR network (its ``PLAIN_TYPE``, such as
``MSRResNet(num_feat=w, num_block=d)``) cut out of it (``SupernetMixin.extract_subnet``):

* a BasicSR checkpoint ``{'params': state_dict}`` that the plain network loads with
  ``strict=True`` (BasicSR's ``test.py``, Real-ESRGAN-style scripts);
* an ONNX model (float32, or float16 on request) with a dynamic batch, height and width,
  input ``lq`` (n, 3, h, w) in [0, 1] RGB and output ``sr`` (n, 3, h * scale, w * scale).
  Needs the ``export`` extra (``pip install -e ".[export]"``: onnx, onnxruntime).

Every file is written to a temporary name and renamed, so an interrupted export never leaves
a half-written file.
"""
import json
import time
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from os import path as osp

import torch

from wbsr_plugin.archs.supernet_util import REFERENCE_LQ_SIZE
from wbsr_plugin.cli.model_card import format_subnet_table
from wbsr_plugin.cli.output_folders import OutputFolderError, check_output_folder
from wbsr_plugin.utils.files import atomic_path, atomic_torch_save, atomic_write_text

ONNX_OPSET = 17
ONNX_INPUT, ONNX_OUTPUT = 'lq', 'sr'
INDEX_NAME = 'index'


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
        files (dict[str, str]): Format ('checkpoint', 'onnx') -> file name in the output folder.
        sizes (dict[str, int]): Format -> file size in bytes.
        seconds (dict[str, float]): Format -> seconds spent writing it.
        onnx_max_error (float | None): Largest |ONNX - PyTorch| on the check input, if checked.
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


def planned_files(net, specs, folder, *, checkpoint, onnx, fp16, index):
    """Every path an export would write: each subnet's files, and the index with ``index``."""
    names = []
    for spec in specs:
        stem = file_stem(net, spec)
        names += [f'{stem}.pth'] if checkpoint else []
        names += [f'{stem}_fp16.onnx' if fp16 else f'{stem}.onnx'] if onnx else []
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


def write_checkpoint(net, spec, path):
    """Write subnet ``spec`` as a BasicSR checkpoint ``{'params': ...}`` (atomically)."""
    atomic_torch_save({'params': subnet_state_dict(net, spec)}, path)


def require_onnx():
    """Import onnx and onnxruntime, or raise :class:`ExportError` saying how to install them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        raise ExportError(f'ONNX export needs onnx and onnxruntime ({err}); install them with '
                          'pip install -e ".[export]" (or pip install onnx onnxruntime).') from None


def write_onnx(net, spec, path, *, fp16=False, opset=ONNX_OPSET):
    """Write subnet ``spec`` as ONNX with dynamic batch, height and width (atomically).

    Args:
        net (SupernetMixin): The supernet.
        spec (Subnet): The subnet.
        path (str): Output ``.onnx`` file.
        fp16 (bool): Half-precision weights, input and output. Default: False (float32).
        opset (int): ONNX opset. Default: 17.
    """
    require_onnx()
    import onnx
    module = net.extract_subnet(spec.index).to('cpu', torch.float32).eval()
    example = torch.rand(1, net.conv_first.in_channels, 16, 16)
    if fp16:
        module, example = module.half(), example.half()
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings('ignore', category=DeprecationWarning)  # the TorchScript exporter's notice
        torch.onnx.export(
            module, (example, ), tmp, dynamo=False, opset_version=opset, input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT], dynamic_axes={
                ONNX_INPUT: {0: 'batch', 2: 'height', 3: 'width'},
                ONNX_OUTPUT: {0: 'batch', 2: 'sr_height', 3: 'sr_width'}
            })
        onnx.checker.check_model(tmp)


def onnx_max_error(path, net, spec, lq):
    """Largest |ONNX Runtime - PyTorch| of subnet ``spec`` on ``lq`` (n, c, h, w) in [0, 1], on CPU."""
    require_onnx()
    import onnxruntime
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    expects_half = session.get_inputs()[0].type == 'tensor(float16)'
    lq = lq.detach().to('cpu', torch.float32)
    with torch.no_grad():
        reference = net.extract_subnet(spec.index).to('cpu', torch.float32)(lq)
    feed = lq.half() if expects_half else lq
    result = torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: feed.numpy()})[0]).float()
    if result.shape != reference.shape:
        raise ExportError(f'{path}: ONNX output shape {tuple(result.shape)}, PyTorch {tuple(reference.shape)}.')
    return (result - reference).abs().max().item()


def file_stem(net, spec):
    """File name without extension: ``MSRResNet_x4_w64d16``."""
    return f'{net.PLAIN_TYPE}_x{net.upscale}_{spec.name}'


def _timed_write(entry, kind, folder, name, write, *args, **kwargs):
    path = osp.join(folder, name)
    start = time.perf_counter()
    write(*args, path, **kwargs)
    entry.seconds[kind] = time.perf_counter() - start
    entry.files[kind] = name
    entry.sizes[kind] = osp.getsize(path)


def export_subnets(net, subnets, folder, *, checkpoint=True, onnx=False, fp16=False, check_lq=None, index=False,
                   overwrite=False):
    """Write each subnet of ``subnets`` into ``folder``.

    Args:
        net (SupernetMixin): The supernet.
        subnets (list[int | str]): Subnets (indices or names, see :func:`resolve_subnet`).
        folder (str): Output folder (created; must be writable).
        checkpoint (bool): Write the BasicSR checkpoint ``STEM.pth``. Default: True.
        onnx (bool): Write ``STEM.onnx`` (``STEM_fp16.onnx`` with ``fp16``). Default: False.
        fp16 (bool): Half-precision ONNX. Default: False.
        check_lq (Tensor | None): LR input on which every ONNX file is compared with PyTorch
            (``onnx_max_error``). Default: None (no check).
        index (bool): An index will be written too (:func:`write_index`): its files count as planned. Default:
            False.
        overwrite (bool): Replace files that exist; without it an existing file stops the export before anything
            is written. Default: False.

    Returns:
        list[ExportedSubnet]: One entry per subnet, in the order asked.
    """
    specs = [resolve_subnet(net, key) for key in subnets]
    if not checkpoint and not onnx:
        raise ExportError('nothing to export: ask for the checkpoint, ONNX or both.')
    if onnx:
        require_onnx()
    prepare_output_folder(folder)
    check_planned_files(planned_files(net, specs, folder, checkpoint=checkpoint, onnx=onnx, fp16=fp16, index=index),
                        overwrite)
    table = net.subnet_table(REFERENCE_LQ_SIZE)
    exported = []
    for spec in specs:
        _, width, depth, params, gflops, percent = table[spec.index]
        entry = ExportedSubnet(spec.index, spec.name, width, depth, params, gflops, percent,
                               net.plain_network_options(spec.width, spec.depth))
        stem = file_stem(net, spec)
        if checkpoint:
            _timed_write(entry, 'checkpoint', folder, f'{stem}.pth', write_checkpoint, net, spec)
        if onnx:
            _timed_write(entry, 'onnx', folder, f'{stem}_fp16.onnx' if fp16 else f'{stem}.onnx', write_onnx, net,
                         spec, fp16=fp16)
        if onnx and check_lq is not None:
            entry.onnx_max_error = onnx_max_error(osp.join(folder, entry.files['onnx']), net, spec, check_lq)
        exported.append(entry)
    return exported


def write_index(net, exported, folder, source=None):
    """Write ``index.json`` and ``index.md`` into ``folder`` and return their paths: ``exported``, and in the
    files column every exported file of each subnet that the folder holds (earlier exports' too)."""
    records = [{k: v for k, v in asdict(e).items() if k != 'seconds'} for e in exported]
    doc = {'supernet': type(net).__name__, 'upscale': net.upscale, 'source': source,
           'flops_lq_size': REFERENCE_LQ_SIZE, 'subnets': records}
    json_path, md_path = osp.join(folder, f'{INDEX_NAME}.json'), osp.join(folder, f'{INDEX_NAME}.md')
    atomic_write_text(json_path, json.dumps(doc, indent=2) + '\n')
    files = [', '.join(name for name in (f'{file_stem(net, s)}.pth', f'{file_stem(net, s)}.onnx',
                                         f'{file_stem(net, s)}_fp16.onnx') if osp.isfile(osp.join(folder, name)))
             for s in net.subnets]
    head = f'Exported from {source}\n\n' if source else ''
    atomic_write_text(md_path, head + format_subnet_table(net, extra_columns={'files': files}) + '\n')
    return json_path, md_path
