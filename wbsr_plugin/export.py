"""Export subnets of a trained WBSR supernet as plain BasicSR checkpoints and ONNX models.

    python -m wbsr_plugin.export --model net_g_latest.pth -o exported --subnet w52d8
    python -m wbsr_plugin.export --model net_g_latest.pth -o exported --all --onnx

A subnet of width w and depth d is written as MSRResNet_x4_w52d8.pth (for a WBSRResNet), a BasicSR
checkpoint {'params': ...} that the supernet's plain BasicSR network (here MSRResNet(num_feat=w,
num_block=d, upscale=s)) loads with strict=True, and with --onnx as MSRResNet_x4_w52d8.onnx (input
'lq', output 'sr', dynamic height and width; each file is checked against PyTorch with ONNX
Runtime). --all writes every subnet plus index.json and index.md (name, width, depth, params,
GFLOPs per 32x32 LR patch, files).
ONNX needs the export extra: pip install -e ".[export]".
"""
import sys

import torch

import wbsr_plugin  # noqa: F401  (registers the architectures)
from wbsr_plugin.cli.common_args import CommandParser
from wbsr_plugin.cli.export_files import export_subnets, write_index
from wbsr_plugin.cli.interrupts import run_interruptibly
from wbsr_plugin.cli.options_yaml import network_options_from_yaml
from wbsr_plugin.inference.checkpoint import load_supernet

CHECK_LQ_SIZE = (37, 53)  # odd sizes, so the dynamic axes are exercised


def build_parser():
    parser = CommandParser('export', __doc__)
    parser.add_argument('--model', required=True, help='checkpoint (.pth) of a WBSR supernet')
    parser.add_argument('-o', '--output', required=True, help='output folder (created if missing)')
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument('--subnet', action='append', help='subnet index (0 = cheapest) or name such as w52d8; '
                       'repeat for several')
    which.add_argument('--all', action='store_true', help='every subnet, plus index.json and index.md')
    parser.add_argument('--onnx', action='store_true', help='also write ONNX (needs the export extra)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace files that exist (without it, an existing file stops the export before '
                        'anything is written)')
    parser.add_argument('--onnx-only', action='store_true', help='write ONNX and no BasicSR checkpoint')
    parser.add_argument('--fp16', action='store_true', help='half-precision ONNX (weights, input and output)')
    parser.add_argument('--no-check', action='store_true', help='skip the ONNX Runtime vs PyTorch check')
    parser.add_argument('-opt', '--opt', help="training YAML whose network_g builds the network (for checkpoints "
                        "without 'wbsr' metadata and non-default sizes)")
    return parser


def run(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    onnx = args.onnx or args.onnx_only or args.fp16
    network_opt = network_options_from_yaml(args.opt) if args.opt else None
    try:
        net, meta = load_supernet(args.model, network_opt=network_opt)
        if not meta and network_opt is None:
            print(f"note: {args.model} has no 'wbsr' metadata; its subnets are the paper's widths and depths.",
                  file=sys.stderr)
        keys = list(range(len(net.subnets))) if args.all else args.subnet
        generator = torch.Generator().manual_seed(0)
        check_lq = None if args.no_check else torch.rand(1, net.conv_first.in_channels, *CHECK_LQ_SIZE,
                                                         generator=generator)
        exported = export_subnets(net, keys, args.output, checkpoint=not args.onnx_only, onnx=onnx, fp16=args.fp16,
                                  check_lq=check_lq, index=args.all, overwrite=args.overwrite)
        if args.all:
            index_files = write_index(net, exported, args.output, source=args.model)
    except (ValueError, TypeError) as err:  # CheckpointError, ExportError, network options that do not fit
        parser.exit(2, f'error: {err}\n')
    for entry in exported:
        files = ', '.join(f'{name} ({entry.sizes[kind] / 1e6:.2f} MB, {entry.seconds[kind]:.2f} s)'
                          for kind, name in entry.files.items())
        check = '' if entry.onnx_max_error is None else f' | max |onnx - torch| = {entry.onnx_max_error:.2e}'
        print(f'{entry.name}: {entry.params / 1e6:.3f} M params, {entry.gflops:.3f} GFLOPs/32x32 '
              f'({entry.percent:.1f}%) -> {files}{check}')
    if args.all:
        print(f'index: {index_files[0]}, {index_files[1]}')


def main(argv=None):
    """The command; Ctrl-C or SIGTERM ends it with status 130 and no unfinished file."""
    return run_interruptibly(run, argv, 'export')


if __name__ == '__main__':
    sys.exit(main())
