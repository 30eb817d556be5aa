"""Export subnets of a trained WBSR supernet as plain BasicSR networks: weights (.pth or .safetensors), spandrel's
layout, ONNX.

    python -m wbsr_plugin.export --model net_g_latest.pth -o exported --subnet w52d8
    python -m wbsr_plugin.export --model net_g_latest.pth -o exported --all --onnx --format safetensors
    python -m wbsr_plugin.export --model net_g_latest.pth -o w52d8.safetensors --subnet w52d8
    python -m wbsr_plugin.export --model net_g_latest.pth -o net_g.safetensors --supernet
    python -m wbsr_plugin.export --model net_g_latest.pth -o net_g.wbsr --dynamic

A subnet of width w and depth d is written as MSRResNet_x4_w52d8.pth (for a WBSRResNet), a BasicSR
checkpoint {'params': ...} that the supernet's plain BasicSR network (here MSRResNet(num_feat=w,
num_block=d, upscale=s)) loads with strict=True, or with --format safetensors as MSRResNet_x4_w52d8.safetensors
(the same tensors, and in its header the metadata that infer --model reads). --spandrel also writes RCAN
subnets in the original RCAN layout that spandrel (chaiNNer, ComfyUI) recognises, RCAN_x4_w52d10_spandrel.pth.
--onnx writes MSRResNet_x4_w52d8.onnx (input 'lq', output 'sr', dynamic height and width, the subnet's
record in metadata_props; each file is checked against PyTorch with ONNX Runtime); --fp16 a half-precision
model (_fp16.onnx), --fp16-weights one with fp16 weights and fp32 input and output (_fp16w.onnx).
--all writes every subnet plus index.json and index.md (name, width, depth, params, GFLOPs per 32x32 LR
patch, files). -o NAME.pth or NAME.safetensors with one --subnet, or with --supernet (the whole supernet with
its metadata), writes that one file. --dynamic writes a folder for dynamic inference without torch: every
subnet as ONNX and manifest.json (thresholds, class errors, FLOPs, tiling), which wbsr-run (the wbsr_runtime
package) runs with numpy and ONNX Runtime or OpenVINO.
ONNX needs the export extra: pip install -e ".[export]".
"""
import sys
from os import path as osp

import torch

import wbsr_plugin  # noqa: F401  (registers the architectures)
from wbsr_plugin.cli.common_args import CommandParser
from wbsr_plugin.cli.dynamic_export import check_dynamic_output, export_dynamic
from wbsr_plugin.cli.export_files import WEIGHTS_FORMATS, ExportFormats, export_subnets, write_index
from wbsr_plugin.cli.export_targets import export_subnet_file, supernet_file_name, weights_format_of, write_supernet
from wbsr_plugin.cli.options_yaml import network_options_from_yaml
from wbsr_plugin.inference.checkpoint import load_supernet
from wbsr_runtime.interrupts import run_interruptibly

CHECK_LQ_SIZE = (37, 53)  # odd sizes, so the dynamic axes are exercised


def build_parser():
    parser = CommandParser('export', __doc__)
    parser.add_argument('--model', required=True, help='checkpoint (.pth or .safetensors) of a WBSR supernet')
    parser.add_argument('-o', '--output', required=True, help='output folder (created if missing), or a file '
                        'NAME.pth / NAME.safetensors for one --subnet or --supernet')
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument('--subnet', action='append', help='subnet index (0 = cheapest) or name such as w52d8; '
                       'repeat for several')
    which.add_argument('--all', action='store_true', help='every subnet, plus index.json and index.md')
    which.add_argument('--dynamic', action='store_true', help='a folder for dynamic inference without torch: '
                       'every subnet as ONNX and manifest.json (run it with wbsr-run)')
    which.add_argument('--supernet', action='store_true', help='the whole supernet with its metadata, as one '
                       'weights file (to convert a checkpoint to .safetensors)')
    parser.add_argument('--format', choices=WEIGHTS_FORMATS, help='weights file format. Default: pth (BasicSR '
                        "checkpoint); in a file -o, the file's extension")
    parser.add_argument('--spandrel', action='store_true', help="also write RCAN subnets in spandrel's layout "
                        '(original RCAN keys and mean shift)')
    parser.add_argument('--onnx', action='store_true', help='also write ONNX (needs the export extra)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace files that exist (without it, an existing file stops the export before '
                        'anything is written)')
    parser.add_argument('--onnx-only', action='store_true', help='write ONNX and no weights file')
    parser.add_argument('--fp16', action='store_true', help='half-precision ONNX (weights, input and output)')
    parser.add_argument('--fp16-weights', action='store_true', help='ONNX with fp16 weights and fp32 input and '
                        'output (needs onnxconverter-common, in the export extra)')
    parser.add_argument('--no-check', action='store_true', help='skip the ONNX Runtime vs PyTorch check')
    parser.add_argument('-opt', '--opt', help="training YAML whose network_g builds the network (for checkpoints "
                        "without 'wbsr' metadata and non-default sizes)")
    return parser


