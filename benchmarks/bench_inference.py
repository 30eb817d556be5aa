"""Wall-clock speed of dynamic inference against the plain network, side by side in one process.

    python benchmarks/bench_inference.py --device cpu                     # 2-core sizes (see --lq-sizes)
    python benchmarks/bench_inference.py --device cuda                    # 480x270 and 960x540, fp16 and fp32
    python benchmarks/bench_inference.py --device cpu --image photo.jpg --arch WBSRRCAN --widths 32 48 64

For every network (SRResNet / RCAN x4 with the paper's widths [36, 52, 64] and the aligned widths
[32, 48, 64]), LR size and precision it times on the same LR image:
  plain, whole image   BasicSR's MSRResNet / RCAN with the supernet's weights on the whole image (channels-last),
  plain, tiled         the engine's full subnet on every patch (tiling forced: the plain network as Real-ESRGAN's
                       ``--tile`` runs it); the faster of the two is the fastest plain execution,
  Eq. 15               the engine's default projection (its whole-image rule included),
  budget b             the engine with ``budget=b`` (a share of the FLOPs),
  latency b            the engine with a latency budget (``budget=b, budget_unit='time'``; ``--latency-budgets``),
  quality d dB         the engine with a quality target (``max_loss=d``; ``--max-loss``, with ``--model``'s class
                       errors),
  ..., VARIANT         each of these again with an engine option of ``--variants`` on: cuda-graphs (the default,
                       on CUDA), pad-batches (``pad_batches``), pad-widths (zero-padded to multiples of 8,
                       (``pad_widths=8``),
and prints the time, the speedup over both plain executions, the FLOPs ratio, the efficiency (speedup over the
whole image x FLOPs ratio: 1 = as fast as the FLOPs promise), the time this device's cost table predicts
(cached; with ``--plan-by time`` it also chooses the plans) and where the engine's time goes: plan (tiling,
difficulty, projection), patch gathering, subnet forwards and stitch (overhead: all but the forwards, as a share
of the four). A last table sums each configuration up: the slowest engine row against the fastest plain
execution, the latency budgets' measured share of it, and the median error of the predictions. Weights are
random (speed does not depend on their values); thresholds are per-image quantiles (``--model`` gives a
checkpoint's, and its class errors). ``--section tiling`` sweeps patch size and overlap; ``--section widths``
times every subnet on the whole image. Every timing alternates with that of its baselines, each round in another
order, so a ratio compares runs of the same moment.
"""
import argparse
import platform
import statistics
import time

import cv2
import numpy as np
import torch

import wbsr_plugin  # noqa: F401
from wbsr_plugin.archs.channels_last import to_channels_last
from wbsr_plugin.archs.supernet_util import supernet_class, supernet_types
from wbsr_plugin.inference.checkpoint import engine_options, load_supernet
from wbsr_plugin.inference.cost_model import load_or_measure
from wbsr_plugin.inference.engine import DynamicInferenceEngine
from wbsr_runtime.tile_geometry import DEFAULT_OVERLAP, DEFAULT_PATCH_SIZE
from wbsr_runtime.time_rules import PlanTimer

from basicsr.archs import build_network

SECTIONS = ('main', 'tiling', 'widths', 'all')
# --variants: engine options whose best value is a property of the device (off by default in the engine)
VARIANTS = {'cuda-graphs': {'cuda_graphs': True}, 'pad-batches': {'pad_batches': True},
            'pad-widths': {'pad_widths': 8}}
PAPER_WIDTHS, ALIGNED_WIDTHS = [36, 52, 64], [32, 48, 64]
# Default LR sizes: on CUDA all of them; on CPU the largest whose plain network stays within CPU_GFLOPS.
DEFAULT_LQ_SIZES = {'cpu': [(256, 192), (128, 96)], 'cuda': [(480, 270), (960, 540)]}
CPU_GFLOPS = 400


def load_photo(path):
    """An RGB float image in [0, 1], HWC: ``path``, or scikit-image's astronaut when None."""
    if path is None:
        from skimage import data
        return data.astronaut().astype(np.float32) / 255.
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise SystemExit(f'error: cannot read {path}')
    return img[:, :, ::-1].astype(np.float32) / 255.


