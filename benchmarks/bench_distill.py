"""Quick signal of in-place distillation: full network against dynamic inference at a FLOPs budget.

    python benchmarks/bench_distill.py --hr-dir ../shared/data/train/sun_hays80 [--iters 300]
        [--weights 0,10] [--seed 0] [--budget 0.6] [--report-dir ../shared/data/val/Set5] [--threads 1]

Trains a small WBSRResNet supernet (x4, 32 features, 4 blocks, widths 16/24/32, depths 1/2/4) with
``DynamicSRModel`` (sandwich rule, L1Loss, Adam 5e-4 with cosine decay, batch 4, 64x64 GT patches
cut at random from the HR images but the last ``--holdout``, LR by antialiased bicubic) once per
``wbsr.distill_weight`` in ``--weights``, with the same seed and the same batches, and prints the
PSNR (Y, border 4) of the full network and of ``DynamicInferenceEngine(budget=--budget)`` (32x32 LR
patches, per-image quantile thresholds) on 192x192 centre crops of the held-out HR images, and on
``--report-dir`` when given (a folder to report on, not to choose settings with). A single short
run on a small network: a signal for choosing settings, not a measurement of the paper's claim.
"""
import argparse
import logging
import os
import tempfile
import time
from os import path as osp

import cv2
import torch

import wbsr_plugin  # noqa: F401
from wbsr_plugin.cli.evaluation import engine_runner, evaluate, load_pairs, whole_image_runner
from wbsr_plugin.cli.training_options import parsed_options, pixel_loss, training_options
from wbsr_plugin.data.prepare_util import input_images, read_image_file
from wbsr_plugin.losses.gmm_prior_util import image_to_tensor

from basicsr.models import build_model
from basicsr.utils import get_root_logger

SCALE = 4
NETWORK = {'type': 'WBSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 32, 'num_block': 4, 'upscale': SCALE,
           'widths': [16, 24, 32], 'depths': [1, 2, 4]}


def model_options(distill_weight, iters, seed, workdir):
    wbsr = {'subnet_sampling': 'sandwich', 'dynamic_val': False, 'distill_weight': distill_weight}
    opt = training_options('bench_distill', model_type='DynamicSRModel', scale=SCALE, network=dict(NETWORK),
                           pixel_opt=pixel_loss('l1'), total_iter=iters, lr=5.0e-4, num_gpu=0, manual_seed=seed,
                           ema_decay=0, eta_min=1.0e-6, wbsr=wbsr)
    return parsed_options(opt, workdir)


def random_batch(images, generator, batch=4, gt_size=64):
    crops = []
    for _ in range(batch):
        img = images[int(torch.randint(len(images), (1, ), generator=generator))]
        top = int(torch.randint(img.shape[-2] - gt_size + 1, (1, ), generator=generator))
        left = int(torch.randint(img.shape[-1] - gt_size + 1, (1, ), generator=generator))
        crops.append(img[:, top:top + gt_size, left:left + gt_size])
    gt = torch.stack(crops)
    lq = torch.nn.functional.interpolate(gt, scale_factor=1 / SCALE, mode='bicubic', antialias=True).clamp(0, 1)
    return {'lq': lq, 'gt': gt}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr-dir', required=True, help='HR training images (the last --holdout are held out)')
    parser.add_argument('--holdout', type=int, default=6)
    parser.add_argument('--iters', type=int, default=300)
    parser.add_argument('--weights', default='0,10', help='comma-separated wbsr.distill_weight values')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--budget', type=float, default=0.6)
    parser.add_argument('--report-dir', help='HR folder to report on as well (LR by MATLAB bicubic)')
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    get_root_logger(log_level=logging.WARNING)
    weights = [float(w) for w in args.weights.split(',')]
    paths = [osp.join(args.hr_dir, name) for name in input_images(args.hr_dir)]
    if len(paths) <= args.holdout:
        parser.error(f"--hr-dir '{args.hr_dir}' has {len(paths)} images; more than --holdout {args.holdout} needed")
    train_paths, held_paths = paths[:-args.holdout], paths[-args.holdout:]
    images = [image_to_tensor(read_image_file(p))[0, [2, 1, 0]].float() for p in train_paths]

    with tempfile.TemporaryDirectory() as workdir:
        held_dir = osp.join(workdir, 'held_out')
        os.makedirs(held_dir)
        for path in held_paths:
            img = read_image_file(path)
            top, left = max(img.shape[0] // 2 - 96, 0), max(img.shape[1] // 2 - 96, 0)
            name = osp.splitext(osp.basename(path))[0] + '.png'
            cv2.imwrite(osp.join(held_dir, name), img[top:top + 192, left:left + 192])
        sets = {'held-out': load_pairs(held_dir, None, SCALE)}
        if args.report_dir:
            sets[osp.basename(osp.normpath(args.report_dir))] = load_pairs(args.report_dir, None, SCALE)

        print(f'{args.iters} iterations, seed {args.seed}, budget {args.budget}')
        print(f"{'distill_weight':>14} {'set':<10} {'full dB':>8} {'budget dB':>9} {'FLOPs %':>7} {'gap dB':>7} "
              f"{'train s':>7}")
        for weight in weights:
            torch.manual_seed(args.seed)
            model = build_model(model_options(weight, args.iters, args.seed, workdir))
            generator = torch.Generator().manual_seed(args.seed)
            start = time.perf_counter()
            for it in range(1, args.iters + 1):
                model.update_learning_rate(it, warmup_iter=-1)
                model.feed_data(random_batch(images, generator))
                model.optimize_parameters(it)
            seconds = time.perf_counter() - start
            net = model.get_bare_model(model.net_g).eval()
            for name, pairs in sets.items():
                full = evaluate(whole_image_runner(net), pairs, SCALE)['psnr']
                dynamic = evaluate(engine_runner(net, patch_size=32, overlap=4, budget=args.budget), pairs, SCALE)
                print(f"{weight:14g} {name:<10} {full:8.3f} {dynamic['psnr']:9.3f} {dynamic['flops_percent']:7.1f} "
                      f"{full - dynamic['psnr']:7.3f} {seconds:7.0f}", flush=True)


if __name__ == '__main__':
    main()
