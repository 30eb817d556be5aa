"""Export every subnet of a supernet: time, file sizes, and ONNX Runtime against PyTorch.

    python benchmarks/bench_export.py [--model net_g.pth] [--arch WBSRResNet -s 4] [--threads 2]

Without --model, a full-size supernet with random weights is built (the paper's sizes). Every
subnet is written as a BasicSR checkpoint and as float32 ONNX (the same code as
``python -m wbsr_plugin.export --all --onnx``) into a temporary folder; the ONNX model then runs in
ONNX Runtime (CPU) on a real photograph of odd size (tests/fixtures/hr/astronaut.png cropped to
87x95 (width x height), as the LR input) and is compared with the subnet in PyTorch. Needs the
export extra.
"""
import argparse
import tempfile
from os import path as osp

import torch

import wbsr_plugin  # noqa: F401
from wbsr_plugin.archs.supernet_util import supernet_types
from wbsr_plugin.cli.export_files import export_subnets
from wbsr_plugin.cli.image_io import read_image
from wbsr_plugin.inference.checkpoint import load_supernet

from basicsr.archs import build_network

PHOTO = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tests', 'fixtures', 'hr', 'astronaut.png')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', help='a trained checkpoint; default: random weights')
    parser.add_argument('--arch', choices=supernet_types(), default='WBSRResNet')
    parser.add_argument('-s', '--scale', type=int, default=4)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model:
        net, _ = load_supernet(args.model)
    else:
        net = build_network({'type': args.arch, 'upscale': args.scale}).eval()
    lq = read_image(PHOTO)[0][..., :95, :87]

    with tempfile.TemporaryDirectory() as folder:
        exported = export_subnets(net, range(len(net.subnets)), folder, onnx=True, check_lq=lq)
    source = args.model or 'random weights'
    print(f'{type(net).__name__} x{net.upscale} ({source}); ONNX checked on a {lq.shape[-1]}x{lq.shape[-2]} '
          f'photo crop; {args.threads} threads\n')
    print('| subnet | params (M) | GFLOPs (32x32) | .pth MB | .pth s | .onnx MB | .onnx s | max abs error |')
    print('|---|---|---|---|---|---|---|---|')
    for e in exported:
        print(f"| {e.name} | {e.params / 1e6:.3f} | {e.gflops:.3f} | {e.sizes['checkpoint'] / 1e6:.2f} | "
              f"{e.seconds['checkpoint']:.2f} | {e.sizes['onnx'] / 1e6:.2f} | {e.seconds['onnx']:.2f} | "
              f'{e.onnx_max_error:.1e} |')
    total = sum(sum(e.seconds.values()) for e in exported)
    print(f'\ntotal export time {total:.1f} s; largest |ONNX - PyTorch| {max(e.onnx_max_error for e in exported):.1e}')


if __name__ == '__main__':
    main()
