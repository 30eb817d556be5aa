"""End-to-end demo on real photographs bundled with scikit-image (nothing is downloaded).

    python -m wbsr_plugin.demo [--out demo_output] [--iters 300]

Prepares LR/HR pairs with BasicSR's MATLAB-bicubic ``imresize`` and the GMM prior of BDLoss,
trains a ``WBSRResNet`` supernet with ``DynamicSRModel`` (HES sampling, BDLoss) through BasicSR's
``train_pipeline``, tests the full network and dynamic inference with ``test_pipeline``, draws
which subnet served each patch with ``wbsr_plugin.infer --save-map``, and prints PSNR/SSIM next to
bicubic upsampling, the FLOPs dynamic inference spent, and where the outputs are.
"""
import os
import re
import subprocess
import sys
import time
from os import path as osp

import cv2
import numpy as np
import yaml
from skimage import data as skimage_data

import wbsr_plugin  # noqa: F401
from wbsr_plugin.cli.common_args import CommandParser
from wbsr_plugin.cli.training_options import paired_dataset, pixel_loss, training_dataset, training_options, y_metrics
from wbsr_plugin.losses.gmm_prior_util import fit_gmm_prior, save_gmm_prior

from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils.matlab_functions import imresize

# Photographs shipped inside scikit-image; licenses in datasets/README.md. The calibration split measures the
# class errors a quality target plans by: photos that neither training nor validation sees.
DEMO_PHOTOS = {'train': ('astronaut', 'coffee', 'rocket'), 'calibration': ('camera', 'clock', 'coins', 'grass'),
               'val': ('chelsea', )}
CALIBRATION_PATCHES = 256
SCALE = 4
GT_SIZE = 64
BATCH_SIZE = 4
INFERENCE = {'patch_size': 32, 'overlap': 4}  # the test photo is small: 75x112 LR pixels


def bicubic_downscale(img, scale):
    """MATLAB-bicubic downscale of a uint8 image (as BasicSR's data preparation scripts do)."""
    lr = imresize(img.astype(np.float32) / 255., 1 / scale)
    return np.clip(np.round(lr * 255.), 0, 255).astype(np.uint8)


def prepare_demo_data(root, scale=SCALE):
    """Write ``root/{train,calibration,val}/{hr,lr_x<scale>}/<photo>.png``; return the folders by split."""
    folders = {}
    for split, names in DEMO_PHOTOS.items():
        hr_dir, lr_dir = osp.join(root, split, 'hr'), osp.join(root, split, f'lr_x{scale}')
        os.makedirs(hr_dir, exist_ok=True)
        os.makedirs(lr_dir, exist_ok=True)
        for name in names:
            rgb = getattr(skimage_data, name)()
            rgb = np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb  # grey photos as RGB
            h, w = rgb.shape[0] - rgb.shape[0] % scale, rgb.shape[1] - rgb.shape[1] % scale
            hr = np.ascontiguousarray(rgb[:h, :w, ::-1])
            cv2.imwrite(osp.join(hr_dir, f'{name}.png'), hr)
            cv2.imwrite(osp.join(lr_dir, f'{name}.png'), bicubic_downscale(hr, scale))
        folders[split] = (hr_dir, lr_dir)
    return folders


def bicubic_baseline(hr_dir, lr_dir, scale=SCALE):
    """Mean PSNR/SSIM (Y channel) of MATLAB-bicubic upsampling."""
    psnrs, ssims = [], []
    for name in sorted(os.listdir(hr_dir)):
        hr = cv2.imread(osp.join(hr_dir, name))
        lr = cv2.imread(osp.join(lr_dir, name)).astype(np.float32) / 255.
        up = np.clip(np.round(imresize(lr, scale) * 255.), 0, 255)
        psnrs.append(calculate_psnr(up, hr, crop_border=scale, test_y_channel=True))
        ssims.append(calculate_ssim(up, hr, crop_border=scale, test_y_channel=True))
    return float(np.mean(psnrs)), float(np.mean(ssims))


