"""The steps of the reproduction: data, training runs, evaluation. Each step skips finished work."""
import json
import os
import subprocess
import sys
import time
from os import path as osp

import cv2
import numpy as np
import torch
import yaml

import wbsr_plugin
from wbsr_plugin.data.difficulty import bgr_image_to_luma, grid_positions, patch_difficulty, quantile_thresholds
from wbsr_plugin.data.prepare_util import AlreadyDone, downsample, extract_subimages, list_images
from wbsr_plugin.file_util import atomic_write_text
from wbsr_plugin.losses.gmm_prior_util import fit_gmm_prior, save_gmm_prior
from . import evaluation as ev
from .rows import RUN_KINDS, TABLE_ROWS, run_kinds, run_name, table_rows, training_options

PACKAGE_PARENT = osp.dirname(osp.dirname(osp.abspath(wbsr_plugin.__file__)))


def log(message):
    print(f'[reproduce {time.strftime("%H:%M:%S")}] {message}', flush=True)


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + '\n')


def read_json(path):
    with open(path, encoding='utf-8') as f:
        return json.load(f)


# ----------------------------------------------------------------------------------------------
def split_training_images(train_hr, val_every):
    """(train names, held-out names): every ``val_every``-th image by sorted name is held out for ARM."""
    names = list_images(train_hr)
    if len(names) < 2:
        raise ValueError(f'{train_hr} holds {len(names)} image(s); at least 2 are needed (training and held-out).')
    held_out = [n for i, n in enumerate(names) if i % val_every == val_every - 1] or [names[-1]]
    return [n for n in names if n not in held_out], held_out


def link_images(src_folder, names, dst_folder):
    os.makedirs(dst_folder, exist_ok=True)
    for name in names:
        target = osp.join(dst_folder, name.replace(os.sep, '_'))
        if not osp.lexists(target):
            os.symlink(osp.abspath(osp.join(src_folder, name)), target)


