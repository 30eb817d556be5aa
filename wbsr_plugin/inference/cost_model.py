"""Measured cost of a supernet's subnets on this device: what deciding by time predicts from.

Measured once per key (the device: the CPU's model and torch's thread count, or the CUDA card; the dtype; the
memory format; the torch version; the network's shape, never its weights), in a few seconds:

* every subnet on batches of LR patches at a few patch sides: seconds per forward call and per patch, from
  a line through one patch per call and a full batch;
* every subnet on the whole image: seconds per call and per LR pixel, from two image sizes;
* on CUDA, the allocator's peak memory of each measurement (None on CPU, where it is not measured).

Tables are kept in the user's cache directory (``$WBSR_CACHE_DIR``, else ``$XDG_CACHE_HOME/wbsr_plugin``, else
``~/.cache/wbsr_plugin``), one JSON file per key, written atomically; deleting them costs one new measurement.
Under torch.distributed, rank 0 measures while the other ranks wait, then read. Tests build a :class:`CostTable`
directly, so that nothing depends on the machine's speed.
"""
import hashlib
import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from os import path as osp

import torch

from wbsr_plugin.utils.files import atomic_write_text

from .subnet_cache import SubnetCache

COST_MODEL_VERSION = 1
PATCH_SIDES = (16, 32, 64)  # LR patch sides measured; others are interpolated by pixel count
PATCH_BATCH_PIXELS = 64 * 64 * 2  # LR pixels of the "full batch" of a patch measurement
WHOLE_SIDES = (32, 64)  # LR image sides of the whole-image measurements
REPEAT = 1


def cache_dir():
    """Where cost tables are kept (see the module docstring)."""
    if os.environ.get('WBSR_CACHE_DIR'):
        return os.environ['WBSR_CACHE_DIR']
    base = os.environ.get('XDG_CACHE_HOME') or osp.join(osp.expanduser('~'), '.cache')
    return osp.join(base, 'wbsr_plugin')


def device_name(device):
    """The device as the cost depends on it: the CUDA card, or the CPU's model and torch's thread count."""
    device = torch.device(device)
    if device.type == 'cuda':
        return f'cuda:{torch.cuda.get_device_name(device)}'
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            model = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), model)
    except OSError:
        pass
    return f'cpu:{model}:{torch.get_num_threads()} threads'


def cost_key(net, device, dtype, channels_last):
    """What a cost table depends on, as a dict."""
    return {'version': COST_MODEL_VERSION, 'device': device_name(device), 'dtype': str(dtype).replace('torch.', ''),
            'channels_last': bool(channels_last), 'torch': torch.__version__, 'network': net.network_options()}


def key_digest(key):
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _interpolate(points, x):
    """Piecewise-linear through ``[(x, y), ...]`` (ascending x), extended by the end segments' slopes."""
    if len(points) == 1:
        return points[0][1]
    i = max(1, min(len(points) - 1, next((k for k, (px, _) in enumerate(points) if px >= x), len(points) - 1)))
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


@dataclass(frozen=True)
class CostTable:
    """Seconds (and, on CUDA, peak bytes) of every subnet, in cost order, on one device.

    Attributes:
        key (dict): What the table depends on (:func:`cost_key`).
        patch_sides (tuple[int]): LR patch sides of the patch measurements, ascending.
        patch_call_s (tuple[tuple[float]]): Per subnet and patch side: seconds per forward call.
        patch_s (tuple[tuple[float]]): Per subnet and patch side: seconds per patch.
        whole_call_s (tuple[float]): Per subnet: seconds per whole-image call.
        whole_pixel_s (tuple[float]): Per subnet: seconds per LR pixel of a whole image.
        peak_bytes_per_pixel (tuple[float] | None): Per subnet, on CUDA: peak memory per LR pixel of a whole image.
    """
    key: dict
    patch_sides: tuple
    patch_call_s: tuple
    patch_s: tuple
    whole_call_s: tuple
    whole_pixel_s: tuple
    peak_bytes_per_pixel: tuple = None

    def per_patch(self, subnet, side):
        """``(seconds per call, seconds per patch)`` of ``subnet`` on patches of ``side``, by pixel count."""
        pixels = [s * s for s in self.patch_sides]
        calls = list(zip(pixels, self.patch_call_s[subnet]))
        patches = list(zip(pixels, self.patch_s[subnet]))
        return max(0., _interpolate(calls, side * side)), max(0., _interpolate(patches, side * side))

    def tiled_seconds(self, histogram, side, batch_size):
        """Predicted seconds of running ``histogram[m]`` patches of ``side`` through subnet m, ``batch_size``
        patches per call (the forwards only: plan and stitch are the engine's own overhead)."""
        total = 0.
        for subnet, count in enumerate(histogram):
            if count:
                call, patch = self.per_patch(subnet, side)
                total += math.ceil(count / batch_size) * call + count * patch
        return total

    def whole_seconds(self, subnet, h, w):
        """Predicted seconds of subnet ``subnet`` on a whole h x w LR image."""
        return self.whole_call_s[subnet] + h * w * self.whole_pixel_s[subnet]

    def whole_peak_bytes(self, subnet, h, w):
        """Predicted peak memory of subnet ``subnet`` on a whole h x w LR image, or None when not measured."""
        return None if self.peak_bytes_per_pixel is None else h * w * self.peak_bytes_per_pixel[subnet]

    def to_json(self):
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        rows = ('patch_call_s', 'patch_s')
        return cls(**{k: tuple(tuple(r) for r in v) if k in rows else tuple(v) if isinstance(v, list) else v
                      for k, v in data.items()})