def demo_options(folders, prior_path, iters):
    """Training and test options for the demo (BasicSR's YAML layout)."""
    (train_hr, train_lr), (val_hr, val_lr) = folders['train'], folders['val']
    metrics = y_metrics(SCALE)
    val_set = paired_dataset('chelsea', val_hr, val_lr)
    network = {'type': 'WBSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 16,
               'upscale': SCALE, 'widths': [36, 52, 64], 'depths': [4, 8, 16]}
    train_set = training_dataset('skimage_photos', train_hr, train_lr, gt_size=GT_SIZE, batch_size=BATCH_SIZE,
                                 num_worker=1, enlarge_ratio=100, type='ClassBalancedPairedDataset',
                                 hes_num_classes=10, hes_delta=0.9, hes_switch_ratio=0.7)
    calibration_set = {'dataroot_gt': folders['calibration'][0], 'dataroot_lq': folders['calibration'][1]}
    wbsr = {'subnet_sampling': 'sandwich', 'dynamic_val': True, 'calibration_patches': CALIBRATION_PATCHES,
            'calibration_set': calibration_set, 'inference': INFERENCE}
    train = training_options('wbsr_demo_x4', model_type='DynamicSRModel', scale=SCALE, network=network,
                             pixel_opt=pixel_loss('bdloss', prior_path=prior_path, scale=SCALE), total_iter=iters,
                             lr=5.0e-4, datasets={'train': train_set, 'val': val_set}, ema_decay=0.99, eta_min=1.0e-6,
                             metrics=metrics, print_freq=max(iters // 10, 1), wbsr=wbsr)
    test = {
        'name': 'wbsr_demo_x4_test',
        'model_type': train['model_type'],
        'scale': SCALE,
        'num_gpu': 'auto',
        'datasets': {'test_1': val_set},
        'network_g': network,
        'path': {'pretrain_network_g': 'experiments/wbsr_demo_x4/models/net_g_latest.pth',
                 'param_key_g': 'params_ema', 'strict_load_g': True},
        'wbsr': {'dynamic_val': True, 'inference': INFERENCE},
        'val': {'save_img': True, 'suffix': None, 'metrics': metrics},
    }
    return train, test


def _run(module, *args, cwd):
    subprocess.run([sys.executable, '-m', module, *args], cwd=cwd, check=True)


def read_test_log(log_file):
    """PSNR/SSIM of the full network and of dynamic inference, and the dynamic FLOPs %, from a test log."""
    with open(log_file) as f:
        text = f.read()
    results = {}
    for dataset, body in re.findall(r'Validation (\S+)\n((?:\s+# \w+: [-\d.]+.*\n)+)', text):
        results[dataset] = {name: float(value) for name, value in re.findall(r'# (\w+): ([-\d.]+)', body)}
    for dataset, percent in re.findall(r'Dynamic inference on (\S+): ([\d.]+) % of the full network FLOPs', text):
        results[dataset]['flops_percent'] = float(percent)
    return results


def main(argv=None):
    parser = CommandParser('demo', __doc__)
    parser.add_argument('--out', default='demo_output', help='output folder (default: demo_output)')
    parser.add_argument('--iters', type=int, default=400, help='training iterations (default: 400)')
    args = parser.parse_args(argv)
    if args.iters < 1:
        parser.error('--iters must be at least 1')

    start = time.time()
    out = osp.abspath(args.out)
    folders = prepare_demo_data(osp.join(out, 'data'))
    prior_path = osp.join(out, 'data', 'train', f'prior_x{SCALE}.pth')
    save_gmm_prior(fit_gmm_prior(folders['train'][0], SCALE), prior_path)
    train_opt, test_opt = demo_options(folders, prior_path, args.iters)
    for opt, file_name in ((train_opt, 'train_wbsr_demo_x4.yml'), (test_opt, 'test_wbsr_demo_x4.yml')):
        with open(osp.join(out, file_name), 'w') as f:
            yaml.safe_dump(opt, f, sort_keys=False)
    _run('wbsr_plugin.train', '-opt', 'train_wbsr_demo_x4.yml', cwd=out)
    _run('wbsr_plugin.test', '-opt', 'test_wbsr_demo_x4.yml', cwd=out)
    model = osp.join(out, 'experiments', train_opt['name'], 'models', 'net_g_latest.pth')
    subnet_maps = osp.join(out, 'results', 'subnet_maps')
    # --overwrite: a rerun of the demo replaces the maps of its earlier model
    _run('wbsr_plugin.infer', '-i', folders['val'][1], '-o', subnet_maps, '--model', model, '--save-map', '--tile',
         str(INFERENCE['patch_size']), '--overlap', str(INFERENCE['overlap']), '--overwrite', cwd=out)

    results = osp.join(out, 'results', test_opt['name'])
    log = sorted(f for f in os.listdir(results) if f.endswith('.log'))[-1]
    metrics = read_test_log(osp.join(results, log))
    full, dynamic = metrics['chelsea'], metrics['chelsea_dynamic']
    bicubic_psnr, bicubic_ssim = bicubic_baseline(*folders['val'])
    print(f'\nWBSR demo (x{SCALE}, {args.iters} iterations, {time.time() - start:.0f} s), test photo "chelsea":')
    print(f'  bicubic:           PSNR {bicubic_psnr:.2f} dB, SSIM {bicubic_ssim:.4f}')
    print(f"  full network:      PSNR {full['psnr']:.2f} dB, SSIM {full['ssim']:.4f}, 100 % FLOPs")
    print(f"  dynamic inference: PSNR {dynamic['psnr']:.2f} dB, SSIM {dynamic['ssim']:.4f}, "
          f"{dynamic['flops_percent']:.1f} % FLOPs")
    print(f'  model:       {model}')
    print(f'  SR images:   {osp.join(results, "visualization")}')
    print(f'  subnet maps: {subnet_maps}')


if __name__ == '__main__':
    main()
