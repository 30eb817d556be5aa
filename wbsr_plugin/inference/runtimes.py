"""What runs the subnets: PyTorch, OpenVINO or ONNX Runtime, in fp32 or bf16.

The engine's planner, stitching and report stay the same whatever the runtime; a runtime only turns a subnet
(a stand-alone network, ``SupernetMixin.extract_subnet``) into a callable from an LR batch (n, 3, h, w) float32
tensor to its SR batch (float32, on the CPU).

* ``torch``: the module itself (fp32), or under CPU autocast to bfloat16 (``bf16``), the image kept in float32 where
  it enters and leaves (:func:`with_float32_ends`).
* ``openvino``: the subnet exported to ONNX (the project's exporter, opset 17, dynamic batch/height/width),
  converted to OpenVINO IR once per weights and kept in the cache folder (``ir_<key>.xml``/``.bin``, written
  atomically, safe to delete), compiled for the CPU with ``INFERENCE_PRECISION_HINT`` f32 or bf16 (OpenVINO's
  own compiled-blob cache lives beside it). Inputs and outputs stay float32.
* ``onnxruntime``: the same ONNX file, run by ONNX Runtime's CPU provider (fp32 only).

In bf16, SRResNet's subnets read the image in two bf16 parts and leave out their last step, adding the bilinear image,
which runs after them in float32 (:class:`Float32EndsSRResNet`).

OpenVINO and ONNX Runtime are optional (``pip install -e ".[runtimes]"``); asking for one that is not installed
says how to install it. On CUDA, torch is the runtime.
"""
import contextlib
import copy
import hashlib
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from os import path as osp

import torch

from wbsr_runtime.sessions import (
    RuntimeUnavailable,
    check_session_runtime,
    cpu_has_bf16,
    onnxruntime_runner,
    openvino_runner,
)

RUNTIMES = ('torch', 'openvino', 'onnxruntime')
PRECISIONS = ('fp32', 'bf16')
INSTALL = {'openvino': 'pip install openvino (or pip install -e ".[runtimes]")',
           'onnxruntime': 'pip install onnxruntime (or pip install -e ".[runtimes]")'}
ONNX_OPSET = 17
ONNX_INPUT, ONNX_OUTPUT = 'lq', 'sr'


