"""Dynamic inference in every runtime against two baselines: the plain network in torch fp32, and the plain network
in the same runtime (its fastest execution: whole image or tiled).

    python benchmarks/bench_runtimes.py --threads 2 --sizes 24x24 160x120 480x270 960x540
    python benchmarks/bench_runtimes.py --runtimes "openvino bf16" --sizes 960x540 --repeat 1

For each runtime and LR size (SRResNet x4 with the paper's widths, or --arch WBSRRCAN; random weights unless
--model), one table row per setting: the engine by FLOPs at --budget, the same planned by this runtime's measured
costs (never slower than that runtime's plain execution), Eq. 15 planned by time, and the engine's defaults
(Eq. 15 by FLOPs). Times are medians of --repeat rounds after one untimed call per shape; each round calls the
plain network (whole and tiled) and every setting once in turn, so that all see the same load; first-call (compile)
seconds are reported apart. The LR image is a crop of a
photo scikit-image ships (tiled when the size asks for more).
"""
import argparse
import platform
import statistics
import time

import numpy as np
import torch

import wbsr_plugin  # noqa: F401
from wbsr_plugin.cli.evaluation import whole_image_runner
from wbsr_plugin.inference.checkpoint import engine_options, load_supernet
from wbsr_plugin.inference.cost_model import load_or_measure
from wbsr_plugin.inference.engine import DynamicInferenceEngine
from wbsr_plugin.inference.runtimes import TORCH_FP32, Runtime, candidate_runtimes

from basicsr.archs import build_network


def photo_lq(width, height):
    """An LR image (1, 3, h, w) in [0, 1] from scikit-image's astronaut and coffee photos (tiled as needed)."""
    from skimage import data
    tile = np.concatenate([data.astronaut()[:400, :600], data.coffee()[:400, :600]], axis=1).astype(np.float32) / 255
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    image = np.tile(tile, reps)[:height, :width]
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]


def timed(fn, repeat):
    first = time.perf_counter()
    fn()
    first = time.perf_counter() - first
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def interleaved(fns, repeat):
    """``({name: first-call seconds}, {name: median seconds})`` of the callables ``fns``, timed in ``repeat``
    rounds that call each once in turn (side by side: every one sees the same load and the same caches)."""
    firsts = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        firsts[name] = time.perf_counter() - start
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return firsts, {name: statistics.median(t) for name, t in times.items()}


