"""What an exported file says about itself: one record per subnet, shared by ``index.json``, the ``'wbsr'`` header
of ``.safetensors`` files and the ``metadata_props`` of ONNX models.

* :func:`subnet_record`: the subnet's entry of ``index.json`` plus the supernet's fields (architecture, scale,
  widths, depths, source, package version).
* :func:`subnet_checkpoint_meta`: the ``'wbsr'`` entry of a subnet's ``.safetensors`` file. It describes the
  subnet as a supernet with one width and one depth, so ``infer --model`` and ``subnets --model`` read it as they
  read a supernet; its tensors are the plain network's, which BasicSR loads strictly.
* :func:`onnx_metadata_props`: the record as ONNX ``metadata_props`` (string values; lists and dicts as JSON).
"""
import json
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version

from wbsr_plugin.archs.supernet_util import REFERENCE_LQ_SIZE
from wbsr_plugin.inference.checkpoint import DIFFICULTY_NAME, META_VERSION
from wbsr_runtime.class_thresholds import DEFAULT_NUM_CLASSES

PACKAGE = 'wbsr_plugin'
DEFAULT_PATCH_SIZE = 64
INDEX_FIELDS_LEFT_OUT = ('seconds', )  # how long a write took is no property of the file
RECORD_FIELDS_LEFT_OUT = ('files', 'sizes', 'onnx_errors', 'onnx_max_error')  # the folder's, not the network's


def package_version():
    """The installed version of the package ('unknown' when it runs from a source tree)."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return 'unknown'


def index_header(net, source):
    """The supernet's fields of ``index.json``."""
    return {'supernet': type(net).__name__, 'upscale': net.upscale, 'source': source,
            'flops_lq_size': REFERENCE_LQ_SIZE}


def index_entry(entry):
    """A subnet's entry of ``index.json``: the :class:`~.export_files.ExportedSubnet` without timings."""
    return {key: value for key, value in asdict(entry).items() if key not in INDEX_FIELDS_LEFT_OUT}


def subnet_record(net, entry, source=None):
    """Everything an exported file of subnet ``entry`` carries about itself.

    Args:
        net (SupernetMixin): The supernet.
        entry (ExportedSubnet): The subnet's export entry (files written so far included).
        source (str | None): The checkpoint it was exported from. Default: None.

    Returns:
        dict: ``architecture`` (the plain network), ``scale``, ``subnet`` (its name), ``widths`` and ``depths`` (the
        supernet's), ``wbsr_plugin_version``, and the fields of ``index.json``: its header's, and the subnet's but
        those of the output folder (files, sizes, ONNX errors).
    """
    return {'architecture': net.PLAIN_TYPE, 'scale': net.upscale, 'subnet': entry.name,
            'widths': list(net.widths), 'depths': list(net.depths), 'wbsr_plugin_version': package_version(),
            **index_header(net, source),
            **{key: value for key, value in index_entry(entry).items() if key not in RECORD_FIELDS_LEFT_OUT}}


def subnet_checkpoint_meta(net, entry, source_meta=None, source=None):
    """The ``'wbsr'`` entry of subnet ``entry`` exported as a ``.safetensors`` file.

    Args:
        net (SupernetMixin): The supernet.
        entry (ExportedSubnet): The subnet.
        source_meta (dict | None): The supernet checkpoint's ``'wbsr'`` entry (its number of classes and patch
            size are kept). Default: None.
        source (str | None): The supernet checkpoint's path. Default: None.

    Returns:
        dict: A checkpoint ``'wbsr'`` entry (``inference/checkpoint.py``) whose ``network_g`` is the supernet with
        ``num_feat`` = ``widths`` = [width] and ``num_block`` = ``depths`` = [depth]; no thresholds (one subnet
        takes every patch); ``'subnet'``: :func:`subnet_record`.
    """
    source_meta = source_meta or {}
    network_g = dict(net.network_options(), num_feat=entry.width, num_block=entry.depth, widths=[entry.width],
                     depths=[entry.depth])
    return {'version': META_VERSION, 'network_g': network_g, 'thresholds': None,
            'num_classes': source_meta.get('num_classes') or DEFAULT_NUM_CLASSES,
            'patch_size': source_meta.get('patch_size') or DEFAULT_PATCH_SIZE, 'difficulty': DIFFICULTY_NAME,
            'subnet': subnet_record(net, entry, source)}


def onnx_metadata_props(record, precision):
    """``{key: string}`` for ONNX ``metadata_props``: ``record`` (strings as they are, everything else as JSON),
    the input and output names and range, and ``precision`` ('fp32', 'fp16' or 'fp16-weights')."""
    props = {key: value if isinstance(value, str) else json.dumps(value) for key, value in record.items()
             if value is not None}
    in_ch, out_ch = record['network_g'].get('num_in_ch', 3), record['network_g'].get('num_out_ch', 3)
    props.update({'precision': precision, 'input': f'lq: (n, {in_ch}, h, w), RGB in [0, 1]',
                  'output': f"sr: (n, {out_ch}, {record['scale']}h, {record['scale']}w), RGB, about [0, 1] "
                  '(not clamped)'})
    return props
