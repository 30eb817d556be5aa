"""The torch-free runtime (wbsr_runtime) against the torch engine in the same runtime and precision.

    python benchmarks/bench_torch_free.py --threads 2 --sizes 160x120 960x540
    python benchmarks/bench_torch_free.py --model net_g.pth --runtimes "openvino bf16" --sizes 960x540
    python benchmarks/bench_torch_free.py --model net_g.pth --plan-by time --sizes 160x120 960x540

The checkpoint (--model, or SRResNet x4 with the paper's widths and random weights) is exported with
``export --dynamic`` into a temporary folder. For each runtime and LR size, the torch engine
(``DynamicInferenceEngine(runtime=...)``) and ``wbsr_runtime.DynamicModel`` run the same FLOPs plan (--budget, or
the checkpoint's default policy with --budget 0): medians of --repeat calls each, interleaved, after one untimed
call. The table gives both times, their ratio, whether the plans were equal and the largest output difference.
With --plan-by time, this machine's cost tables are measured (or read from the cache) first, so that the export
carries them, and both engines plan by predicted time with the same table.
The LR image is a crop of scikit-image's photos (tiled when the size asks for more).
"""
import argparse
import os
import platform
import sys
import tempfile
from os import path as osp

import numpy as np
import torch

import wbsr_plugin  # noqa: F401
from wbsr_plugin.cli.dynamic_export import export_dynamic
from wbsr_plugin.inference.checkpoint import engine_options, load_supernet
from wbsr_plugin.inference.cost_model import load_or_measure
from wbsr_plugin.inference.engine import DynamicInferenceEngine
from wbsr_plugin.inference.runtimes import Runtime
from wbsr_runtime import DynamicModel, PlanningTarget
from wbsr_runtime.planning_target import checkpoint_policy

from basicsr.archs import build_network

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from bench_runtimes import interleaved, photo_lq  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', help='a trained checkpoint (default: SRResNet x4, random weights)')
    parser.add_argument('--sizes', nargs='+', default=['160x120', '960x540'], help='LR WIDTHxHEIGHT')
    parser.add_argument('--runtimes', nargs='+', default=['onnxruntime fp32', 'openvino fp32', 'openvino bf16'],
                        help='runtime and precision pairs')
    parser.add_argument('--budget', type=float, default=0.6, help="FLOPs budget; 0: the checkpoint's default")
    parser.add_argument('--plan-by', choices=('flops', 'time'), default='flops')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeat', type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model:
        net, meta = load_supernet(args.model)
    else:
        torch.manual_seed(0)
        net, meta = build_network({'type': 'WBSRResNet', 'upscale': 4}).eval(), {}
    target = PlanningTarget.flops_budget(args.budget, args.plan_by) if args.budget else None
    policy = checkpoint_policy(meta, target=target, plan_by=args.plan_by)
    runtimes = [Runtime(*text.split()) for text in args.runtimes]
    tables = {runtime: load_or_measure(net, 'cpu', runtime=runtime) if args.plan_by == 'time' else None
              for runtime in runtimes}
    print(f'{type(net).__name__} x{net.upscale} ({args.model or "random weights"}), {args.threads} threads, '
          f'{platform.processor() or platform.machine()}, torch {torch.__version__}, {policy}')
    with tempfile.TemporaryDirectory() as work:
        folder = osp.join(work, 'model.wbsr')
        export_dynamic(net, meta, folder)
        size = sum(osp.getsize(osp.join(root, f)) for root, _, files in os.walk(folder) for f in files)
        print(f'export --dynamic: {size / 1e6:.1f} MB\n')
        print('| runtime | LR | torch engine (ms) | torch-free (ms) | torch / torch-free | same plan | max |diff| |')
        print('|---|---|---|---|---|---|---|')
        for runtime in runtimes:
            name, precision = runtime.name, runtime.precision
            engine = DynamicInferenceEngine(net, **engine_options(meta), **policy.engine_options(),
                                            runtime=runtime, cost_table=tables[runtime], watch_weights=False)
            model = DynamicModel.load(folder, runtime=name, precision=precision, threads=args.threads,
                                      target=target, plan_by=args.plan_by)
            for size_text in args.sizes:
                w, h = (int(v) for v in size_text.split('x'))
                lq = photo_lq(w, h)
                lq_np = lq.numpy()
                _, seconds = interleaved({'torch': lambda: engine.run(lq), 'free': lambda: model.run(lq_np)},
                                         args.repeat)
                torch_s, free_s = seconds['torch'], seconds['free']
                sr_torch, report = engine.run(lq)
                sr, own = model.run(lq_np)
                same = report.histogram == own.histogram and np.array_equal(report.plan.subnets.numpy(),
                                                                              np.asarray(own.plan.subnets))
                print(f'| {name} {precision} | {w}x{h} | {1e3 * torch_s:.1f} | {1e3 * free_s:.1f} | '
                      f'{torch_s / free_s:.2f}x | {"yes" if same else "no"} | '
                      f'{np.abs(sr_torch.numpy() - sr).max():.1e} |', flush=True)


if __name__ == '__main__':
    main()
