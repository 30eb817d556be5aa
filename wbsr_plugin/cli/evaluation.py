"""PSNR/SSIM and FLOPs of a super-resolution method over a folder of LR/HR pairs.

Used by ``python -m wbsr_plugin.curve`` and the reproduction (``wbsr_plugin.reproduce_util``).
A method is a *runner*: ``run(lq) -> (sr, report)`` with ``lq`` (1, 3, h, w) RGB in [0, 1] and
``report`` a dict with at least ``flops``, ``full_flops`` and ``time_s``. The runners made here are
timed alike: one untimed call first at every new input shape, and the plain network in the engine's
memory format. PSNR/SSIM are BasicSR's ``calculate_psnr``/``calculate_ssim`` on the Y channel with
``crop_border = scale``. Without an LR
folder, LR images are made from the HR ones by MATLAB bicubic (``basicsr.utils.matlab_functions
.imresize``) after cropping HR to a multiple of the scale.
"""
import copy
import time
from os import path as osp

import numpy as np
import torch

from wbsr_plugin.archs.channels_last import to_channels_last
from wbsr_plugin.archs.supernet_util import REFERENCE_LQ_SIZE
from wbsr_plugin.inference.engine import DynamicInferenceEngine
from wbsr_runtime.files import list_images
from wbsr_runtime.images import ImageReadError

from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils.matlab_functions import imresize

from .image_io import read_image

SSIM_WINDOW = 11  # BasicSR's calculate_ssim: an 11 x 11 Gaussian window, valid positions only


def smallest_hr_side(scale):
    """The smallest HR side (a multiple of ``scale``) with PSNR/SSIM defined: ``scale`` border pixels are cropped
    on each side and SSIM's window must fit in what is left."""
    return -(-(2 * scale + SSIM_WINDOW) // scale) * scale


def to_uint8_bgr(tensor):
    """(1, 3, H, W) RGB in [0, 1] -> H x W x 3 BGR uint8 (as BasicSR's ``tensor2img``)."""
    img = tensor[0].detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)[:, :, ::-1]
    return (img * 255.).round().astype(np.uint8)


