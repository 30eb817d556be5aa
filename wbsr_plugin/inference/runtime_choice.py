"""Choosing the runtime by measurement: ``auto`` picks the fastest installed runtime and precision that passes the
precision rule.

* **Speed**: each candidate's cost table (:mod:`.cost_model`, one per runtime and precision, measured once per
  machine and kept in the cache) predicts the full network on :data:`REFERENCE_SIDE`-pixel LR images; the fastest
  wins.
* **Precision rule**: fp32 always passes. bf16 passes ``auto`` only where its loss is bounded below
  :data:`BF16_MAX_LOSS_DB` for every image whose fp32 result is at most :data:`BF16_REFERENCE_PSNR` dB: per
  checkpoint (its weights) and machine, the full network runs in bf16 and in fp32 on real photographs that
  scikit-image ships, and the mean squared difference of their Y channels, ``d``, is an error the bf16 result adds
  to the fp32 one's, ``e``: the loss is ``10 log10(1 + d / e)``, largest where ``e`` is smallest. A loss measured
  against HR on the same photos would hide it: at their 27-30 dB, bf16 lost 0.002 dB, where held-out photos at
  43 dB lost 0.03-0.05 dB (docs/RESULTS.md). The result is cached beside the cost tables. An explicit bf16 request
  is always honoured.
"""
import hashlib
import json
import os
from os import path as osp

import numpy as np
import torch

from wbsr_runtime.files import atomic_write_text

from .cost_model import cache_dir, load_or_measure
from .runtimes import (
    TORCH_FP32,
    CompiledSubnets,
    Runtime,
    candidate_runtimes,
    check_runtime,
    runtime_versions,
    weights_digest,
)

BF16_MAX_LOSS_DB = 0.01
BF16_REFERENCE_PSNR = 45.  # dB of Y-PSNR: the cleanest results the bound covers (x4 SR of photos stays below)
REFERENCE_SIDE = 192
PHOTOS = ('astronaut', 'coffee', 'chelsea')
PHOTO_LQ_SIDE = 96


def check_photos(scale):
    """HR crops (H, W, 3 RGB float in [0, 1], sides a multiple of ``scale``) and their LR images (area
    downsampling), from scikit-image's bundled photographs."""
    import cv2
    from skimage import data
    pairs = []
    for name in PHOTOS:
        hr = getattr(data, name)()[..., :3].astype(np.float32) / 255.
        lq_side = min(PHOTO_LQ_SIDE, min(hr.shape[:2]) // scale)
        side = lq_side * scale
        top, left = (hr.shape[0] - side) // 2, (hr.shape[1] - side) // 2
        hr = np.ascontiguousarray(hr[top:top + side, left:left + side])
        lq = cv2.resize(hr, (lq_side, lq_side), interpolation=cv2.INTER_AREA)
        pairs.append((torch.from_numpy(lq).permute(2, 0, 1)[None], hr))
    return pairs


def y_psnr(sr, hr, border):
    """Y-PSNR (BT.601, as BasicSR's ``test_y_channel``) of an SR tensor (1, 3, H, W) against HR (H, W, 3) RGB."""
    sr = sr[0].clamp(0, 1).permute(1, 2, 0).numpy().astype(np.float64)
    weights = np.array([65.481, 128.553, 24.966]) / 255.

    def luma(img):
        return (img @ weights + 16. / 255.)[border:-border, border:-border]

    mse = np.mean((np.round(luma(sr) * 255.) - np.round(luma(hr.astype(np.float64)) * 255.))**2)
    return 10 * np.log10(255.**2 / max(mse, 1e-10))


def y_mse(a, b):
    """Mean squared difference of the Y channels (BT.601, in 8-bit units, unrounded) of two SR tensors (1, 3, H, W)."""
    weights = torch.tensor([65.481, 128.553, 24.966], dtype=torch.float64).view(1, 3, 1, 1)
    return float((((a.double() - b.double()) * weights).sum(1)).pow(2).mean())


def bf16_loss_db(net, runtime, folder=None):
    """Bound of the Y-PSNR loss (dB) of ``net``'s full network in ``runtime`` (a bf16 one) against fp32 torch, for
    images whose fp32 result reaches at most :data:`BF16_REFERENCE_PSNR` dB (see the module docstring); measured
    on the check photos, cached per weights, runtime and machine."""
    full = net.extract_subnet(len(net.subnets) - 1).to('cpu', torch.float32).eval()
    folder = folder or osp.join(cache_dir(), 'runtimes')
    key = hashlib.sha1(repr((weights_digest(full), str(runtime), runtime_versions(runtime), PHOTOS, PHOTO_LQ_SIDE,
                             BF16_REFERENCE_PSNR)).encode()).hexdigest()[:20]
    path = osp.join(folder, f'bf16_check_{key}.json')
    if osp.isfile(path):
        try:
            with open(path, encoding='utf-8') as f:
                return float(json.load(f)['loss_db'])
        except (OSError, ValueError, KeyError):
            pass
    run = CompiledSubnets(runtime, folder).compile(full)
    with torch.inference_mode():
        added = np.mean([y_mse(full(lq).clamp(0, 1), run(lq).float().clamp(0, 1))
                         for lq, _ in check_photos(net.upscale)])
    loss = float(10 * np.log10(1 + added / (255.**2 * 10**(-BF16_REFERENCE_PSNR / 10))))
    os.makedirs(folder, exist_ok=True)
    atomic_write_text(path, json.dumps({'runtime': str(runtime), 'loss_db': loss, 'added_y_mse': float(added),
                                        'reference_psnr': BF16_REFERENCE_PSNR, 'photos': list(PHOTOS)}))
    return loss


def choose_runtime(net, device, name='torch', precision='fp32', *, on_measure=None):
    """``(runtime, reason)``: what ``name`` and ``precision`` ask for (``'auto'`` for either: measured).

    Raises:
        RuntimeUnavailable: An explicit runtime or precision that cannot run here (one line).
    """
    device = torch.device(device)
    if name != 'auto' and precision != 'auto':
        runtime = Runtime(name, precision)
        check_runtime(runtime, device)
        return runtime, 'as asked'
    candidates = [r for r in candidate_runtimes(device)
                  if name in ('auto', r.name) and precision in ('auto', r.precision)]
    if not candidates:
        runtime = Runtime('torch' if name == 'auto' else name, 'fp32' if precision == 'auto' else precision)
        check_runtime(runtime, device)  # says why it cannot run
        return runtime, 'the only candidate'
    if len(candidates) == 1:
        return candidates[0], 'the only candidate'
    dtype = next(net.parameters()).dtype
    passed, notes = [], []
    for runtime in candidates:
        if runtime.precision == 'bf16' and precision == 'auto':
            loss = bf16_loss_db(net, runtime)
            if not loss < BF16_MAX_LOSS_DB:
                notes.append(f'{runtime} may lose {loss:.3f} dB at {BF16_REFERENCE_PSNR:g} dB')
                continue
        table = load_or_measure(net, device, dtype, runtime=runtime, on_measure=on_measure)
        seconds = table.whole_seconds(len(net.subnets) - 1, REFERENCE_SIDE, REFERENCE_SIDE)
        passed.append((seconds, runtime))
    if not passed:
        return TORCH_FP32, 'no candidate passed the precision rule (' + '; '.join(notes) + ')'
    seconds, runtime = min(passed, key=lambda item: item[0])
    reason = f'fastest measured ({1e3 * seconds:.0f} ms for the full network on {REFERENCE_SIDE}x{REFERENCE_SIDE})'
    return runtime, reason + (f'; {"; ".join(notes)}' if notes else '')