@dataclass(frozen=True)
class Runtime:
    """A runtime and the precision it computes in.

    Attributes:
        name (str): One of :data:`RUNTIMES`.
        precision (str): One of :data:`PRECISIONS`.
    """
    name: str = 'torch'
    precision: str = 'fp32'

    def __post_init__(self):
        if self.name not in RUNTIMES:
            raise RuntimeUnavailable(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.name!r}")
        if self.precision not in PRECISIONS:
            raise RuntimeUnavailable(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def __str__(self):
        return f'{self.name} {self.precision}'

    @property
    def is_default(self):
        return self == TORCH_FP32


TORCH_FP32 = Runtime()


def check_runtime(runtime, device):
    """Raise :class:`RuntimeUnavailable` (one line) when ``runtime`` cannot run on ``device``."""
    device = torch.device(device)
    if device.type != 'cpu' and runtime != TORCH_FP32:
        raise RuntimeUnavailable(f'runtime {runtime} runs on the CPU only; on {device.type} the runtime is torch '
                                 '(drop --runtime/--precision, or use --device cpu)')
    if runtime.name == 'torch':
        if runtime.precision == 'bf16' and not cpu_has_bf16():
            raise RuntimeUnavailable('this CPU has no native bfloat16 (AVX-512 BF16 or AMX): use --precision fp32')
        return
    check_session_runtime(runtime.name, runtime.precision, INSTALL)


def candidate_runtimes(device):
    """Every runtime and precision that can run on ``device`` here, torch fp32 first."""
    if torch.device(device).type != 'cpu':
        return [TORCH_FP32]
    found = []
    for name in RUNTIMES:
        for precision in PRECISIONS:
            runtime = Runtime(name, precision)
            try:
                check_runtime(runtime, device)
            except RuntimeUnavailable:
                continue
            found.append(runtime)
    return found


def runtime_versions(runtime):
    """The versions a compiled model depends on (part of the cache keys)."""
    versions = {'torch': torch.__version__}
    if runtime.name != 'torch':
        versions[runtime.name] = __import__(runtime.name).__version__
        if runtime.precision == 'bf16':
            versions['bf16'] = "SRResNet's image in two bf16 parts, its bilinear image outside"  # Float32EndsSRResNet
    elif runtime.precision == 'bf16':
        versions['bf16'] = 'autocast, conv_first in float32, conv_last out float32'  # with_float32_ends
    return versions


def weights_digest(module):
    """A digest of a module's weights and their shapes (what a converted model depends on)."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().to('cpu', torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def export_onnx(module, path, in_channels=3, half=False, opset=ONNX_OPSET):
    """Write ``module`` (a plain SR network) as ONNX (``lq`` in, ``sr`` out) with dynamic batch, height and width,
    atomically: fp32, or fp16 throughout with ``half``."""
    module = module.to('cpu', torch.float16 if half else torch.float32).eval()
    example = torch.rand(1, in_channels, 16, 16, dtype=torch.float16 if half else torch.float32)
    tmp = f'{path}.{os.getpid()}.tmp'
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', category=DeprecationWarning)  # the TorchScript exporter's notice
            torch.onnx.export(module, (example, ), tmp, dynamo=False, opset_version=opset, input_names=[ONNX_INPUT],
                              output_names=[ONNX_OUTPUT],
                              dynamic_axes={ONNX_INPUT: {0: 'batch', 2: 'height', 3: 'width'},
                                            ONNX_OUTPUT: {0: 'batch', 2: 'sr_height', 3: 'sr_width'}})
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


class CompiledSubnets:
    """Subnets compiled for one runtime, cached on disk under a key of their weights.

    Args:
        runtime (Runtime): What runs them.
        folder (str): The cache folder (converted models and, for OpenVINO, its compiled blobs).
        threads (int | None): CPU threads of the runtime; None: torch's.
    """

    def __init__(self, runtime, folder, threads=None):
        self.runtime = runtime
        self.folder = folder
        self.threads = threads or torch.get_num_threads()
        self.compile_seconds = 0.
        self._core = None

    def compile(self, module, in_channels=3):
        """A callable running ``module`` (a plain SR network on the CPU) in this runtime: float32 tensor in, out."""
        start = time.perf_counter()
        if self.runtime.name == 'torch':
            run = _torch_runner(module, self.runtime.precision)
        else:
            run = self._compile_external(module, in_channels)
        self.compile_seconds += time.perf_counter() - start
        return run

    def _model_file(self, module, in_channels, suffix):
        """``(path, key)`` of the converted model of ``module`` (made when missing, atomically)."""
        key = hashlib.sha1(repr((weights_digest(module), runtime_versions(self.runtime), ONNX_OPSET)).encode()
                           ).hexdigest()[:20]
        os.makedirs(self.folder, exist_ok=True)
        onnx_path = osp.join(self.folder, f'subnet_{key}.onnx')
        if not osp.isfile(onnx_path):
            export_onnx(module, onnx_path, in_channels)
        if suffix == '.onnx':
            return onnx_path
        xml = osp.join(self.folder, f'subnet_{key}.xml')
        if not osp.isfile(xml) or not osp.isfile(xml[:-4] + '.bin'):
            import openvino as ov
            staging = tempfile.mkdtemp(dir=self.folder, prefix=f'.ir_{os.getpid()}_')
            try:
                ov.save_model(ov.convert_model(onnx_path), osp.join(staging, 'model.xml'), compress_to_fp16=False)
                os.replace(osp.join(staging, 'model.bin'), xml[:-4] + '.bin')  # .bin first: .xml marks it complete
                os.replace(osp.join(staging, 'model.xml'), xml)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return xml

    def _compile_external(self, module, in_channels):
        skip = None
        if self.runtime.precision == 'bf16' and Float32EndsSRResNet.applies(module):
            skip, module = module.upscale, Float32EndsSRResNet(module)
            in_channels *= 2
        if self.runtime.name == 'onnxruntime':
            run = onnxruntime_runner(self._model_file(module, in_channels, '.onnx'), self.threads)
        else:
            if self._core is None:
                import openvino as ov
                self._core = ov.Core()
                self._core.set_property({'CACHE_DIR': osp.join(self.folder, 'openvino_blobs')})
            run = openvino_runner(self._core, self._model_file(module, in_channels, '.xml'), self.runtime.precision,
                                  self.threads)

        def run_external(batch):
            batch = batch.detach().to('cpu', torch.float32)
            out = torch.from_numpy(run((batch if skip is None else Float32EndsSRResNet.split(batch)).numpy()))
            if skip is not None:  # channels-last: twice as fast on one thread, the same values
                out += torch.nn.functional.interpolate(batch.contiguous(memory_format=torch.channels_last),
                                                       scale_factor=skip, mode='bilinear', align_corners=False)
            return out

        return run_external


TORCH_GRAIN_SIZE = 32768  # torch's CPU operations on fewer elements run on the calling thread alone


@contextlib.contextmanager
def torch_threads_beside(runtime, elements=None):
    """Run torch single-threaded inside the block when ``runtime`` is not torch: its idle OpenMP threads keep
    spinning after each parallel operation, which takes the cores from OpenVINO's or ONNX Runtime's threads (the
    engine's own torch work between subnet calls is small). No change for torch runtimes, nor when the block's
    largest tensor has ``elements`` below torch's grain size (tiny images: no operation would use the threads, and
    switching them costs 0.06 ms)."""
    if (runtime is None or runtime.name == 'torch' or torch.get_num_threads() == 1
            or (elements is not None and elements < TORCH_GRAIN_SIZE)):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class Float32EndsSRResNet(torch.nn.Module):
    """SRResNet (BasicSR's ``MSRResNet``) as a bf16 runtime runs it, the image kept in float32 where it enters and
    leaves.

    * **Out:** the network without its last step; the bilinear image is added to its output outside, in float32.
      Inside a bf16 runtime that sum is rounded to 8 bits of mantissa, 0.2 grey levels RMS around 0.5. The residual
      the network makes is small, so its own rounding is small too.
    * **In:** the image in two bf16 parts, ``hi`` (the image rounded to bf16) and ``lo`` (what that rounding left
      out), 6 channels (:meth:`split`). The first convolution reads ``[hi, lo, hi]`` with the weights
      ``[w_hi, w_hi, w_lo]`` (``w_hi`` the weights rounded to bf16): ``w x`` but for ``w_lo lo``. bf16
      convolutions sum their products in float32, so what rounding remains is that of ``lo`` and ``w_lo``, 2^-16
      of ``x`` and ``w`` instead of 2^-8.

    On held-out photos at 43 dB OpenVINO bf16 lost 0.058 dB with the whole network inside, 0.0075 dB (worst photo
    0.016) with the image added outside, and 0.0011 dB (worst 0.0026) with its input in two parts as well
    (docs/RESULTS.md). The first convolution reads 9 channels instead of 3: the plain network takes 1.5-2 % more.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net
        weight = net.conv_first.weight.detach()
        weight_hi = weight.to(torch.bfloat16).float()
        self.conv_first = torch.nn.Conv2d(3 * net.conv_first.in_channels, net.conv_first.out_channels, 3, 1, 1)
        self.conv_first.weight.data = torch.cat([weight_hi, weight_hi, weight - weight_hi], 1)
        self.conv_first.bias.data = net.conv_first.bias.detach().clone()

    @staticmethod
    def applies(module):
        from basicsr.archs.srresnet_arch import MSRResNet
        return type(module) is MSRResNet and module.upscale in (2, 3, 4)

    @staticmethod
    def split(x):
        """``x`` (n, c, h, w) float32 as ``[hi, lo]`` (n, 2c, h, w): ``x`` rounded to bf16, and the rest."""
        hi = x.to(torch.bfloat16).float()
        return torch.cat([hi, x - hi], 1)

    def forward(self, parts):  # MSRResNet.forward up to its last line, on the split image
        net = self.net
        hi, lo = parts.chunk(2, 1)
        out = net.body(net.lrelu(self.conv_first(torch.cat([hi, lo, hi], 1))))
        out = net.lrelu(net.pixel_shuffle(net.upconv1(out)))
        if net.upscale == 4:
            out = net.lrelu(net.pixel_shuffle(net.upconv2(out)))
        return net.conv_last(net.lrelu(net.conv_hr(out)))


class Float32Layer(torch.nn.Module):
    """A layer that computes in float32 inside bf16 autocast."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            return self.layer(x.float())


class Float32Output(torch.nn.Module):
    """A layer whose output is cast to float32 (it computes as autocast says)."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x).float()


def with_float32_ends(module):
    """``module`` (its weights shared) with its first convolution (``conv_first``) computing in float32 and its last
    (``conv_last``) giving float32, for bf16 autocast.

    Both carry the image: the first reads it, and what follows the last (SRResNet's residual added to the bilinear
    image, RCAN's and EDSR's mean added back) would otherwise round the output to 8 bits of mantissa, 0.2 grey
    levels RMS around 0.5. On held-out photos at 43 dB that cost 0.02-0.06 dB; the first convolution has 3 input
    channels, so neither change costs measurable time.
    """
    wrappers = {name: wrap for name, wrap in (('conv_first', Float32Layer), ('conv_last', Float32Output))
                if isinstance(getattr(module, name, None), torch.nn.Conv2d)}
    if not wrappers:
        return module
    mixed = copy.copy(module)
    mixed._modules = dict(module._modules)  # a module dict of its own: the original keeps its layers
    for name, wrap in wrappers.items():
        mixed._modules[name] = wrap(module._modules[name])
    return mixed


def _torch_runner(module, precision):
    if precision == 'fp32':
        return module
    module = with_float32_ends(module)

    def run_bf16(batch):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return module(batch).float()

    return run_bf16