def make_lq(photo, lq_size):
    """The photo resized to ``lq_size`` (w, h): natural LR content at any size."""
    w, h = lq_size
    lq = cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(np.ascontiguousarray(lq.transpose(2, 0, 1))).unsqueeze(0).clamp(0, 1)


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, repeat, device):
    """Median wall-clock seconds of ``fn()`` over ``repeat`` runs after one warm-up."""
    fn()
    synchronize(device)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_group(fns, repeat, device):
    """Median seconds of every function of ``fns``, run in turn (a shared machine's drift hits them all), each
    round starting one further along (no function always runs after the same one)."""
    times = [[] for _ in fns]
    for attempt in range(repeat + 1):
        for i in range(len(fns)):
            index = (attempt + i) % len(fns)
            start = time.perf_counter()
            fns[index]()
            synchronize(device)
            if attempt:  # the first round warms up
                times[index].append(time.perf_counter() - start)
    return [statistics.median(found) for found in times]


def timed_pair(fn_a, fn_b, repeat, device):
    """Median seconds of ``fn_a()`` and ``fn_b()`` run alternately."""
    return tuple(timed_group((fn_a, fn_b), repeat, device))


def plain_network(net):
    """BasicSR's own network class with the supernet's weights, in channels-last with the engine's channels-last
    pixel shuffle (so that the plain network is timed as the engine runs its subnets)."""
    return to_channels_last(net.extract_subnet(None))


def default_lq_sizes(arch, scale, device_type):
    """The LR sizes of a network when ``--lq-sizes`` is not given (see DEFAULT_LQ_SIZES)."""
    if device_type != 'cpu':
        return DEFAULT_LQ_SIZES[device_type]
    with torch.device('meta'):
        net = supernet_class(arch)(upscale=scale)
    fitting = [(w, h) for w, h in DEFAULT_LQ_SIZES['cpu'] if net.flops(h, w) <= CPU_GFLOPS * 1e9]
    return fitting[:1] or DEFAULT_LQ_SIZES['cpu'][-1:]


def engine_breakdown(engine, lq, repeat, device):
    """Median seconds of the engine's stages on ``lq``, run one after another as ``run`` does: plan, patch
    gathering, subnet forwards (writing their outputs included) and stitch."""
    stages = {'plan': [], 'gather': [], 'forwards': [], 'stitch': []}
    with torch.inference_mode():
        lq = lq.to(device=device, dtype=torch.float32)
        for attempt in range(repeat + 1):
            marks = [time.perf_counter()]
            plan = engine.plan(lq)
            synchronize(device)
            marks.append(time.perf_counter())
            if plan.whole_image_subnet is not None:
                synchronize(device)
                marks.append(time.perf_counter())
                engine.run_whole(lq, plan.whole_image_subnet)
                synchronize(device)
                marks += [time.perf_counter()] * 2
            else:
                batches, outputs = engine.patch_batches(lq, plan)
                synchronize(device)
                marks.append(time.perf_counter())
                for module, ids, batch in batches:
                    outputs[ids] = module(batch)
                synchronize(device)
                marks.append(time.perf_counter())
                engine.stitch(outputs, plan)
                synchronize(device)
                marks.append(time.perf_counter())
            if attempt:  # the first round warms up
                for key, begin, end in zip(stages, marks, marks[1:]):
                    stages[key].append(end - begin)
    return {key: statistics.median(values) for key, values in stages.items()}