def _timed(fn, device, repeat):
    """Median seconds of ``fn()`` over ``repeat`` runs after one warm-up."""
    times = []
    for attempt in range(repeat + 1):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        if attempt:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _line(x0, t0, x1, t1):
    """``(intercept, slope)`` of the line through (x0, t0) and (x1, t1), both >= 0."""
    slope = max(0., (t1 - t0) / (x1 - x0))
    return max(0., t0 - slope * x0), slope


def measure_cost_table(net, device, dtype=torch.float32, channels_last=True, patch_sides=PATCH_SIDES,
                       whole_sides=WHOLE_SIDES, repeat=REPEAT):
    """Measure a :class:`CostTable` of ``net``'s subnets as the engine runs them (extracted, batched).

    Args:
        net (SupernetMixin): The supernet (its weights do not matter; a copy of each subnet is timed).
        device (str | torch.device): Where to measure.
        dtype (torch.dtype): Default: float32.
        channels_last (bool): Memory format of the subnets and inputs. Default: True.
        patch_sides (Sequence[int]): LR patch sides measured. Default: (16, 32, 64).
        whole_sides (Sequence[int]): Two LR image sides of the whole-image measurements. Default: (32, 64).
        repeat (int): Timed runs per measurement (median), after one warm-up. Default: 1.
    """
    device = torch.device(device)
    cache = SubnetCache(net, channels_last=channels_last, cuda_graphs=False, max_batch_pixels=None)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    patch_call_s, patch_s, whole_call_s, whole_pixel_s, peaks = [], [], [], [], []
    with torch.inference_mode():
        for subnet in range(len(net.subnets)):
            module = cache.module(subnet).to(device=device, dtype=dtype)
            calls, per_patch = [], []
            for side in patch_sides:
                batch = max(2, PATCH_BATCH_PIXELS // (side * side))
                x = torch.rand(batch, 3, side, side, device=device, dtype=dtype).contiguous(memory_format=memory_format)
                one = _timed(lambda: module(x[:1]), device, repeat)
                full = _timed(lambda: module(x), device, repeat)
                call, patch = _line(1, one, batch, full)
                calls.append(call)
                per_patch.append(patch)
            patch_call_s.append(tuple(calls))
            patch_s.append(tuple(per_patch))
            small, large = whole_sides
            times = []
            for side in (small, large):
                x = torch.rand(1, 3, side, side, device=device, dtype=dtype).contiguous(memory_format=memory_format)
                if device.type == 'cuda':
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                times.append(_timed(lambda: module(x), device, repeat))
            if device.type == 'cuda':
                peaks.append((torch.cuda.max_memory_allocated(device) - base) / (large * large))
            call, pixel = _line(small * small, times[0], large * large, times[1])
            whole_call_s.append(call)
            whole_pixel_s.append(pixel)
    return CostTable(cost_key(net, device, dtype, channels_last), tuple(int(s) for s in patch_sides),
                     tuple(patch_call_s), tuple(patch_s), tuple(whole_call_s), tuple(whole_pixel_s),
                     tuple(peaks) if peaks else None)


def load_or_measure(net, device, dtype=torch.float32, channels_last=True, *, refresh=False, folder=None):
    """The cached :class:`CostTable` of this key, measured (and cached) when missing or when ``refresh``.

    Under torch.distributed, rank 0 measures and writes while the others wait at a barrier, then read.

    Args:
        net (SupernetMixin): The supernet.
        device (str | torch.device): The device the engine runs on.
        dtype (torch.dtype): Default: float32.
        channels_last (bool): Default: True.
        refresh (bool): Measure again even when a table is cached. Default: False.
        folder (str | None): Cache folder. Default: None (:func:`cache_dir`).
    """
    key = cost_key(net, device, dtype, channels_last)
    path = osp.join(folder or cache_dir(), f'cost_{key_digest(key)}.json')
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    main = not distributed or torch.distributed.get_rank() == 0
    table = None
    if main:
        if not refresh and osp.isfile(path):
            try:
                with open(path, encoding='utf-8') as f:
                    table = CostTable.from_json(f.read())
            except (OSError, ValueError, TypeError):
                table = None  # unreadable or from another layout: measure again
            if table is not None and table.key != key:
                table = None
        if table is None:
            table = measure_cost_table(net, device, dtype, channels_last)
            atomic_write_text(path, table.to_json())
    if distributed:
        torch.distributed.barrier()
        if not main:
            with open(path, encoding='utf-8') as f:
                table = CostTable.from_json(f.read())
    return table
