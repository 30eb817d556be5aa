"""Subnets as callables on numpy arrays: an ONNX file run by ONNX Runtime or OpenVINO on the CPU.

Each callable takes an LR batch (n, c, h, w) float32 array and returns its SR batch (float32). ONNX Runtime runs
fp32; OpenVINO runs fp32 or bf16 (``INFERENCE_PRECISION_HINT``, on CPUs with native bfloat16). Every subnet gets
its own session with ``threads`` CPU threads, and ONNX Runtime's threads do not spin between calls (a spinning
pool of one session slows the next). Callables of the same file, precision and thread count share one compiled
model while any of them lives (engines of the same weights hold one copy of them, and the CPU caches hold
one copy too). The torch engine's OpenVINO and ONNX Runtime runtimes are built from these.
"""
import os
import weakref

import numpy as np

RUNTIMES = ('onnxruntime', 'openvino')
PRECISIONS = ('fp32', 'bf16')
INSTALL = {'openvino': 'pip install openvino', 'onnxruntime': 'pip install onnxruntime'}


class RuntimeUnavailable(ValueError):
    """A runtime or precision that cannot run here; the message says why and what to do."""


def cpu_has_bf16():
    """True when the CPU computes bfloat16 natively (AVX-512 BF16 or AMX)."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line for line in f if line.startswith('flags')), '')
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def installed(name):
    """True when module ``name`` can be imported."""
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def check_session_runtime(name, precision, install=INSTALL):
    """Raise :class:`RuntimeUnavailable` (one line) when runtime ``name`` cannot run ``precision`` here."""
    if name not in RUNTIMES:
        raise RuntimeUnavailable(f"runtime must be one of {', '.join(RUNTIMES)}, got {name!r}")
    if precision not in PRECISIONS:
        raise RuntimeUnavailable(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not installed(name):
        raise RuntimeUnavailable(f'runtime {name} is not installed: {install[name]}')
    if name == 'onnxruntime' and precision != 'fp32':
        raise RuntimeUnavailable('onnxruntime runs fp32 only here; use --runtime openvino for bf16')
    if precision == 'bf16' and not cpu_has_bf16():
        raise RuntimeUnavailable('this CPU has no native bfloat16 (AVX-512 BF16 or AMX): use --precision fp32')


_COMPILED = weakref.WeakValueDictionary()  # compiled models in use, by file (and its version), precision, threads


def shared_compiled(runtime, path, precision, threads, compile_model):
    """The compiled model of ``path`` in ``runtime``, ``precision`` and ``threads``: the one in use if any (the
    file unchanged since), else ``compile_model()``."""
    stat = os.stat(path)
    key = (runtime, os.path.abspath(path), stat.st_mtime_ns, stat.st_size, precision, threads)
    compiled = _COMPILED.get(key)
    if compiled is None:
        compiled = compile_model()
        _COMPILED[key] = compiled
    return compiled


def onnxruntime_runner(onnx_path, threads):
    """``run(batch) -> SR batch`` of the ONNX file in ONNX Runtime's CPU provider."""
    import onnxruntime

    def compile_model():
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry('session.intra_op.allow_spinning', '0')
        return onnxruntime.InferenceSession(onnx_path, options, providers=['CPUExecutionProvider'])

    session = shared_compiled('onnxruntime', onnx_path, 'fp32', threads, compile_model)  # run() is thread-safe
    name = session.get_inputs()[0].name

    def run_onnxruntime(batch):
        return session.run(None, {name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    return run_onnxruntime


def openvino_runner(core, model_path, precision, threads):
    """``run(batch) -> SR batch`` of an ONNX file or OpenVINO IR compiled by ``core`` (an ``openvino.Core``) for
    the CPU in ``precision``."""
    config = {'INFERENCE_PRECISION_HINT': 'bf16' if precision == 'bf16' else 'f32',
              'INFERENCE_NUM_THREADS': threads, 'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1}
    compiled = shared_compiled('openvino', model_path, precision, threads,
                               lambda: core.compile_model(model_path, 'CPU', config))
    request = compiled.create_infer_request()  # a request of its own: callables may run in different threads

    def run_openvino(batch):
        request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        return request.get_output_tensor(0).data.copy()

    run_openvino.compiled = compiled  # shared while this callable lives
    return run_openvino
