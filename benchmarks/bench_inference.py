"""Wall-clock speed of dynamic inference against the plain network, in one process.

    python benchmarks/bench_inference.py --image photo.jpg --threads 2 --lq-size 256x192

On the same LR image(s) it times
  (a) the plain BasicSR network (MSRResNet / RCAN) with the supernet's weights on the whole image,
  (b) the supernet's full subnet, tiled by the engine,
  (c) dynamic inference at several budgets,
and prints Markdown tables: time ratio against (a), FLOPs ratio, and efficiency = achieved
speedup / ideal speedup (1 / FLOPs ratio). ``--section tiling`` sweeps patch size and overlap;
``--section widths`` times every subnet of the paper's widths and of hardware-aligned ones on
the whole image. Weights are random (speed does not depend on their values); thresholds are the
per-image quantiles unless a checkpoint is given.
"""
import argparse
import platform
import statistics
import time

import cv2
import numpy as np
import torch

import wbsr_plugin  # noqa: F401
from basicsr.archs import build_network
from basicsr.utils.matlab_functions import imresize
from wbsr_plugin.inference.checkpoint import load_supernet
from wbsr_plugin.inference.engine import DEFAULT_OVERLAP, DEFAULT_PATCH_SIZE, DynamicInferenceEngine

SECTIONS = ('main', 'tiling', 'widths', 'all')