def onnx_precisions(args):
    """The ONNX models the flags ask for: those of --fp16 and --fp16-weights, else fp32 with --onnx."""
    asked = tuple(p for p, on in (('fp16', args.fp16), ('fp16-weights', args.fp16_weights)) if on)
    return asked or (('fp32', ) if args.onnx or args.onnx_only else ())


def check_file_output(args, parser):
    """The weights format of a file ``-o``, after checking that the rest of the command line fits one file."""
    if args.dynamic:
        if args.spandrel or args.onnx_only or args.format or args.fp16 or args.fp16_weights:
            parser.error('--dynamic writes fp32 ONNX and a manifest; it takes no --format, --spandrel, --onnx-only, '
                         '--fp16 or --fp16-weights')
        return None
    weights_format = weights_format_of(args.output)
    if args.supernet and (args.spandrel or onnx_precisions(args)):
        parser.error('--supernet writes one weights file; --spandrel and ONNX are for subnets')
    if weights_format is None:
        return None
    if args.all or (args.subnet and len(args.subnet) != 1):
        parser.error(f'-o {args.output} names one file: give one --subnet or --supernet, or name a folder')
    if args.spandrel or onnx_precisions(args):
        parser.error(f'-o {args.output} names one weights file: --spandrel and ONNX are written into a folder')
    if args.format not in (None, weights_format):
        parser.error(f'-o {args.output} is a .{weights_format} file, but --format is {args.format}')
    return weights_format


def check_input(net):
    """The random LR image every ONNX file is checked on (odd sizes, so the dynamic axes are exercised)."""
    return torch.rand(1, net.conv_first.in_channels, *CHECK_LQ_SIZE, generator=torch.Generator().manual_seed(0))


def print_entry(entry):
    files = ', '.join(f'{name} ({entry.sizes[kind] / 1e6:.2f} MB, {entry.seconds[kind]:.2f} s)'
                      for kind, name in entry.files.items())
    check = '' if entry.onnx_max_error is None else f' | max |onnx - torch| = {entry.onnx_max_error:.2e}'
    if len(entry.onnx_errors) > 1:
        errors = ', '.join(f'{entry.files[kind]}: {error:.2e}' for kind, error in entry.onnx_errors.items())
        check += f' ({errors})'
    print(f'{entry.name}: {entry.params / 1e6:.3f} M params, {entry.gflops:.3f} GFLOPs/32x32 '
          f'({entry.percent:.1f}%) -> {files}{check}')


def run(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    file_format = check_file_output(args, parser)
    network_opt = network_options_from_yaml(args.opt) if args.opt else None
    try:
        if args.dynamic:
            check_dynamic_output(osp.abspath(args.output), args.overwrite)
        net, meta = load_supernet(args.model, network_opt=network_opt)
        if not meta and network_opt is None:
            print(f"note: {args.model} has no 'wbsr' metadata; its subnets are the paper's widths and depths.",
                  file=sys.stderr)
        if args.dynamic:
            error = export_dynamic(net, meta, args.output, overwrite=args.overwrite, source=args.model,
                                   check_lq=None if args.no_check else check_input(net))
            check = '' if error is None else f' | max |onnx - torch| = {error:.2e}'
            print(f'{type(net).__name__} x{net.upscale}, {len(net.subnets)} subnets -> {args.output}{check}')
            return
        if args.supernet:
            name = supernet_file_name(net, args.format or 'pth')
            path = args.output if file_format else osp.join(args.output, name)
            write_supernet(net, meta, path, overwrite=args.overwrite)
            print(f'{type(net).__name__} x{net.upscale} -> {path}')
            return
        if file_format:
            entry = export_subnet_file(net, args.subnet[0], args.output, overwrite=args.overwrite, source=args.model,
                                       source_meta=meta)
            print_entry(entry)
            return
        formats = ExportFormats(checkpoint=not args.onnx_only, weights_format=args.format or 'pth',
                                spandrel=args.spandrel, onnx_precisions=onnx_precisions(args))
        keys = list(range(len(net.subnets))) if args.all else args.subnet
        check_lq = None if args.no_check else check_input(net)
        exported = export_subnets(net, keys, args.output, formats=formats, check_lq=check_lq, index=args.all,
                                  overwrite=args.overwrite, source=args.model, source_meta=meta)
        if args.all:
            index_files = write_index(net, exported, args.output, source=args.model)
    except (ValueError, TypeError) as err:  # CheckpointError, ExportError, network options that do not fit
        parser.exit(2, f'error: {err}\n')
    for entry in exported:
        print_entry(entry)
    if args.all:
        print(f'index: {index_files[0]}, {index_files[1]}')


def main(argv=None):
    """The command; Ctrl-C or SIGTERM ends it with status 130 and no unfinished file."""
    return run_interruptibly(run, argv, 'export')


if __name__ == '__main__':
    sys.exit(main())