def difficulty_scores(lr_folder, patch_size):
    """Difficulty of every LR patch of side ``patch_size`` (stride half of it) of a folder."""
    scores = []
    for name in list_images(lr_folder):
        img = cv2.imread(osp.join(lr_folder, name), cv2.IMREAD_COLOR).astype(np.float64) / 255.
        luma = bgr_image_to_luma(img)
        h, w = luma.shape
        p = min(patch_size, h, w)
        stride = max(1, p // 2)
        scores.append(patch_difficulty(luma, p, grid_positions(h, p, stride), grid_positions(w, p, stride)).flatten())
    return torch.cat(scores).numpy()


def prepare_data(preset, train_hr, out_dir):
    """Split, crop, downsample, fit the BDLoss prior and compute the class thresholds (idempotent).

    Returns:
        dict: ``train_hr``, ``train_lr`` (sub-image folders), ``val_hr`` (held-out originals), ``prior``,
        ``thresholds`` (K - 1, on ``patch_size`` LR patches), ``classsr_thresholds`` (on training patches).
    """
    data_dir = osp.join(out_dir, 'data')
    scale = preset['scale']
    train_names, val_names = split_training_images(train_hr, preset['val_every'])
    link_images(train_hr, train_names, osp.join(data_dir, 'src_train'))
    link_images(train_hr, val_names, osp.join(data_dir, 'src_val'))
    paths = {'train_hr': osp.join(data_dir, 'train_hr_sub'), 'train_lr': osp.join(data_dir, f'train_lr_sub_x{scale}'),
             'val_hr': osp.join(data_dir, 'src_val'), 'prior': osp.join(data_dir, f'bdloss_prior_x{scale}.pth')}
    steps = [('sub-images', lambda: extract_subimages(osp.join(data_dir, 'src_train'), paths['train_hr'],
                                                      preset['subimage_crop'], preset['subimage_step'], 0,
                                                      n_thread=2)),
             ('downsample', lambda: downsample(paths['train_hr'], paths['train_lr'], scale, n_thread=2))]
    for label, step in steps:
        try:
            log(f'{label}: {step()} images')
        except AlreadyDone as done:
            log(f'{label}: {done}')
    if not osp.isfile(paths['prior']):
        prior = fit_gmm_prior(paths['train_hr'], scale, num_components=preset['prior_components'],
                              max_pixels=preset['prior_max_pixels'])
        save_gmm_prior(prior, paths['prior'])
        log(f"BDLoss prior: {paths['prior']}")
    meta_path = osp.join(data_dir, 'thresholds.json')
    if not osp.isfile(meta_path):
        scores = difficulty_scores(paths['train_lr'], preset['patch_size'])
        train_scores = difficulty_scores(paths['train_lr'], preset['gt_size'] // scale)
        write_json(meta_path, {
            'thresholds': [float(t) for t in quantile_thresholds(scores, preset['hes_num_classes'])],
            'classsr_thresholds': [float(t) for t in quantile_thresholds(train_scores, len(preset['classsr_widths']))],
            'patch_size': preset['patch_size'], 'num_candidates': int(len(scores)),
            'train_images': train_names, 'held_out_images': val_names})
    meta = read_json(meta_path)
    return {**paths, 'thresholds': meta['thresholds'], 'classsr_thresholds': meta['classsr_thresholds'],
            'held_out_images': meta['held_out_images'], 'train_images': meta['train_images']}


# ----------------------------------------------------------------------------------------------
def checkpoint_path(out_dir, name):
    return osp.join(out_dir, 'runs', 'experiments', name, 'models', 'net_g_latest.pth')


def train_all(preset, data, out_dir):
    """Train every run of the preset through BasicSR's pipeline (``python -m wbsr_plugin.train``).

    The options of each run are written to ``<out>/runs/options/<name>.yml``; a run whose
    final checkpoint exists is skipped. Returns ``{name: seconds}`` of the runs trained now.
    """
    runs_dir = osp.join(out_dir, 'runs')
    os.makedirs(osp.join(runs_dir, 'options'), exist_ok=True)
    os.makedirs(osp.join(runs_dir, 'logs'), exist_ok=True)
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    timings = {}
    for backbone in preset['backbones']:
        for seed in preset['seeds']:
            for kind in run_kinds(backbone):
                name = run_name(backbone, kind, seed)
                opt_path = osp.join(runs_dir, 'options', f'{name}.yml')
                atomic_write_text(opt_path, yaml.safe_dump(training_options(preset, backbone, kind, seed, data),
                                                    sort_keys=False))
                if osp.isfile(checkpoint_path(out_dir, name)):
                    log(f'train {name}: done before, skipped')
                    continue
                log(f'train {name} ({RUN_KINDS[kind][0]}, {preset["total_iter"]} iterations)')
                start = time.perf_counter()
                with open(osp.join(runs_dir, 'logs', f'{name}.log'), 'w', encoding='utf-8') as log_file:
                    proc = subprocess.run([sys.executable, '-m', 'wbsr_plugin.train', '-opt', opt_path], cwd=runs_dir,
                                          env=env, stdout=log_file, stderr=subprocess.STDOUT)
                if proc.returncode != 0 or not osp.isfile(checkpoint_path(out_dir, name)):
                    with open(osp.join(runs_dir, 'logs', f'{name}.log'), encoding='utf-8') as f:
                        tail = f.read()[-3000:]
                    raise RuntimeError(f'training {name} failed (exit {proc.returncode}):\n{tail}')
                timings[name] = time.perf_counter() - start
                log(f'train {name}: {timings[name]:.0f} s')
    return timings


# ----------------------------------------------------------------------------------------------
def evaluate_seed(preset, backbone, seed, data, test_pairs, val_pairs, out_dir):
    """Every table row of one backbone and seed on every test set; cached in ``<out>/eval``."""
    path = osp.join(out_dir, 'eval', f'{backbone}_s{seed}.json')
    if osp.isfile(path):
        log(f'evaluate {backbone} seed {seed}: done before, skipped')
        return read_json(path)
    scale, patch, overlap = preset['scale'], preset['patch_size'], preset['overlap']
    thresholds = data['thresholds']
    opts = {kind: training_options(preset, backbone, kind, seed, data) for kind in run_kinds(backbone)}
    ckpt = {kind: checkpoint_path(out_dir, run_name(backbone, kind, seed)) for kind in opts}
    result = {'rows': {}, 'matched_fraction': {}, 'options': {k: osp.join(out_dir, 'runs', 'options',
                                                                          f'{run_name(backbone, k, seed)}.yml')
                                                                for k in opts}}

    def measure(run):
        return {name: ev.evaluate(run, pairs, scale) for name, pairs in test_pairs.items()}

    def supernet(kind):
        return ev.load_supernet(ckpt[kind], network_opt=opts[kind]['network_g'])[0]

    log(f'evaluate {backbone} seed {seed}')
    wbsr_net = supernet('wbsr')
    rows = result['rows']
    rows['wbsr'] = {'default': measure(ev.engine_runner(wbsr_net, thresholds, patch, overlap))}
    # the budget of every method: what +WBSR spends by default, at most the plain network's FLOPs (tiling
    # overlaps can push the default above 100 %; a budget is a fraction in (0, 1])
    fractions = {name: min(r['flops_percent'] / 100, 1.0) for name, r in rows['wbsr']['default'].items()}
    result['matched_fraction'] = fractions

    def matched(make_runner):
        return {name: ev.evaluate(make_runner(fractions[name]), pairs, scale) for name, pairs in test_pairs.items()}

    rows['wbsr']['matched'] = matched(lambda f: ev.engine_runner(wbsr_net, thresholds, patch, overlap, budget=f))
    rows['wbsr']['sweep'] = {
        f'{b:g}': measure(ev.engine_runner(wbsr_net, thresholds, patch, overlap, budget=b))
        for b in preset['sweep_budgets']}
    rows['wbsr_dagger'] = {'default': measure(ev.whole_image_runner(wbsr_net, wbsr_net.flops))}
    for row in ('hes', 'bdloss'):
        net = supernet(TABLE_ROWS[row][0])
        rows[row] = {'default': measure(ev.engine_runner(net, thresholds, patch, overlap)),
                     'matched': matched(lambda f, net=net: ev.engine_runner(net, thresholds, patch, overlap,
                                                                              budget=f))}
    plain_opt = opts['plain']['network_g']
    plain = ev.load_plain(ckpt['plain'], plain_opt)
    rows['plain'] = {'default': measure(ev.whole_image_runner(plain, lambda h, w: ev.plain_flops(plain_opt, h, w)))}
    uniform = supernet('uniform')
    table = ev.build_arm_table(uniform, val_pairs, patch, overlap)
    result['arm'] = {'eta': table['eta'], 'val_patches': table['val_patches'], 'edges': table['edges'].tolist(),
                     'psnr_table': table['psnr'].tolist()}
    rows['arm'] = {'default': measure(ev.arm_runner(uniform, table, patch, overlap, eta=table['eta'])),
                   'matched': matched(lambda f: ev.arm_runner(uniform, table, patch, overlap, budget=f))}
    if 'classsr' in table_rows(backbone):
        classsr = ev.load_plain(ckpt['classsr'], opts['classsr']['network_g'])
        rows['classsr'] = {'default': measure(ev.classsr_runner(classsr, patch, overlap)),
                           'matched': matched(lambda f: ev.classsr_runner(classsr, patch, overlap, budget=f))}
    write_json(path, result)
    return result


def evaluate_all(preset, data, test_sets, out_dir):
    """``{backbone: {seed: result}}`` for every backbone and seed (see :func:`evaluate_seed`)."""
    scale = preset['scale']
    test_pairs = {name: ev.load_pairs(folder, None, scale) for name, folder in test_sets.items()}
    for name, pairs in test_pairs.items():
        if not pairs:
            raise ValueError(f'test set {name} ({test_sets[name]}) holds no images.')
    val_pairs = ev.load_pairs(data['val_hr'], None, scale)
    return {backbone: {seed: evaluate_seed(preset, backbone, seed, data, test_pairs, val_pairs, out_dir)
                       for seed in preset['seeds']}
            for backbone in preset['backbones']}
