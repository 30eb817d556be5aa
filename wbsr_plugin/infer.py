"""Super-resolve images with a WBSR supernet by gradient-projection dynamic inference.

    python -m wbsr_plugin.infer -i inputs/ -o results/ --model net_g_ema.pth --budget 0.6 --save-map

Each image is tiled, every patch is sent to the subnet its difficulty calls for (or chosen to
meet ``--budget``, a fraction of the full network's FLOPs), and the outputs are blended.
One summary line per image: size, subnet histogram, FLOPs and time. Unreadable inputs are
skipped with a warning, and the exit status is 1 if any image failed.
"""
import argparse
import os
import sys
from os import path as osp

import torch
import yaml
from tqdm import tqdm

import wbsr_plugin  # noqa: F401  (registers the architectures)
from wbsr_plugin.inference.checkpoint import SUPERNETS, CheckpointError, load_supernet
from wbsr_plugin.inference.engine import DEFAULT_OVERLAP, DEFAULT_PATCH_SIZE, DynamicInferenceEngine
from wbsr_plugin.inference.image_io import (ImageReadError, list_images, read_image, subnet_map_overlay, to_image,
                                            ImageInfo, write_image_atomic)

OUTPUT_EXTENSIONS = ('auto', 'png', 'jpg', 'tif', 'webp')


def budget_fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'budget must be a number in (0, 1], got {text!r}') from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f'budget must be a fraction of the full FLOPs in (0, 1], got {value}')
    return value


def select_device(name):
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    elif name == 'cuda':
        if not torch.cuda.is_available():
            raise SystemExit('error: --device cuda but CUDA is not available.')
        return torch.device('cuda')
    elif name == 'cpu':
        return torch.device('cpu')
    else:
        raise ValueError(f"unknown device {name!r}; expected one of ['auto', 'cpu', 'cuda'].")


def network_options_from_yaml(path):
    with open(path) as f:
        opt = yaml.safe_load(f)
    if not isinstance(opt, dict) or 'network_g' not in opt:
        raise SystemExit(f'error: {path} has no network_g section.')
    return dict(opt['network_g'])


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-i', '--input', required=True, help='input image or folder')
    parser.add_argument('-o', '--output', default='results', help='output folder. Default: results')
    parser.add_argument('--model', required=True, help='checkpoint (.pth) of a WBSRResNet/WBSRRCAN supernet')
    parser.add_argument('--arch', choices=SUPERNETS, help='expected architecture (checked against the checkpoint)')
    parser.add_argument('--opt', help="training YAML whose network_g builds the network (for checkpoints "
                        "without 'wbsr' metadata and non-default sizes)")
    parser.add_argument('-s', '--scale', type=int, choices=(2, 3, 4, 8), help='expected upscale factor (checked)')
    parser.add_argument('--budget', type=budget_fraction,
                        help='target fraction of the full network FLOPs, in (0, 1]; default: Eq. 15 projection')
    parser.add_argument('--subnet', type=int, help='run every patch through this subnet index (0 = cheapest)')
    parser.add_argument('-t', '--tile', '--patch-size', dest='patch_size', type=int, default=DEFAULT_PATCH_SIZE,
                        help=f'LR patch size. Default: {DEFAULT_PATCH_SIZE}')
    parser.add_argument('--overlap', type=int, default=DEFAULT_OVERLAP,
                        help=f'least LR overlap between patches. Default: {DEFAULT_OVERLAP}')
    parser.add_argument('--fp32', action='store_true', help='full precision on CUDA (CPU is always fp32)')
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto', help='Default: auto')
    parser.add_argument('--save-map', action='store_true', help='also write NAME_map.png: subnet per patch')
    parser.add_argument('--suffix', default='out', help='output name suffix: NAME_SUFFIX.EXT. Default: out')
    parser.add_argument('--ext', choices=OUTPUT_EXTENSIONS, default='auto',
                        help='output format; auto keeps the input format (png for 16-bit/alpha). Default: auto')
    return parser


def output_extension(input_path, ext, info):
    if ext == 'auto':
        ext = osp.splitext(input_path)[1].lower().lstrip('.') or 'png'
        if info.mode == 'rgba' or info.max_value > 255:
            ext = ext if ext in ('png', 'tif', 'tiff') else 'png'
        return ext
    elif ext in OUTPUT_EXTENSIONS:
        return ext
    else:
        raise ValueError(f'unknown extension {ext!r}; expected one of {OUTPUT_EXTENSIONS}.')


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    device = select_device(args.device)
    network_opt = network_options_from_yaml(args.opt) if args.opt else None
    try:
        net, meta = load_supernet(args.model, arch=args.arch, scale=args.scale, network_opt=network_opt,
                                  device=device)
        half = device.type == 'cuda' and not args.fp32
        if half:
            net = net.half()
        engine = DynamicInferenceEngine(
            net,
            thresholds=meta.get('thresholds'),
            num_classes=len(meta['thresholds']) + 1 if meta.get('thresholds') is not None else 10,
            patch_size=args.patch_size,
            overlap=args.overlap,
            budget=args.budget,
            subnet=args.subnet)
    except (CheckpointError, ValueError, TypeError) as err:
        parser.exit(2, f'error: {err}\n')
    try:
        paths = list_images(args.input)
    except FileNotFoundError as err:
        parser.exit(2, f'error: {err}\n')
    if not paths:
        parser.exit(2, f'error: no images in {args.input}\n')
    if meta.get('thresholds') is None and args.subnet is None:
        print('note: the checkpoint stores no class thresholds; using per-image quantiles of the patch '
              'difficulties.', file=sys.stderr)
    os.makedirs(args.output, exist_ok=True)

    failed = []
    for path in tqdm(paths, unit='img', disable=len(paths) < 2):
        name = osp.splitext(osp.basename(path))[0]
        try:
            lq, info = read_image(path)
            sr, report = engine.run(lq)
            out = to_image(sr, info)
            ext = output_extension(path, args.ext, info)
            write_image_atomic(osp.join(args.output, f'{name}_{args.suffix}.{ext}'), out)
            if args.save_map:
                bgr = to_image(sr, ImageInfo('rgb', 255))
                overlay = subnet_map_overlay(bgr, report.plan, engine.scale, len(net.subnets))
                write_image_atomic(osp.join(args.output, f'{name}_map.png'), overlay)
        except (ImageReadError, OSError) as err:
            tqdm.write(f'warning: skipped {path}: {err}', file=sys.stderr)
            failed.append(path)
            continue
        except RuntimeError as err:
            if 'out of memory' not in str(err):
                raise
            tqdm.write(f'warning: skipped {path}: out of memory; try a smaller --tile.', file=sys.stderr)
            failed.append(path)
            continue
        tqdm.write(f'{name}: {report.summary()}')
    if failed:
        print(f'{len(failed)} of {len(paths)} image(s) failed.', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
