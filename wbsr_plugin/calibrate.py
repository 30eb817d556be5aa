"""Measure a checkpoint's class errors on your own photos, and write a new checkpoint that plans by them.

    python -m wbsr_plugin.calibrate --model net_g.pth --hr photos/ -o net_g_photos.pth [--lr photos_x4/]

A quality target (``infer --max-loss``, the default policy) and a calibrated FLOPs budget plan by every
subnet's expected error per difficulty class. This command measures it on ``--patches`` random patches of
the HR images in ``--hr`` (LR made by MATLAB bicubic, or read from ``--lr`` with the same names), with the
checkpoint's own class thresholds and patch size, and writes a copy of the checkpoint with the new class
errors, their counts and what they were measured on (``'wbsr'`` entry, ``'calibration'``). The more patches
per class, the tighter the bound the engine plans with; the subnets' correlation with the full network's error is
taken over images of several patches each, so give it a folder of fewer images than patches (docs/inference.md).
The output is never overwritten: an existing ``-o`` is an error, and the file appears only once complete.
"""
import datetime
import sys
from os import path as osp

import numpy as np
import torch

import wbsr_plugin  # noqa: F401  (registers the architectures)
from wbsr_plugin.cli.common_args import CommandParser, add_model_arguments, patch_side
from wbsr_plugin.cli.folder_inference import status_line
from wbsr_plugin.cli.image_io import read_image
from wbsr_plugin.cli.options_yaml import network_options_from_yaml
from wbsr_plugin.inference.calibration import measure_class_errors, sample_patch_pairs
from wbsr_plugin.inference.checkpoint import WBSR_KEY, CheckpointError, load_supernet, make_wbsr_meta
from wbsr_plugin.utils.checkpoint_files import load_weights_file
from wbsr_runtime.arg_types import positive_int
from wbsr_runtime.class_errors import CALIBRATION_CONTEXT
from wbsr_runtime.class_thresholds import ClassThresholds
from wbsr_runtime.files import atomic_path, list_images
from wbsr_runtime.images import ImageReadError

from basicsr.utils.matlab_functions import imresize

DEFAULT_PATCHES = 512


def build_parser():
    parser = CommandParser('calibrate', __doc__)
    add_model_arguments(parser)
    parser.add_argument('--hr', required=True, help='folder of HR images (or one image) to calibrate on')
    parser.add_argument('--lr', help='folder of their LR images (same names, or NAMEx<scale>). Default: MATLAB '
                        'bicubic of the HR images')
    parser.add_argument('-o', '--output', required=True, help='new checkpoint (.pth); must not exist')
    parser.add_argument('--patches', type=positive_int, default=DEFAULT_PATCHES,
                        help=f'calibration patches, spread evenly over the images. Default: {DEFAULT_PATCHES}')
    parser.add_argument('-t', '--patch-size', dest='patch_size', type=patch_side,
                        help="LR patch side. Default: the checkpoint's own")
    parser.add_argument('--seed', type=int, default=0, help='seed of the patch positions. Default: 0')
    parser.add_argument('--threads', type=positive_int, help="CPU threads. Default: torch's")
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto',
                        help='Default: auto (CUDA when available)')
    return parser


def bicubic_lr(hr, scale):
    """MATLAB-bicubic LR of an HR image (H x W x 3 float32 in [0, 1]), rounded to 8-bit levels."""
    return np.clip(np.round(imresize(hr, 1 / scale) * 255.), 0, 255).astype(np.float32) / 255.


def image_loaders(hr_dir, lr_dir, scale, progress):
    """One loader per HR image: ``() -> (lq, gt)``, H x W x 3 BGR float32 in [0, 1] (LR by MATLAB bicubic
    unless ``lr_dir`` holds it); ``progress(name)`` is called as each is read."""
    lr_paths = {}
    for path in (list_images(lr_dir) if lr_dir else []):
        lr_paths.setdefault(osp.splitext(osp.basename(path))[0], path)

    def bgr(path):
        image = read_image(path)[0][0].permute(1, 2, 0).numpy()[:, :, ::-1]
        return np.ascontiguousarray(image, dtype=np.float32)

    def loader(hr_path):
        def load():
            progress(osp.basename(hr_path))
            hr = bgr(hr_path)
            h, w = hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale
            hr = hr[:h, :w]
            if not lr_dir:
                return bicubic_lr(hr, scale), hr
            name = osp.splitext(osp.basename(hr_path))[0]
            lr_path = lr_paths.get(name) or lr_paths.get(f'{name}x{scale}')
            if lr_path is None:
                raise ImageReadError(f'--lr: no LR image for {hr_path} in {lr_dir}')
            return bgr(lr_path), hr
        return load

    return [loader(path) for path in list_images(hr_dir)]


