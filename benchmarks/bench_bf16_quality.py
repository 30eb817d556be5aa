"""bf16 against fp32 on held-out photographs: Y-PSNR of the full network and of a FLOPs budget, per runtime.

    python benchmarks/bench_bf16_quality.py --model net_g_latest.pth --hr PHOTO_FOLDER [--budget 0.6]

For every HR photo of the folder (cropped to a multiple of the scale; LR by BasicSR's MATLAB bicubic), the
checkpoint's full network on the whole image and the engine at ``--budget`` (by FLOPs, so that every runtime runs
the same plan) run in torch fp32 and in each bf16 runtime installed here (torch autocast, OpenVINO). The table gives
the mean Y-PSNR (BT.601, border = scale) and each bf16 runtime's loss against torch fp32: mean, and worst photo.
"""
import argparse
import glob
import statistics
from os import path as osp

import cv2
import numpy as np
import torch

import wbsr_plugin  # noqa: F401
from wbsr_plugin.inference.checkpoint import engine_options, load_supernet
from wbsr_plugin.inference.engine import DynamicInferenceEngine
from wbsr_plugin.inference.runtime_choice import y_psnr
from wbsr_plugin.inference.runtimes import TORCH_FP32, candidate_runtimes

from basicsr.utils.matlab_functions import imresize


def photo_pairs(folder, scale, max_side):
    """``(name, lq tensor (1, 3, h, w), hr RGB float array)`` of every photo in ``folder``; photos wider than
    ``max_side`` are resized to it first (area), so that the run stays within minutes."""
    paths = sorted(p for p in glob.glob(osp.join(folder, '*')) if p.lower().endswith(('.png', '.jpg', '.jpeg')))
    if not paths:
        raise SystemExit(f'--hr: no PNG or JPEG photos in {folder}')
    for path in paths:
        hr = cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.
        if max(hr.shape[:2]) > max_side:
            factor = max_side / max(hr.shape[:2])
            size = (round(hr.shape[1] * factor), round(hr.shape[0] * factor))
            hr = cv2.resize(hr, size, interpolation=cv2.INTER_AREA)
        h, w = (side - side % scale for side in hr.shape[:2])
        hr = np.ascontiguousarray(hr[:h, :w])
        lq = imresize(hr, 1 / scale).clip(0, 1).astype(np.float32)
        yield osp.basename(path), torch.from_numpy(np.ascontiguousarray(lq)).permute(2, 0, 1)[None], hr


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', required=True, help='a trained checkpoint')
    parser.add_argument('--hr', required=True, help='folder of held-out HR photos')
    parser.add_argument('--budget', type=float, default=0.6)
    parser.add_argument('--max-side', type=int, default=2048, help='longest HR side (larger photos are resized)')
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    net, meta = load_supernet(args.model)
    stored = engine_options(meta)
    runtimes = [r for r in candidate_runtimes('cpu') if r == TORCH_FP32 or r.precision == 'bf16']
    full = len(net.subnets) - 1
    settings = {'full network': dict(subnet=full), f'budget {args.budget} (FLOPs)': dict(budget=args.budget)}
    engines = {(label, runtime): DynamicInferenceEngine(net, runtime=None if runtime == TORCH_FP32 else runtime,
                                                        **dict(stored, **options))
               for label, options in settings.items() for runtime in runtimes}
    psnr = {key: [] for key in engines}
    names = []
    with torch.inference_mode():
        for name, lq, hr in photo_pairs(args.hr, net.upscale, args.max_side):
            names.append(name)
            for key, engine in engines.items():
                psnr[key].append(y_psnr(engine(lq).float(), hr, net.upscale))
            print(f'{name}: {lq.shape[-1]}x{lq.shape[-2]} LR', flush=True)
    print(f'\n{len(names)} photos, {args.model}\n')
    print('| setting | runtime | mean Y-PSNR (dB) | loss vs torch fp32: mean (dB) | worst photo (dB) |')
    print('|---|---|---|---|---|')
    for label in settings:
        reference = psnr[(label, TORCH_FP32)]
        for runtime in runtimes:
            values = psnr[(label, runtime)]
            losses = [r - v for r, v in zip(reference, values)]
            print(f'| {label} | {runtime} | {statistics.mean(values):.3f} | {statistics.mean(losses):+.4f} | '
                  f'{max(losses):+.4f} |')


if __name__ == '__main__':
    main()
