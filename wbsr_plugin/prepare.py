"""Data preparation for WBSR training: ``python -m wbsr_plugin.prepare <subcommand> ...``.

Subcommands (see docs/data.md):

* ``subimages``  crop images into overlapping sub-images (BasicSR's extract_subimages.py)
* ``downsample`` LR images with BasicSR's MATLAB-bicubic ``imresize``
* ``lmdb``       an LMDB in BasicSR's layout (data.mdb, lock.mdb, meta_info.txt)
* ``index``      the HES index of a paired dataset (folder or LMDB)
* ``stats``      class thresholds, histogram, flat/edge fractions and a grid of example patches
"""
import sys
from os import path as osp

if not __package__:  # run as a file: import the package, not the files beside this one
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))

import wbsr_plugin  # noqa: E402, F401  (compatibility fixes before basicsr is used)
from wbsr_plugin.cli.common_args import CommandParser  # noqa: E402
from wbsr_plugin.cli.options_yaml import read_option_file  # noqa: E402
from wbsr_plugin.data import prepare_util  # noqa: E402
from wbsr_plugin.data.difficulty import default_stride  # noqa: E402
from wbsr_plugin.data.hes import lq_patch_size  # noqa: E402
from wbsr_plugin.data.hes_index import build_index, default_index_path  # noqa: E402
from wbsr_runtime.arg_types import name_part_problem  # noqa: E402


def _dataset_opt(args):
    if args.opt is not None:
        full = read_option_file(args.opt, '-opt')
        if not isinstance(full.get('datasets'), dict) or not isinstance(full['datasets'].get('train'), dict):
            raise prepare_util.PreparationError(f'-opt: {args.opt} has no datasets.train section.')
        opt = dict(full['datasets']['train'])
        opt.setdefault('scale', full.get('scale'))
        if args.scale is not None:
            opt['scale'] = args.scale
        if args.gt_size is not None:
            opt['gt_size'] = args.gt_size
        return opt
    missing = [flag for flag, value in (('--gt', args.gt), ('--lq', args.lq), ('--scale', args.scale),
                                        ('--gt-size', args.gt_size)) if value is None]
    if missing:
        raise prepare_util.PreparationError(f"give -opt train.yml or all of {', '.join(missing)}.")
    backend = 'lmdb' if args.lq.rstrip('/').endswith('.lmdb') else 'disk'
    opt = {'dataroot_gt': args.gt, 'dataroot_lq': args.lq, 'io_backend': {'type': backend}, 'scale': args.scale,
           'gt_size': args.gt_size, 'filename_tmpl': args.filename_tmpl}
    if args.meta_info_file is not None:
        opt['meta_info_file'] = args.meta_info_file
    return opt


def filename_template(text):
    """``--filename-tmpl``: a part of a file name (no separator, '..' or control characters) that holds ``{}``."""
    import argparse
    problem = name_part_problem(text) or (None if '{}' in text else f"expected a template holding '{{}}', got {text!r}")
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def cmd_subimages(args):
    count = prepare_util.extract_subimages(args.input, args.output, args.crop_size, args.step, args.thresh_size,
                                           args.compression, args.n_thread)
    print(f'Wrote {count} sub-images to {args.output}.')


def cmd_downsample(args):
    count = prepare_util.downsample(args.input, args.output, args.scale, args.n_thread)
    print(f'Wrote {count} x{args.scale} LR images to {args.output}.')


def cmd_lmdb(args):
    count = prepare_util.make_lmdb(args.input, args.output, args.compress_level, args.n_thread)
    print(f'Wrote {count} images to {args.output}.')


def cmd_index(args):
    opt = _dataset_opt(args)
    patch_size = lq_patch_size(opt['gt_size'], opt['scale'])
    stride = default_stride(patch_size, args.stride if args.stride is not None else opt.get('hes_stride'))
    index_path = args.output or opt.get('hes_index_path') or default_index_path(opt, patch_size, stride)
    index = build_index(opt, index_path, stride=stride, progress=True)
    print(f'HES index: {len(index)} candidate {patch_size}x{patch_size} LR patches of {len(index.lq_paths)} images '
          f'(stride {stride}) in {index.meta["build_seconds"]:.1f} s -> {index_path}')


