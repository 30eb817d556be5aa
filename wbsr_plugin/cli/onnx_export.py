"""Subnets as ONNX models: float32, float16, or float16 weights with float32 input and output; each with the
package's metadata in ``metadata_props`` (:mod:`.export_metadata`).

Every model has input ``lq`` (n, c, h, w) in [0, 1] RGB and output ``sr`` (n, c, h * scale, w * scale), with a
dynamic batch, height and width (opset 17). The precisions:

* ``fp32``: float32 throughout.
* ``fp16``: the network in half precision, input and output float16 too.
* ``fp16-weights``: float16 weights and arithmetic, float32 input and output: onnxconverter-common's
  ``convert_float_to_float16(keep_io_types=True)`` turns the float32 model to half precision and casts at the
  edges, so callers feed and read float32 as with ``fp32``, at half the file size.

Needs the ``export`` extra (``pip install -e ".[export]"``: onnx, onnxruntime, onnxconverter-common).
"""

import torch

from wbsr_plugin.inference.runtimes import ONNX_INPUT, ONNX_OPSET, ONNX_OUTPUT, export_onnx
from wbsr_runtime.files import atomic_path

PRECISIONS = ('fp32', 'fp16', 'fp16-weights')
FILE_SUFFIXES = {'fp32': '.onnx', 'fp16': '_fp16.onnx', 'fp16-weights': '_fp16w.onnx'}
INSTALL_HINT = 'pip install -e ".[export]" (or pip install onnx onnxruntime onnxconverter-common)'


def require_onnx(precisions=('fp32', )):
    """Import what writing and checking ``precisions`` needs, or raise ImportError saying how to install it."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        if 'fp16-weights' in precisions:
            import onnxconverter_common  # noqa: F401
    except ImportError as err:
        raise ImportError(f'ONNX export needs onnx, onnxruntime and, for fp16 weights, onnxconverter-common ({err}); '
                          f'install them with {INSTALL_HINT}.') from None


def check_precision(precision):
    """A ValueError unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f'unknown ONNX precision {precision!r}; expected one of {PRECISIONS}.')


def set_metadata(model, metadata):
    """Replace the ``metadata_props`` of ONNX ``model`` with ``metadata`` ({key: string})."""
    del model.metadata_props[:]
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)


def read_metadata(path):
    """``metadata_props`` of the ONNX file ``path`` as a dict."""
    import onnx
    return {entry.key: entry.value for entry in onnx.load(path, load_external_data=False).metadata_props}


def write_onnx(net, spec, path, *, fp16=False, precision=None, metadata=None, opset=ONNX_OPSET):
    """Write subnet ``spec`` as ONNX with dynamic batch, height and width (atomically).

    Args:
        net (SupernetMixin): The supernet.
        spec (Subnet): The subnet.
        path (str): Output ``.onnx`` file.
        fp16 (bool): Same as ``precision='fp16'``. Default: False.
        precision (str | None): 'fp32', 'fp16' or 'fp16-weights' (see the module docstring). Default: None
            ('fp16' with ``fp16``, else 'fp32').
        metadata (dict[str, str] | None): ``metadata_props``. Default: None (none).
        opset (int): ONNX opset. Default: 17.
    """
    precision = precision or ('fp16' if fp16 else 'fp32')
    check_precision(precision)
    require_onnx((precision, ))
    import onnx
    with atomic_path(path) as tmp:
        export_onnx(net.extract_subnet(spec.index), tmp, net.conv_first.in_channels, half=precision == 'fp16',
                    opset=opset)
        model = onnx.load(tmp)
        if precision == 'fp16-weights':
            from onnxconverter_common.float16 import convert_float_to_float16
            model = convert_float_to_float16(model, keep_io_types=True)
        set_metadata(model, metadata or {})
        onnx.save(model, tmp)
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
        raise ValueError(f'{path}: ONNX output shape {tuple(result.shape)}, PyTorch {tuple(reference.shape)}.')
    return (result - reference).abs().max().item()