def load_lq(path, lq_size, scale):
    """The photo downscaled (MATLAB bicubic) to ``lq_size`` (w, h): a natural LR input."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f'error: cannot read {path}')
    if lq_size is not None:
        w, h = lq_size
        img_h, img_w = img.shape[:2]
        crop_h, crop_w = min(img_h, h * scale), min(img_w, w * scale)
        top, left = (img_h - crop_h) // 2, (img_w - crop_w) // 2
        img = img[top:top + crop_h, left:left + crop_w]
    lq = imresize(img.astype(np.float32) / 255., 1 / scale)
    return torch.from_numpy(np.ascontiguousarray(lq[:, :, ::-1].transpose(2, 0, 1))).float().unsqueeze(0).clamp(0, 1)


def timed(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain_network(net):
    """BasicSR's own network class with the supernet's weights."""
    opt = {'type': 'MSRResNet' if type(net).__name__ == 'WBSRResNet' else 'RCAN', 'upscale': net.upscale,
           'num_in_ch': net.conv_first.in_channels, 'num_out_ch': net.num_out_ch, 'num_feat': net.num_feat,
           'num_block': net.num_block}
    if opt['type'] == 'RCAN':
        opt.update(num_group=net.num_group, squeeze_factor=net.squeeze_factor)
    plain = build_network(opt)
    plain.load_state_dict(net.state_dict(), strict=True)
    return plain.eval()


def main_section(net, thresholds, images, args):
    plain = plain_network(net)
    rows = []
    for path, lq in images:
        h, w = lq.shape[-2:]
        full_flops = net.flops(h, w)
        # with --channels-last the plain network runs channels-last too: (a) is always the best plain run
        memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        plain_lq = lq.contiguous(memory_format=memory_format)
        plain = plain.to(memory_format=memory_format)
        with torch.inference_mode():
            base = timed(lambda: plain(plain_lq), args.repeat)
        rows.append((path, f'{w}x{h}', '(a) plain network, whole image', 1.0, base, 1.0, 1.0))
        settings = [('(b) full subnet, tiled', {'subnet': -1})]
        settings += [(f'(c) budget {b:g}', {'budget': b}) for b in args.budgets]
        for label, kwargs in settings:
            engine = DynamicInferenceEngine(net, thresholds=thresholds, patch_size=args.patch_size,
                                            overlap=args.overlap, channels_last=args.channels_last, **kwargs)
            _, report = engine.run(lq)
            elapsed = timed(lambda: engine.run(lq), args.repeat)
            ratio = report.flops / full_flops
            speedup = base / elapsed
            rows.append((path, f'{w}x{h}', label, ratio, elapsed, speedup, speedup * ratio))
    print('| image | LR size | setting | FLOPs ratio | time (s) | speedup vs (a) | efficiency |')
    print('|---|---|---|---|---|---|---|')
    for path, size, label, ratio, elapsed, speedup, eff in rows:
        print(f'| {path.split("/")[-1]} | {size} | {label} | {ratio:.3f} | {elapsed:.2f} | {speedup:.2f}x | {eff:.2f} |')


def tiling_section(net, images, args):
    plain = plain_network(net)
    print('| image | patch | overlap | FLOPs ratio | time (s) | efficiency vs whole image | patches |')
    print('|---|---|---|---|---|---|---|')
    for path, lq in images:
        h, w = lq.shape[-2:]
        # with --channels-last the plain network runs channels-last too: (a) is always the best plain run
        memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        plain_lq = lq.contiguous(memory_format=memory_format)
        plain = plain.to(memory_format=memory_format)
        with torch.inference_mode():
            base = timed(lambda: plain(plain_lq), args.repeat)
        for patch in args.patch_sizes:
            for overlap in args.overlaps:
                engine = DynamicInferenceEngine(net, patch_size=patch, overlap=overlap, subnet=-1)
                _, report = engine.run(lq)
                elapsed = timed(lambda: engine.run(lq), args.repeat)
                ratio = report.flops / net.flops(h, w)
                print(f'| {path.split("/")[-1]} | {patch} | {overlap} | {ratio:.3f} | {elapsed:.2f} | '
                      f'{base / elapsed * ratio:.2f} | {report.num_patches} |')
        print(f'| {path.split("/")[-1]} | whole image | - | 1.000 | {base:.2f} | 1.00 | 1 |')


def widths_section(images, args):
    print('| widths | subnet (width/depth) | FLOPs ratio | time ratio | efficiency |')
    print('|---|---|---|---|---|')
    for widths in ([36, 52, 64], [32, 48, 64]):
        net = build_network({'type': args.arch, 'upscale': args.scale, 'widths': widths}).eval()
        for path, lq in images[:1]:
            h, w = lq.shape[-2:]
            full = net.extract_subnet(-1)
            with torch.inference_mode():
                base = timed(lambda: full(lq), args.repeat)
                for spec in net.subnets:
                    sub = net.extract_subnet(spec)
                    elapsed = timed(lambda: sub(lq), args.repeat)
                    ratio = net.flops(h, w, subnet=spec) / net.flops(h, w)
                    print(f'| {widths} | w{spec.width}/d{spec.depth} | {ratio:.3f} | {elapsed / base:.3f} | '
                          f'{ratio / (elapsed / base):.2f} |')


def parse_size(text):
    w, h = (int(v) for v in text.lower().split('x'))
    return w, h


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--image', nargs='+', required=True, help='HR photo(s); downscaled to make the LR input')
    parser.add_argument('--lq-size', type=parse_size, default=(256, 192), help='LR W x H (centre crop). Default: 256x192')
    parser.add_argument('--arch', choices=('WBSRResNet', 'WBSRRCAN'), default='WBSRResNet')
    parser.add_argument('-s', '--scale', type=int, choices=(2, 3, 4), default=4)
    parser.add_argument('--widths', type=int, nargs='+', help='supernet widths. Default: the architecture\'s')
    parser.add_argument('--model', help='checkpoint (weights and thresholds) instead of random weights')
    parser.add_argument('--budgets', type=float, nargs='+', default=[0.9, 0.75, 0.6, 0.5])
    parser.add_argument('--patch-size', type=int, default=DEFAULT_PATCH_SIZE)
    parser.add_argument('--overlap', type=int, default=DEFAULT_OVERLAP)
    parser.add_argument('--patch-sizes', type=int, nargs='+', default=[32, 48, 64, 96])
    parser.add_argument('--overlaps', type=int, nargs='+', default=[2, 4, 8])
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--section', choices=SECTIONS, default='main')
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f'# torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, '
          f'{args.arch} x{args.scale}, LR {args.lq_size[0]}x{args.lq_size[1]}, median of {args.repeat}\n')
    images = [(path, load_lq(path, args.lq_size, args.scale)) for path in args.image]
    if args.model:
        net, meta = load_supernet(args.model, arch=args.arch, scale=args.scale)
        thresholds = meta.get('thresholds')
    else:
        opt = {'type': args.arch, 'upscale': args.scale}
        if args.widths:
            opt['widths'] = args.widths
        net, thresholds = build_network(opt).eval(), None
    if args.section in ('main', 'all'):
        main_section(net, thresholds, images, args)
        print()
    if args.section in ('tiling', 'all'):
        tiling_section(net, images, args)
        print()
    if args.section in ('widths', 'all'):
        widths_section(images, args)
    if args.section not in SECTIONS:
        raise ValueError(f'unknown section {args.section!r}; expected one of {SECTIONS}.')


if __name__ == '__main__':
    main()
