"""torch.compile on the CPU against eager torch (fp32, channels-last), per subnet and input shape.

    python benchmarks/bench_torch_compile.py --threads 2

For SRResNet x4 with the paper's widths (random weights; speed does not depend on them), the cheapest subnet, a
middle one and the full network run eagerly and compiled by TorchInductor (``torch.compile``, default mode,
``dynamic=False``: one graph per shape, as the engine's fixed batch shapes would give). Compile time (the first
call of each shape) is reported apart from the steady state; times are medians of ``--repeat`` calls, eager and
compiled interleaved. A runtime joins the engine only where it wins: this table decides whether torch.compile does.
"""
import argparse
import statistics
import time

import torch

import wbsr_plugin  # noqa: F401
from wbsr_plugin.archs.channels_last import to_channels_last

from basicsr.archs import build_network

SHAPES = ('1x24x24', '8x64x64', '1x120x160')  # a tiny image, the engine's patch batch, a small image


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--subnets', type=int, nargs='+', default=[0, 4, 8])
    parser.add_argument('--shapes', nargs='+', default=list(SHAPES), help='inputs NxHxW (3 channels)')
    parser.add_argument('--backend', default='inductor', help="torch.compile's backend. Default: inductor")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build_network({'type': 'WBSRResNet', 'upscale': 4}).eval()
    print(f'torch {torch.__version__}, {args.threads} threads, SRResNet x4 paper widths, fp32 channels-last, '
          f'backend {args.backend}')
    print('\n| subnet | input | eager (ms) | compiled (ms) | speedup | first compiled call (s) |')
    print('|---|---|---|---|---|---|')
    for index in args.subnets:
        with torch.no_grad():
            eager = to_channels_last(net.extract_subnet(index).eval())
        compiled = torch.compile(eager, dynamic=False, backend=args.backend)
        name = net.subnets[index].name
        with torch.inference_mode():
            for n, h, w in (tuple(int(v) for v in shape.split('x')) for shape in args.shapes):
                x = torch.rand(n, 3, h, w).contiguous(memory_format=torch.channels_last)
                start = time.perf_counter()
                compiled(x)
                first = time.perf_counter() - start
                eager(x)
                times = {'eager': [], 'compiled': []}
                for _ in range(args.repeat):
                    for label, module in (('eager', eager), ('compiled', compiled)):
                        start = time.perf_counter()
                        module(x)
                        times[label].append(time.perf_counter() - start)
                e, c = (statistics.median(times[k]) for k in ('eager', 'compiled'))
                print(f'| {name} | {n}x3x{h}x{w} | {1e3 * e:.1f} | {1e3 * c:.1f} | {e / c:.2f}x | {first:.1f} |',
                      flush=True)


if __name__ == '__main__':
    main()