def main_section(configs, photo, args, device):
    print('| network | widths | LR | dtype | setting | FLOPs ratio | ms | predicted ms | vs plain whole | '
          'vs plain tiled | efficiency | plan ms | gather ms | forwards ms | stitch ms | overhead |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    summary = []
    for arch, widths, lq_size, dtype, model in configs:
        net, stored = build_supernet(arch, widths, model, args.scale)
        net = net.to(device=device, dtype=dtype)
        lq = make_lq(photo, lq_size).to(device)
        h, w = lq.shape[-2:]
        plain = plain_network(net).to(device=device, dtype=dtype, memory_format=torch.channels_last)
        plain_lq = lq.to(dtype).contiguous(memory_format=torch.channels_last)
        tiled = engine_for(net, {}, {'subnet': -1, 'whole_image_fallback': False}, args)
        name = type(net).LABEL
        prefix = f'| {name} x{args.scale} | {list(net.widths)} | {w}x{h} | {str(dtype).replace("torch.", "")}'
        cost = load_or_measure(net, device, dtype)  # plans by time, latency rows, and every row's prediction
        settings = [('Eq. 15', {})] + [(f'budget {b:g}', {'budget': b}) for b in args.budgets]
        settings += [(f'latency {b:g}', {'budget': b, 'budget_unit': 'time', 'cost_table': cost})
                     for b in args.latency_budgets]
        if stored.get('thresholds') is not None and stored['thresholds'].class_errors is not None:
            settings += [(f'quality {d:g} dB', {'max_loss': d}) for d in args.max_loss]
        settings += [(f'{label}, {variant}', {**kwargs, **VARIANTS[variant]}) for variant in args.variants
                     for label, kwargs in settings if variant != 'cuda-graphs' or device.type == 'cuda']
        rows = []
        for label, kwargs in settings:
            if args.plan_by == 'time':
                kwargs = {'cost_table': cost, **kwargs}
            try:
                engine = engine_for(net, stored, kwargs, args)
                _, report = engine.run(lq)
                with torch.inference_mode():
                    whole_s, tiled_s, elapsed = timed_group(
                        (lambda: plain(plain_lq), lambda: tiled.run(lq), lambda: engine.run(lq)), args.repeat, device)
                parts = engine_breakdown(engine, lq, max(1, args.repeat // 3), device)
            except (RuntimeError, ValueError) as err:  # one failing setting does not stop the others
                print(f'{prefix} | {label} | error: {str(err).splitlines()[0][:120]} |', flush=True)
                continue
            plan = report.plan
            predicted_s = plan.predicted_s
            if predicted_s is None and cost is not None:  # a plan by FLOPs: what this device's costs predict
                predicted_s = PlanTimer(cost, engine._batch_sizes).of(plan, analysed=plan.classes is not None)
            rows.append((label, elapsed, min(whole_s, tiled_s), predicted_s))
            total = sum(parts.values())
            overhead = (total - parts['forwards']) / total if total else 0.
            label = f'{label} (whole image)' if plan.whole_image_subnet is not None else label
            predicted = '-' if predicted_s is None else f'{1e3 * predicted_s:.1f}'
            efficiency = whole_s / elapsed * report.flops_ratio
            print(f'{prefix} | {label} | {report.flops_ratio:.3f} | {1e3 * elapsed:.1f} | {predicted} | '
                  f'{whole_s / elapsed:.2f}x | {tiled_s / elapsed:.2f}x | {efficiency:.2f} | '
                  f"{1e3 * parts['plan']:.1f} | {1e3 * parts['gather']:.1f} | {1e3 * parts['forwards']:.1f} | "
                  f"{1e3 * parts['stitch']:.1f} | {100 * overhead:.1f}% |", flush=True)
        if not rows:
            continue
        print(f'{prefix} | plain, whole image | 1.000 | {1e3 * whole_s:.1f} | - | 1.00x | {tiled_s / whole_s:.2f}x | '
              '1.00 | - | - | - | - | - |', flush=True)
        print(f'{prefix} | plain, tiled | {tiled.flops(tiled.plan(lq)) / net.flops(h, w):.3f} | {1e3 * tiled_s:.1f} '
              f'| - | {whole_s / tiled_s:.2f}x | 1.00x | - | - | - | - | - | - |', flush=True)
        summary.append((prefix, rows))
        net = plain = tiled = None  # free them before the next configuration
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    print()
    summary_table(summary)


def summary_table(summary):
    """Per configuration: the slowest engine row against the fastest plain execution (time / time), each latency
    budget's measured share of it, and the median relative error of the predicted times."""
    print('| network | widths | LR | dtype | slowest engine row vs fastest plain | latency budgets: measured share '
          'of the fastest plain | median prediction error |')
    print('|---|---|---|---|---|---|---|')
    for prefix, rows in summary:
        if not rows:
            continue
        worst = min(rows, key=lambda row: row[2] / row[1])
        latency = ', '.join(f'{label}: {elapsed / fastest:.2f}' for label, elapsed, fastest, _ in rows
                            if label.startswith('latency')) or '-'
        errors = [abs(predicted - elapsed) / elapsed for _, elapsed, _, predicted in rows if predicted is not None]
        error = f'{100 * statistics.median(errors):.0f}%' if errors else '-'
        print(f'{prefix} | {worst[2] / worst[1]:.2f}x ({worst[0]}) | {latency} | {error} |', flush=True)


def engine_for(net, stored, kwargs, args):
    return DynamicInferenceEngine(net, **stored, patch_size=args.patch_size, overlap=args.overlap,
                                  max_batch_pixels=args.max_batch_pixels, **kwargs)


def tiling_section(configs, photo, args, device):
    print('| network | LR | patch | overlap | FLOPs ratio | ms | efficiency vs whole image | patches |')
    print('|---|---|---|---|---|---|---|---|')
    for arch, widths, lq_size, dtype, model in configs:
        net = build_supernet(arch, widths, model, args.scale)[0].to(device=device, dtype=dtype)
        lq = make_lq(photo, lq_size).to(device)
        h, w = lq.shape[-2:]
        plain = plain_network(net).to(device=device, dtype=dtype, memory_format=torch.channels_last)
        plain_lq = lq.to(dtype).contiguous(memory_format=torch.channels_last)
        bases = []
        for patch in args.patch_sizes:
            for overlap in args.overlaps:
                engine = DynamicInferenceEngine(net, patch_size=patch, overlap=overlap, subnet=-1,
                                                whole_image_fallback=False, max_batch_pixels=args.max_batch_pixels)
                _, report = engine.run(lq)
                with torch.inference_mode():
                    base, elapsed = timed_pair(lambda: plain(plain_lq), lambda: engine.run(lq), args.repeat, device)
                bases.append(base)
                print(f'| {arch} {widths} | {w}x{h} | {patch} | {overlap} | {report.flops_ratio:.3f} | '
                      f'{1e3 * elapsed:.1f} | {base / elapsed * report.flops_ratio:.2f} | {report.num_patches} |')
        print(f'| {arch} {widths} | {w}x{h} | whole image | - | 1.000 | {1e3 * statistics.median(bases):.1f} | '
              '1.00 | 1 |')


def widths_section(configs, photo, args, device):
    print('| network | widths | LR | subnet | FLOPs ratio | time ratio | efficiency |')
    print('|---|---|---|---|---|---|---|')
    for arch, widths, lq_size, dtype, model in configs:
        net = build_supernet(arch, widths, model, args.scale)[0].to(device=device, dtype=dtype)
        lq = make_lq(photo, lq_size).to(device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        h, w = lq.shape[-2:]
        with torch.inference_mode():
            full = net.extract_subnet(-1).to(memory_format=torch.channels_last)
            for spec in net.subnets:
                sub = net.extract_subnet(spec).to(memory_format=torch.channels_last)
                base, elapsed = timed_pair(lambda: full(lq), lambda: sub(lq), args.repeat, device)
                ratio = net.flops(h, w, subnet=spec) / net.flops(h, w)
                print(f'| {arch} | {widths} | {w}x{h} | w{spec.width}/d{spec.depth} | {ratio:.3f} | '
                      f'{elapsed / base:.3f} | {ratio / (elapsed / base):.2f} |')


def build_supernet(arch, widths, model, scale):
    """A random supernet (seeded) and no stored engine options, or a checkpoint's network and its thresholds
    and class errors."""
    if model:
        net, meta = load_supernet(model, arch=arch, scale=scale)
        return net, engine_options(meta)
    torch.manual_seed(0)
    return build_network({'type': arch, 'upscale': scale, 'widths': widths}).eval(), {}


def parse_size(text):
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected WxH, got {text!r}') from None
    return w, h


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=('cpu', 'cuda'), default='cpu')
    parser.add_argument('--image', help="photo to resize to the LR sizes. Default: scikit-image's astronaut")
    parser.add_argument('--arch', nargs='+', choices=supernet_types(), default=list(supernet_types()))
    parser.add_argument('--widths', type=int, nargs='+', help='one widths list. Default: paper and aligned')
    parser.add_argument('--lq-sizes', type=parse_size, nargs='+', help='LR WxH. Default: by device and network')
    parser.add_argument('--dtype', nargs='+', choices=('fp32', 'fp16', 'bf16'),
                        help='Default: fp32 on CPU, fp16 and fp32 on CUDA')
    parser.add_argument('-s', '--scale', type=int, choices=(2, 3, 4), default=4)
    parser.add_argument('--model', help='checkpoint (weights and thresholds) instead of random weights')
    parser.add_argument('--budgets', type=float, nargs='+', default=[0.75, 0.6, 0.5])
    parser.add_argument('--latency-budgets', type=float, nargs='*', default=[0.6],
                        help='latency budgets (shares of the fastest plain execution\'s time). Default: 0.6')
    parser.add_argument('--max-loss', type=float, nargs='*', default=[0.05, 0.1],
                        help='quality targets in dB (rows only with --model\'s class errors). Default: 0.05 0.1')
    parser.add_argument('--plan-by', choices=('flops', 'time'), default='flops',
                        help="time: the engine rows plan with this device's measured costs (cached), and the table "
                        'shows the predicted time beside the measured one')
    parser.add_argument('--patch-size', type=int, default=DEFAULT_PATCH_SIZE)
    parser.add_argument('--overlap', type=int, default=DEFAULT_OVERLAP)
    parser.add_argument('--max-batch-pixels', type=int, help="engine's max_batch_pixels. Default: the engine's")
    parser.add_argument('--patch-sizes', type=int, nargs='+', default=[32, 48, 64, 96, 128])
    parser.add_argument('--overlaps', type=int, nargs='+', default=[4])
    parser.add_argument('--variants', nargs='*', choices=sorted(VARIANTS), default=['cuda-graphs'],
                        help='engine options, each repeating every setting with it on (cuda-graphs: on CUDA only). '
                             "Default: cuda-graphs")
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeat', type=int, help='timed runs per setting (median). Default: 3 on CPU, 5 on CUDA')
    parser.add_argument('--section', choices=SECTIONS, default='main')
    args = parser.parse_args(argv)

    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.exit(2, 'error: --device cuda but CUDA is not available; use --device cpu.\n')
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    args.repeat = args.repeat or (5 if device.type == 'cuda' else 3)
    dtypes = args.dtype or (['fp16', 'fp32'] if device.type == 'cuda' else ['fp32'])
    dtypes = [{'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}[d] for d in dtypes]
    widths_sets = [args.widths] if args.widths else [PAPER_WIDTHS, ALIGNED_WIDTHS]
    configs = [(arch, widths, size, dtype, args.model) for arch in args.arch for widths in widths_sets
               for size in (args.lq_sizes or default_lq_sizes(arch, args.scale, device.type)) for dtype in dtypes]
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else (platform.processor() or
                                                                             platform.machine())
    print(f'# torch {torch.__version__}, {name}, {args.threads} CPU thread(s), x{args.scale}, patch '
          f'{args.patch_size}, overlap {args.overlap}, median of {args.repeat}, image '
          f"{args.image or 'skimage astronaut'}\n")
    photo = load_photo(args.image)
    start = time.perf_counter()
    if args.section in ('main', 'all'):
        main_section(configs, photo, args, device)
        print()
    if args.section in ('tiling', 'all'):
        tiling_section(configs, photo, args, device)
        print()
    if args.section in ('widths', 'all'):
        widths_section(configs, photo, args, device)
        print()
    print(f'# {time.perf_counter() - start:.0f} s')


if __name__ == '__main__':
    main()
