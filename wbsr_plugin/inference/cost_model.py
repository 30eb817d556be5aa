"""Measured cost of a supernet's subnets on this device: what deciding by time predicts from.

Measured once per key (the device: the CPU's model and torch's thread count, or the CUDA card; the dtype; the
memory format; the torch version; the network's shape, never its weights), in a few seconds:

* every subnet on square LR inputs of a few sizes: seconds per call by LR pixels in the call. A batch of
  patches costs what one input of as many pixels costs (checked on CPU within a few per cent), so one curve
  per subnet predicts both whole images and batches of patches;
* the engine's own work: the difficulty analysis (per image and per LR pixel), gathering and stitching
  the patches (per LR pixel of the patches), and what a call costs beyond its subnet's own time when the
  previous call ran another subnet (OpenVINO and ONNX Runtime switch between compiled models);
* on CUDA, the allocator's peak memory per LR pixel of each subnet (None on CPU, where it is not measured).

Tables are kept in the user's cache directory (``$WBSR_CACHE_DIR``, else ``$XDG_CACHE_HOME/wbsr_plugin``, else
``~/.cache/wbsr_plugin``), one JSON file per key, written atomically; deleting them costs one new measurement.
Under torch.distributed, rank 0 measures while the other ranks wait, then read. Tests build a :class:`CostTable`
directly, so that nothing depends on the machine's speed.
"""
import hashlib
import json
import os
import time
from os import path as osp

import torch

from wbsr_plugin.data.difficulty import patch_difficulty, quantile_threshold_tensor, rgb_to_luma
from wbsr_runtime.class_thresholds import DEFAULT_NUM_CLASSES
from wbsr_runtime.cost_table import CostTable, this_cpu
from wbsr_runtime.files import atomic_write_text
from wbsr_runtime.tile_geometry import DEFAULT_TRIM, tile_geometry

from .projection import apply_levels, classify
from .runtimes import TORCH_FP32, CompiledSubnets, runtime_versions, torch_threads_beside
from .subnet_cache import SubnetCache
from .tiling import BlendGeometry, extract_patches

COST_MODEL_VERSION = 4
# LR sides of the square inputs measured: up to the engine's batch of patches (32768 LR pixels on CPU)
MEASURED_SIDES = {'cpu': (32, 64, 192), 'cuda': (32, 64, 128, 256, 512)}
WARM_UP_PIXELS = 64 * 64
OVERHEAD_SIDES = (64, 192)  # LR sides of the images whose analysis, gathering and stitching are timed
OVERHEAD_PATCH, OVERHEAD_OVERLAP = 64, 4
REPEAT = 1
SMALL_REPEAT = 3  # timed runs of the small inputs (up to WARM_UP_PIXELS), where one outlier weighs most


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
    return this_cpu(torch.get_num_threads())


def cost_key(net, device, dtype, channels_last, runtime=TORCH_FP32):
    """What a cost table depends on, as a dict."""
    key = {'version': COST_MODEL_VERSION, 'device': device_name(device), 'dtype': str(dtype).replace('torch.', ''),
           'channels_last': bool(channels_last), 'torch': torch.__version__, 'network': net.network_options()}
    if not runtime.is_default:
        key.update(runtime=str(runtime), versions=runtime_versions(runtime))
    return key


def key_digest(key):
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _timed(fn, device, repeat, warm_up=True):
    """Median seconds of ``fn()`` over ``repeat`` runs, after one warm-up run when ``warm_up``."""
    times = []
    for attempt in range(int(not warm_up), repeat + 1):
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


def _analyse(lq, patch, tops, lefts):
    """What the engine's plan does to an image (its patches' classes, a budget's upgrades), for timing."""
    difficulty = patch_difficulty(rgb_to_luma(lq[0]), patch, tops, lefts)
    classes = classify(difficulty, quantile_threshold_tensor(difficulty, DEFAULT_NUM_CLASSES))
    torch.bincount(classes.flatten(), minlength=DEFAULT_NUM_CLASSES + 1)[1:].tolist()
    apply_levels(classes, difficulty, [0] * DEFAULT_NUM_CLASSES, [(DEFAULT_NUM_CLASSES, 0, 1, 1)])