def calibrated_checkpoint(path, net, meta, errors):
    """The checkpoint of ``path`` with ``errors`` (:class:`ClassErrors`) in its ``'wbsr'`` entry."""
    ckpt = dict(load_weights_file(path))
    thresholds = ClassThresholds.from_meta(meta)
    new_meta = make_wbsr_meta(net, thresholds, meta.get('patch_size') or errors.source['patch_size'],
                              num_classes=thresholds.num_classes, iteration=meta.get('iter'), class_errors=errors)
    ckpt[WBSR_KEY] = {**meta, **new_meta}
    return ckpt


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if osp.splitext(args.output)[1] != '.pth':
        parser.error(f'-o/--output: the new checkpoint is a .pth file, got {args.output!r}')
    if osp.exists(args.output):
        parser.error(f'-o/--output: {args.output} exists; calibrate never overwrites, name another file')
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device('cuda' if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available())
                          else 'cpu')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device: cuda is not available here')
    network_opt = network_options_from_yaml(args.opt) if args.opt else None
    try:
        net, meta = load_supernet(args.model, arch=args.arch, scale=args.scale, network_opt=network_opt,
                                  device=device)
    except CheckpointError as err:
        parser.error(f'--model: {err}')
    thresholds = ClassThresholds.from_meta(meta)
    if thresholds is None:
        parser.error(f'--model: {args.model} stores no class thresholds, so its patches have no classes to '
                     'calibrate (train it with this package, or pass a checkpoint with a \'wbsr\' entry)')
    patch_size = args.patch_size or meta.get('patch_size') or 64
    try:
        images = image_loaders(args.hr, args.lr, net.upscale, lambda name: status_line(
            f'reading {name}', file=sys.stderr))
        if not images:
            parser.error(f'--hr: no images in {args.hr}')
        status_line(f'sampling {args.patches} patches of {patch_size} LR px from {len(images)} image(s)',
                    file=sys.stderr)
        lq, gt, ids = sample_patch_pairs(images, patch_size, net.upscale, args.patches, args.seed, with_images=True,
                                         context=CALIBRATION_CONTEXT)
    except FileNotFoundError as err:
        parser.error(f'--hr/--lr: {err}')
    except (ImageReadError, ValueError) as err:
        parser.error(f'--hr: {err}')
    step = max(1, len(lq) // 10)

    def progress(done, total):
        if done == total or done // step != (done - 16) // step:
            status_line(f'measured {done}/{total} patches through {len(net.subnets)} subnets', file=sys.stderr)

    source = {'data': osp.abspath(args.hr), 'data_images': len(images),
              'lr': osp.abspath(args.lr) if args.lr else f'MATLAB bicubic x{net.upscale}', 'seed': args.seed,
              'by': 'calibrate', 'from': osp.basename(args.model),
              'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}
    errors = measure_class_errors(net, lq, gt, thresholds_only(thresholds), ids, source, progress=progress)
    try:
        with atomic_path(args.output, replace=False) as tmp:
            torch.save(calibrated_checkpoint(args.model, net, meta, errors), tmp)
    except FileExistsError:
        parser.error(f'-o/--output: {args.output} appeared while calibrating; it was kept, nothing written')
    print(f'wrote {args.output}: {errors.reliability()}')
    return 0


def thresholds_only(thresholds):
    """The thresholds alone (the class errors are being measured)."""
    return ClassThresholds.of(thresholds.as_table() or list(thresholds.values))


if __name__ == '__main__':
    sys.exit(main())