def shapes_section(net, runtimes, repeat):
    """OpenVINO's dynamic-shape model (what the engine compiles) against a model compiled for one static shape:
    steady-state ms, and the first call of a shape (dynamic) or the compile (static), for the cheapest and the full
    subnet on the engine's batch of 8 patches of 64 and on one 120x160 image."""
    import openvino as ov

    from wbsr_plugin.inference.cost_model import cache_dir
    from wbsr_plugin.inference.runtimes import CompiledSubnets
    print('\n| runtime | subnet | input | dynamic: first call (s) | dynamic (ms) | static: compile (s) | static (ms) |')
    print('|---|---|---|---|---|---|---|')
    for runtime in (r for r in runtimes if r.name == 'openvino'):
        compiler = CompiledSubnets(runtime, cache_dir() + '/runtimes')
        core = ov.Core()
        config = {'INFERENCE_PRECISION_HINT': 'bf16' if runtime.precision == 'bf16' else 'f32',
                  'INFERENCE_NUM_THREADS': compiler.threads, 'PERFORMANCE_HINT': 'LATENCY', 'NUM_STREAMS': 1}
        for index in (0, len(net.subnets) - 1):
            with torch.no_grad():
                module = net.extract_subnet(index).eval()
            xml = compiler._model_file(module, 3, '.xml')
            dynamic = compiler.compile(module)
            for shape in ((8, 3, 64, 64), (1, 3, 120, 160)):
                x = torch.rand(*shape)
                first, steady = timed(lambda: dynamic(x), repeat)
                model = core.read_model(xml)
                model.reshape({0: list(shape)})
                start = time.perf_counter()
                request = core.compile_model(model, 'CPU', config).create_infer_request()
                compile_s = time.perf_counter() - start
                array = x.numpy()
                _, static = timed(lambda: request.infer({0: array}), repeat)
                print(f'| {runtime} | {net.subnets[index].name} | {"x".join(map(str, shape))} | {first:.2f} | '
                      f'{1e3 * steady:.1f} | {compile_s:.2f} | {1e3 * static:.1f} |', flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', default='WBSRResNet', choices=('WBSRResNet', 'WBSRRCAN'))
    parser.add_argument('--model', help='a trained checkpoint (default: random weights)')
    parser.add_argument('--sizes', nargs='+', default=['24x24', '160x120', '480x270'], help='LR WIDTHxHEIGHT')
    parser.add_argument('--runtimes', nargs='+', help='e.g. "openvino bf16" (default: every installed one)')
    parser.add_argument('--budget', type=float, default=0.6)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--section', choices=('engine', 'shapes'), default='engine',
                        help="engine: the rows above; shapes: OpenVINO's dynamic shapes against static ones")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model:
        net, meta = load_supernet(args.model)
        stored = engine_options(meta)
    else:
        torch.manual_seed(0)
        net, stored = build_network({'type': args.arch, 'upscale': 4}).eval(), {}
    runtimes = ([Runtime(*text.split()) for text in args.runtimes] if args.runtimes
                else candidate_runtimes('cpu'))
    print(f'{args.arch} x4 ({"random weights" if not args.model else args.model}), {args.threads} threads, '
          f'{platform.processor() or platform.machine()}, torch {torch.__version__}, budget {args.budget}')
    if args.section == 'shapes':
        return shapes_section(net, runtimes, args.repeat)
    plain_torch = whole_image_runner(net)
    torch_tiles = DynamicInferenceEngine(net, subnet=len(net.subnets) - 1, whole_image_fallback=False, **stored)
    tables = {}
    for runtime in runtimes:
        start = time.perf_counter()
        tables[runtime] = load_or_measure(net, 'cpu', runtime=runtime)
        print(f'cost table of {runtime}: {time.perf_counter() - start:.1f} s (0 when cached)')
    print('\n| runtime | LR | setting | first call (s) | ms | vs fastest plain torch fp32 '
          '| vs fastest plain in this runtime |')
    print('|---|---|---|---|---|---|---|')
    for size in args.sizes:
        w, h = (int(v) for v in size.split('x'))
        lq = photo_lq(w, h)
        _, torch_whole = timed(lambda: plain_torch(lq), args.repeat)
        _, torch_tiled = timed(lambda: torch_tiles.run(lq), args.repeat)
        torch_plain = min(torch_whole, torch_tiled)  # the fastest plain execution in torch fp32
        for runtime in runtimes:
            opts = dict(stored, runtime=None if runtime == TORCH_FP32 else runtime, watch_weights=False)  # as infer
            whole = DynamicInferenceEngine(net, subnet=len(net.subnets) - 1, **opts)
            tiled = DynamicInferenceEngine(net, subnet=len(net.subnets) - 1, whole_image_fallback=False, **opts)
            settings = {
                f'budget {args.budget} by FLOPs': DynamicInferenceEngine(net, budget=args.budget, **opts),
                f'budget {args.budget} by time': DynamicInferenceEngine(net, budget=args.budget,
                                                                       cost_table=tables[runtime], **opts),
                'Eq. 15 by time': DynamicInferenceEngine(net, cost_table=tables[runtime], **opts),
                'defaults (Eq. 15 by FLOPs)': DynamicInferenceEngine(net, **opts),
            }
            calls = {'plain whole': lambda: whole.run_whole(lq, len(net.subnets) - 1),
                     'plain tiled': lambda: tiled.run(lq)}
            calls.update({label: (lambda e=engine: e.run(lq)) for label, engine in settings.items()})
            firsts, seconds = interleaved(calls, args.repeat)
            plain = min(seconds['plain whole'], seconds['plain tiled'])
            which = 'whole' if seconds['plain whole'] <= seconds['plain tiled'] else 'tiled'
            print(f'| {runtime} | {w}x{h} | plain ({which}) | | {1e3 * plain:.1f} | {torch_plain / plain:.2f}x | '
                  '1.00x |')
            for label in settings:
                print(f'| {runtime} | {w}x{h} | {label} | {firsts[label]:.2f} | {1e3 * seconds[label]:.1f} | '
                      f'{torch_plain / seconds[label]:.2f}x | {plain / seconds[label]:.2f}x |', flush=True)


if __name__ == '__main__':
    main()