def cmd_stats(args):
    stats = prepare_util.class_stats(args.index, args.num_classes, args.flat_below, args.edge_from)
    index = stats['index']
    print(f'{args.index}: {stats["num_candidates"]} candidates, {index.patch_size}x{index.patch_size} LR patches, '
          f'stride {index.meta["stride"]}, {len(index.lq_paths)} images')
    print(f'{"class":>5} {"from score":>10} {"patches":>8} {"share":>7}')
    lower = [float('-inf')] + [float(t) for t in stats['thresholds']]
    for k, (low, count, share) in enumerate(zip(lower, stats['counts'], stats['fractions'])):
        print(f'{k:>5} {low:>10.2f} {int(count):>8} {100 * share:>6.1f}%')
    print(f'flat (difficulty < {args.flat_below:g}): {100 * stats["flat"]:.1f}%   '
          f'edge/texture (difficulty >= {args.edge_from:g}): {100 * stats["edge"]:.1f}%')
    print('score quantiles: ' + ', '.join(f'{100 * q:g}%: {v:.2f}' for q, v in stats['quantiles'].items()))
    if args.grid is not None:
        prepare_util.example_grid(index, stats['thresholds'], args.grid, per_class=args.per_class)
        print(f'Example patches per class (row k = class k) saved to {args.grid}')


def build_parser():
    parser = CommandParser('prepare', __doc__)
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('subimages', help='crop images into overlapping sub-images')
    p.add_argument('-i', '--input', required=True, help='folder of images')
    p.add_argument('-o', '--output', required=True, help='output folder')
    p.add_argument('--crop-size', type=int, default=480, help='sub-image side (480 for HR, 480/scale for LR)')
    p.add_argument('--step', type=int, default=240, help='step between sub-images (240 for HR)')
    p.add_argument('--thresh-size', type=int, default=0, help='border remainder that adds a flush sub-image')
    p.add_argument('--compression', type=int, default=3, choices=range(10), help='PNG compression level')
    p.add_argument('--n-thread', type=int, default=1, help='worker processes')
    p.set_defaults(func=cmd_subimages)

    p = sub.add_parser('downsample', help='MATLAB-bicubic LR images')
    p.add_argument('-i', '--input', required=True, help='folder of HR images')
    p.add_argument('-o', '--output', required=True, help='output folder')
    p.add_argument('-s', '--scale', type=int, default=4, choices=[2, 3, 4, 8], help='downsampling factor')
    p.add_argument('--n-thread', type=int, default=1, help='worker processes')
    p.set_defaults(func=cmd_downsample)

    p = sub.add_parser('lmdb', help="LMDB in BasicSR's layout")
    p.add_argument('-i', '--input', required=True, help='folder of images')
    p.add_argument('-o', '--output', required=True, help='output, ending in .lmdb')
    p.add_argument('--compress-level', type=int, default=1, choices=range(10), help='PNG compression level')
    p.add_argument('--n-thread', type=int, default=1, help='reader processes')
    p.set_defaults(func=cmd_lmdb)

    p = sub.add_parser('index', help='build the HES index of a paired dataset')
    p.add_argument('-opt', '--opt', help='training YAML: use its datasets.train (and scale)')
    p.add_argument('--gt', help='dataroot_gt (folder or .lmdb)')
    p.add_argument('--lq', help='dataroot_lq (folder or .lmdb)')
    p.add_argument('-s', '--scale', type=int, help='scale')
    p.add_argument('--gt-size', type=int, help='gt_size of the training patches')
    p.add_argument('--stride', type=int, help='grid step in LR pixels (default: half the LR patch)')
    p.add_argument('--meta-info-file', help='meta_info_file (disk backend)')
    p.add_argument('--filename-tmpl', default='{}', type=filename_template,
                   help="filename_tmpl (disk backend): a file name part holding '{}'")
    p.add_argument('-o', '--output', help='index file (default: beside dataroot_lq, where training looks)')
    p.set_defaults(func=cmd_index)

    p = sub.add_parser('stats', help='class histogram, thresholds and example patches of an index')
    p.add_argument('index', help='index file (.npz)')
    p.add_argument('-k', '--num-classes', type=int, default=10, help='number of classes K')
    p.add_argument('--flat-below', type=float, default=20.0, help='difficulty below which a patch is flat')
    p.add_argument('--edge-from', type=float, default=60.0, help='difficulty from which a patch is edge/texture')
    p.add_argument('--grid', help='save a grid of example patches per class to this image file')
    p.add_argument('--per-class', type=int, default=8, help='example patches per class in the grid')
    p.set_defaults(func=cmd_stats)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except prepare_util.AlreadyDone as done:
        print(done)
        return 0
    except (prepare_util.PreparationError, ValueError, FileNotFoundError, PermissionError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2  # a bad input or option (docs/safety.md)
    return 0


if __name__ == '__main__':
    sys.exit(main())