def load_pairs(hr_dir, lr_dir, scale):
    """LR/HR pairs of a folder of HR images.

    Args:
        hr_dir (str): Folder of HR images.
        lr_dir (str | None): Folder of LR images with the same names (or ``NAMEx{scale}``); None
            makes them from HR by MATLAB bicubic.
        scale (int): Upscale factor; HR is cropped to a multiple of it.

    Returns:
        list[tuple[str, Tensor, np.ndarray]]: ``(name, lq (1, 3, h, w) RGB in [0, 1], hr uint8 BGR)``
        per HR image, sorted by file name.

    Raises:
        ImageReadError: An unreadable image, an HR image smaller than :func:`smallest_hr_side` on a side, or an LR
            image missing or of the wrong size.
    """
    pairs = []
    lr_paths = {}
    for path in (list_images(lr_dir) if lr_dir else []):
        lr_paths.setdefault(osp.splitext(osp.basename(path))[0], path)
    for hr_path in list_images(hr_dir):
        name = osp.splitext(osp.basename(hr_path))[0]
        hr, _ = read_image(hr_path)
        h, w = hr.shape[-2:]
        least = smallest_hr_side(scale)
        if min(h - h % scale, w - w % scale) < least:
            raise ImageReadError(f'{hr_path}: {w}x{h} is too small for PSNR/SSIM at x{scale}: HR images need at least '
                                 f'{least}x{least} pixels ({scale} border pixels are cropped on each side and SSIM '
                                 f'needs {SSIM_WINDOW}x{SSIM_WINDOW})')
        hr = hr[..., :h - h % scale, :w - w % scale]
        if lr_dir:
            lr_path = lr_paths.get(name) or lr_paths.get(f'{name}x{scale}')
            if lr_path is None:
                raise ImageReadError(f'no LR image for {hr_path} in {lr_dir}')
            lq, _ = read_image(lr_path)
            if tuple(lq.shape[-2:]) != (hr.shape[-2] // scale, hr.shape[-1] // scale):
                raise ImageReadError(f'{lr_path} is not {hr_path} / {scale}')
        else:
            lq = imresize(hr[0], 1 / scale).clamp(0, 1).unsqueeze(0)
        pairs.append((name, lq, to_uint8_bgr(hr)))
    return pairs


def evaluate(run, pairs, scale):
    """Mean PSNR/SSIM (Y, border = scale) and total cost of a runner over pairs.

    Args:
        run (callable): ``run(lq) -> (sr, report)`` (see the module docstring).
        pairs (list): From :func:`load_pairs`.
        scale (int): Upscale factor (the border cropped before PSNR/SSIM).

    Returns:
        dict: ``psnr``, ``ssim`` (means over images), ``flops_percent`` (FLOPs spent as % of
        ``full_flops``), ``gflops_per_32x32`` (GFLOPs per 32x32 LR patch, the paper's unit) and
        ``time_s`` (sum of the reports' times).
    """
    psnr, ssim, flops, full, seconds, expected = [], [], 0, 0, 0., []
    for _, lq, hr in pairs:
        sr, report = run(lq)
        expected.append(report.get('expected_loss_db'))
        img = to_uint8_bgr(sr)
        psnr.append(calculate_psnr(img, hr, crop_border=scale, test_y_channel=True))
        ssim.append(calculate_ssim(img, hr, crop_border=scale, test_y_channel=True))
        flops += report['flops']
        full += report['full_flops']
        seconds += report['time_s']
    pixels = sum(lq.shape[-1] * lq.shape[-2] for _, lq, _ in pairs)
    return {
        'psnr': float(np.mean(psnr)),
        'ssim': float(np.mean(ssim)),
        'flops_percent': 100 * flops / full,
        'gflops_per_32x32': flops / 1e9 * REFERENCE_LQ_SIZE**2 / pixels,
        'time_s': seconds,
        'expected_loss_db': None if None in expected else float(np.mean(expected)),
    }


def warmed_up(run):
    """``run`` preceded, at the first input of every shape, by one untimed call whose result is dropped.

    So that no runner's time includes first-call costs (memory allocation, cuDNN's choice of algorithms,
    extracting subnets, caching a tiling): each runner of this module is warmed up alike.
    """
    seen_shapes = set()

    def run_warm(lq):
        shape = tuple(lq.shape)
        if shape not in seen_shapes:
            seen_shapes.add(shape)
            run(lq)
        return run(lq)

    return run_warm


def channels_last_copy(net):
    """A copy of ``net`` with its 4-D weights in channels-last memory format and the engine's channels-last pixel
    shuffle (``net`` is left as it is)."""
    return to_channels_last(copy.deepcopy(net))


def whole_image_runner(net, flops_fn=None, channels_last=True):
    """Runner of a network on the whole image (on the network's device and dtype), warmed up per input shape.

    Args:
        net (nn.Module): Any BasicSR SR network in eval mode.
        flops_fn (callable | None): ``flops_fn(h, w)`` -> FLOPs on an ``h x w`` LR image.
            Default: None (``net.flops``, as WBSR supernets have).
        channels_last (bool): Run a channels-last copy of ``net`` on channels-last input, as
            :class:`DynamicInferenceEngine` runs its subnets with its option of the same name (so that
            both are timed in the same memory format). Default: True (the engine's default).
    """
    flops_fn = net.flops if flops_fn is None else flops_fn
    model = channels_last_copy(net) if channels_last else net
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    param = next(model.parameters())

    def run(lq):
        start = time.perf_counter()
        with torch.inference_mode():
            x = lq.to(device=param.device, dtype=param.dtype).contiguous(memory_format=memory_format)
            sr = model(x)
            if sr.device.type == 'cuda':
                torch.cuda.synchronize(sr.device)
        flops = flops_fn(*lq.shape[-2:])
        return sr, {'flops': flops, 'full_flops': flops, 'time_s': time.perf_counter() - start}

    return warmed_up(run)


def engine_runner(net, thresholds=None, **engine_opt):
    """Runner of WBSR's dynamic inference engine, warmed up per input shape.

    Args:
        net (nn.Module): WBSR supernet.
        thresholds (list[float] | dict[int, list[float]] | None): Class thresholds (K - 1), or a table of
            them per LR patch side; None: per-image quantiles. Default: None.
        **engine_opt: Further :class:`DynamicInferenceEngine` options (``patch_size``,
            ``overlap``, ``budget``, ``subnet``, ``channels_last``, ...). ``watch_weights`` defaults to False: the
            network is evaluated as loaded.
    """
    engine = DynamicInferenceEngine(net, thresholds=thresholds, **{'watch_weights': False, **engine_opt})

    def run(lq):
        sr, report = engine.run(lq)
        return sr, {'flops': report.flops, 'full_flops': report.full_flops, 'time_s': report.time_s,
                    'histogram': report.histogram, 'expected_loss_db': report.plan.expected_loss_db}

    return warmed_up(run)


__all__ = ['to_uint8_bgr', 'load_pairs', 'evaluate', 'warmed_up', 'whole_image_runner', 'engine_runner']