def dominance_clamped(call_s, subnets):
    """``call_s`` (per subnet, per measured size) with each time no larger than that of any subnet at least as wide
    and as deep: such a subnet computes more, so on the CPU a smaller one measured slower met noise (a VM's stolen
    time, say).
    Left alone, one such outlier at a small size makes the time rules run the full network instead of the cheap
    subnet an image chose (tiny images in OpenVINO bf16: 0.88x of the plain network)."""
    return tuple(tuple(min(call_s[n][j] for n, other in enumerate(subnets)
                           if other.width >= subnet.width and other.depth >= subnet.depth)
                       for j in range(len(call_s[m])))
                 for m, subnet in enumerate(subnets))


def _measure_overhead(scale, device, dtype, repeat, runtime):
    """``(analysis_s, tiling_pixel_s)``: the engine's difficulty analysis on two image sizes (a line), and its
    gathering and stitching per LR pixel of the patches (on the larger one), with torch's threads as the engine
    has them (:func:`~.runtimes.torch_threads_beside` but for the stitch)."""
    analysis, tiling = [], 0.
    for side in OVERHEAD_SIDES:
        lq = torch.rand(1, 3, side, side, device=device)
        patch, tops, lefts, trim = tile_geometry(side, side, OVERHEAD_PATCH, OVERHEAD_OVERLAP, DEFAULT_TRIM)
        blend = BlendGeometry((side, side), patch, tops, lefts, trim, scale, device)
        outputs = torch.rand(len(tops) * len(lefts), 3, patch * scale, patch * scale, device=device, dtype=dtype)
        with torch_threads_beside(runtime):
            analysis.append(_timed(lambda: _analyse(lq, patch, tops, lefts), device, repeat))
            gather = _timed(lambda: extract_patches(lq, patch, tops, lefts).to(dtype), device, repeat)
        tiling = (gather + _timed(lambda: blend.stitch(outputs), device, repeat)) / (outputs.shape[0] * patch**2)
    return _line(OVERHEAD_SIDES[0]**2, analysis[0], OVERHEAD_SIDES[1]**2, analysis[1]), tiling


def _measure_switch(cache, side, alone_s, device, dtype, memory_format):
    """Seconds a call costs beyond its subnet's own (``alone_s``, on ``side`` x ``side``) when the previous call ran
    another subnet: every subnet in turn on one input, against the sum of their calls alone."""
    x = torch.rand(1, 3, side, side, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    runners = [cache.runner(subnet) for subnet in range(len(alone_s))]
    in_turn = _timed(lambda: [run(x) for run in runners], device, SMALL_REPEAT)
    return max(0., (in_turn - sum(alone_s)) / len(runners))


def measure_cost_table(net, device, dtype=torch.float32, channels_last=True, sides=None, repeat=REPEAT,
                       runtime=TORCH_FP32):
    """Measure a :class:`CostTable` of ``net``'s subnets as the engine runs them (extracted, batched).

    Args:
        net (SupernetMixin): The supernet (its weights do not matter; a copy of each subnet is timed).
        device (str | torch.device): Where to measure.
        dtype (torch.dtype): Default: float32.
        channels_last (bool): Memory format of the subnets and inputs. Default: True.
        sides (Sequence[int] | None): LR sides of the square inputs measured, ascending. Default: None
            (``MEASURED_SIDES`` of the device type).
        repeat (int): Timed runs per measurement (median), after one warm-up. Default: 1.
        runtime (Runtime): What runs the subnets (:mod:`.runtimes`). Default: torch fp32.
    """
    device = torch.device(device)
    sides = tuple(int(s) for s in (sides or MEASURED_SIDES['cuda' if device.type == 'cuda' else 'cpu']))
    compiler = None if runtime.is_default else CompiledSubnets(runtime, osp.join(cache_dir(), 'runtimes'))
    cache = SubnetCache(net, channels_last=channels_last, cuda_graphs=False, max_batch_pixels=None, compiler=compiler)
    memory_format = torch.channels_last if channels_last and cache.runs_torch else torch.contiguous_format
    call_s, peaks = [], []
    with torch.inference_mode(), torch_threads_beside(runtime):  # as the engine runs
        for subnet in range(len(net.subnets)):
            cache.module(subnet).to(device=device, dtype=dtype)
            module = cache.runner(subnet)
            times = []
            for side in sides:
                x = torch.rand(1, 3, side, side, device=device, dtype=dtype).contiguous(memory_format=memory_format)
                if device.type == 'cuda':
                    torch.cuda.reset_peak_memory_stats(device)
                    base = torch.cuda.memory_allocated(device)
                # a new shape's first call costs a few ms more in torch on CPU: past WARM_UP_PIXELS, that is
                # noise; OpenVINO and ONNX Runtime prepare each new shape in its first call (up to 3x a call)
                small = side * side <= WARM_UP_PIXELS
                warm_up = device.type == 'cuda' or not cache.runs_torch or small
                times.append(_timed(lambda: module(x), device, max(repeat, SMALL_REPEAT) if small else repeat,
                                    warm_up))
            call_s.append(tuple(times))
            if device.type == 'cuda':
                peaks.append((torch.cuda.max_memory_allocated(device) - base) / (sides[-1]**2))
        switch_s = _measure_switch(cache, sides[0], [times[0] for times in call_s], device, dtype, memory_format)
    with torch.inference_mode():
        analysis_s, tiling_pixel_s = _measure_overhead(net.upscale, device, dtype, repeat, runtime)
    if device.type == 'cpu':  # (on CUDA, widths off the tensor cores' multiples may truly run slower)
        call_s = dominance_clamped(call_s, net.subnets)
    return CostTable(cost_key(net, device, dtype, channels_last, runtime), tuple(s * s for s in sides), tuple(call_s),
                     analysis_s, tiling_pixel_s, tuple(peaks) if peaks else None, switch_s)


def cost_table_path(key, folder=None):
    return osp.join(folder or cache_dir(), f'cost_{key_digest(key)}.json')


def cached_cost_table(key, folder=None):
    """The cached :class:`CostTable` of ``key`` (:func:`cost_key`), or None when none is (or it is unreadable, or
    of another key)."""
    path = cost_table_path(key, folder)
    try:
        with open(path, encoding='utf-8') as f:
            table = CostTable.from_json(f.read())
    except (OSError, ValueError, TypeError):
        return None  # missing, unreadable or from another layout: measure again
    return table if table.key == key else None


def load_or_measure(net, device, dtype=torch.float32, channels_last=True, *, refresh=False, folder=None,
                    on_measure=None, runtime=TORCH_FP32):
    """The cached :class:`CostTable` of this key, measured (and cached) when missing or when ``refresh``.

    Under torch.distributed, rank 0 measures and writes while the others wait at a barrier, then read.

    Args:
        net (SupernetMixin): The supernet.
        device (str | torch.device): The device the engine runs on.
        dtype (torch.dtype): Default: float32.
        channels_last (bool): Default: True.
        refresh (bool): Measure again even when a table is cached. Default: False.
        folder (str | None): Cache folder. Default: None (:func:`cache_dir`).
        on_measure (Callable[[str], None] | None): Called with the table's path before measuring (to tell the
            user). Default: None.
        runtime (Runtime): What runs the subnets (one table per runtime and precision). Default: torch fp32.
    """
    key = cost_key(net, device, dtype, channels_last, runtime)
    path = cost_table_path(key, folder)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    main = not distributed or torch.distributed.get_rank() == 0
    table = None
    if main:
        if not refresh:
            table = cached_cost_table(key, folder)
        if table is None:
            if on_measure is not None:
                on_measure(path)
            table = measure_cost_table(net, device, dtype, channels_last, runtime=runtime)
            atomic_write_text(path, table.to_json())
    if distributed:
        torch.distributed.barrier()
        if not main:
            with open(path, encoding='utf-8') as f:
                table = CostTable.from_json(f.read())
    return table
