"""The steps of the reproduction: data, training runs, evaluation. Each step skips finished work."""
import json
import os
import shutil
import sys
import time
from os import path as osp

import cv2
import numpy as np
import torch
import yaml

from wbsr_plugin.archs.supernet_util import plain_flops_counter
from wbsr_plugin.baselines.runners import arm_runner, build_arm_table, classsr_runner, load_plain
from wbsr_plugin.cli.evaluation import engine_runner, evaluate, load_pairs, whole_image_runner
from wbsr_plugin.cli.sharding import available_cpus
from wbsr_plugin.data.difficulty import bgr_image_to_luma, grid_difficulty, quantile_thresholds
from wbsr_plugin.data.hes import parse_hes_options
from wbsr_plugin.data.hes_index import load_or_build_index
from wbsr_plugin.data.prepare_util import AlreadyDone, downsample, extract_subimages, input_images
from wbsr_plugin.inference.checkpoint import load_supernet
from wbsr_plugin.losses.gmm_prior_util import fit_gmm_prior, save_gmm_prior
from wbsr_runtime.files import atomic_write_text, list_images

from .jobs import Job, one_device_each, run_jobs, share_of_machine
from .rows import COST_ORDER, DYNAMIC_METHODS, RUN_KINDS, TABLE_ROWS, run_kinds, run_name, table_rows, training_options
from .time_budget import SAFETY, plan_total_iter, probe_measurement

PACKAGE_PARENT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))  # the folder holding wbsr_plugin/


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
    names = input_images(train_hr)
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
    for name in input_images(lr_folder):
        img = cv2.imread(osp.join(lr_folder, name), cv2.IMREAD_COLOR).astype(np.float64) / 255.
        luma = bgr_image_to_luma(img)
        scores.append(grid_difficulty(luma, min(patch_size, *luma.shape)))
    return torch.cat(scores).numpy()


def prepare_data(preset, train_hr, out_dir):
    """Split, crop, downsample, fit the BDLoss prior and compute the class thresholds (idempotent).

    Returns:
        dict: ``train_hr``, ``train_lr`` (sub-image folders), ``val_hr`` (held-out originals), ``calibration_hr``,
        ``calibration_lr`` (sub-images of the held-out images: what supernet runs measure their class errors on;
        None when the held-out images are smaller than a sub-image),
        ``prior``, ``thresholds`` (K - 1, on ``patch_size`` LR patches), ``classsr_thresholds`` (on training
        patches).
    """
    data_dir = osp.join(out_dir, 'data')
    scale, threads = preset['scale'], min(8, available_cpus())
    train_names, val_names = split_training_images(train_hr, preset['val_every'])
    link_images(train_hr, train_names, osp.join(data_dir, 'src_train'))
    link_images(train_hr, val_names, osp.join(data_dir, 'src_val'))
    paths = {'train_hr': osp.join(data_dir, 'train_hr_sub'), 'train_lr': osp.join(data_dir, f'train_lr_sub_x{scale}'),
             'val_hr': osp.join(data_dir, 'src_val'), 'prior': osp.join(data_dir, f'bdloss_prior_x{scale}.pth'),
             'calibration_hr': osp.join(data_dir, 'val_hr_sub'),
             'calibration_lr': osp.join(data_dir, f'val_lr_sub_x{scale}')}

    def step(label, prepare, *args):
        try:
            log(f'{label}: {prepare(*args, n_thread=threads)} images')
        except AlreadyDone as done:
            log(f'{label}: {done}')

    crop = (preset['subimage_crop'], preset['subimage_step'], 0)
    step('sub-images', extract_subimages, osp.join(data_dir, 'src_train'), paths['train_hr'], *crop)
    step('downsample', downsample, paths['train_hr'], paths['train_lr'], scale)
    step('held-out sub-images (calibration)', extract_subimages, paths['val_hr'], paths['calibration_hr'], *crop)
    if osp.isdir(paths['calibration_hr']) and list_images(paths['calibration_hr'], recursive=True):
        step('held-out downsample (calibration)', downsample, paths['calibration_hr'], paths['calibration_lr'], scale)
    else:
        log(f"held-out images smaller than {preset['subimage_crop']} px: supernet runs calibrate on training patches")
        paths['calibration_hr'] = paths['calibration_lr'] = None
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


def training_runs(preset, order=None):
    """``[(backbone, seed, kind), ...]`` of the preset's rows, backbones in ``order`` (default: the preset's)."""
    backbones = list(order or preset['backbones'])
    return [(backbone, seed, kind) for backbone in backbones for seed in preset['seeds']
            for kind in run_kinds(backbone, preset['rows'])]


def machine_share(preset, jobs):
    """(loader workers, CPU threads or None) of each run: the preset's own with one job, else split."""
    return share_of_machine(jobs, preset['num_worker']) if jobs > 1 else (preset['num_worker'], None)


def subprocess_env(threads=None):
    """Environment of a training subprocess: the package importable and, if given, ``threads`` CPU threads."""
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def device_slots(jobs):
    """Per slot of ``jobs`` runs at once, the environment entries that give it one CUDA device ([{}, ...] without
    CUDA); see :func:`~wbsr_plugin.reproduce_util.jobs.one_device_each`."""
    return one_device_each(jobs, torch.cuda.device_count(), os.environ.get('CUDA_VISIBLE_DEVICES'))


def on_one_device(opt, slot_envs):
    """``opt`` with ``num_gpu: 1`` when every run sees one device (``slot_envs`` of :func:`device_slots`), rather
    than ``auto``, which would take every GPU of the machine."""
    return dict(opt, num_gpu=1) if slot_envs[0] else opt


def devices_note(slot_envs):
    """`` on GPU(s) 0, 1`` for the log, or nothing without CUDA."""
    devices = sorted({env['CUDA_VISIBLE_DEVICES'] for env in slot_envs if env})
    return f" on GPU(s) {', '.join(devices)}, one per run" if devices else ''


def build_hes_index(preset, data):
    """Build the HES index of the training data once, before runs that sample by HES start side by side."""
    backbone = next(iter(preset['backbones']))
    dataset = dict(training_options(preset, backbone, 'hes', 0, data)['datasets']['train'], scale=preset['scale'],
                   phase='train')
    load_or_build_index(dataset, parse_hes_options(dataset), progress=True)


def training_job(opt, folder):
    """Write ``opt`` to ``<folder>/options/<name>.yml``; the :class:`Job` that trains it (log in ``<folder>/logs``)."""
    opt_path = osp.join(folder, 'options', f"{opt['name']}.yml")
    atomic_write_text(opt_path, yaml.safe_dump(opt, sort_keys=False))
    return Job(opt['name'], [sys.executable, '-m', 'wbsr_plugin.train', '-opt', opt_path],
               osp.join(folder, 'logs', f"{opt['name']}.log"), opt['train']['total_iter'])


def train_jobs(preset, data, out_dir, jobs, runs):
    """Write the options of ``runs`` and train those without a final checkpoint, ``jobs`` at a time.

    Each run is ``python -m wbsr_plugin.train -opt <out>/runs/options/<name>.yml`` (BasicSR's
    pipeline) with its output in ``<out>/runs/logs/<name>.log``. With ``jobs`` > 1 the preset's
    loader workers and the CPU threads are split between the runs (:func:`share_of_machine`); with
    CUDA each run sees one GPU (:func:`device_slots`). Returns ``{name: seconds}`` of the runs trained now.
    """
    runs_dir = osp.join(out_dir, 'runs')
    workers, threads = machine_share(preset, jobs)
    slot_envs = device_slots(jobs)
    run_preset = dict(preset, num_worker=workers)
    todo = []
    for backbone, seed, kind in runs:
        opt = on_one_device(training_options(run_preset, backbone, kind, seed, data), slot_envs)
        job = training_job(opt, runs_dir)
        if osp.isfile(checkpoint_path(out_dir, job.name)):
            log(f'train {job.name}: done before, skipped')
            continue
        todo.append(job)
    if not todo:
        return {}
    if any(RUN_KINDS[kind].sampling == 'hes' for _, _, kind in runs):
        build_hes_index(preset, data)
    log(f"train {len(todo)} run(s), {preset['total_iter']} iterations each, {jobs} at a time"
        + (f' ({workers} loader worker(s) and {threads} CPU thread(s) each)' if jobs > 1 else '')
        + devices_note(slot_envs))
    seconds = run_jobs(todo, jobs, runs_dir, subprocess_env(threads), log=lambda m: log(f'train {m}'),
                       slot_envs=slot_envs)
    for job in todo:
        if not osp.isfile(checkpoint_path(out_dir, job.name)):
            raise RuntimeError(f'training {job.name} ended without {checkpoint_path(out_dir, job.name)}; '
                               f'log: {job.log_path}')
    return seconds


def train_all(preset, data, out_dir, jobs=1, order=None):
    """Train every run of the preset's rows and seeds (see :func:`train_jobs`); ``{name: seconds}``."""
    return train_jobs(preset, data, out_dir, jobs, training_runs(preset, order))


def costliest_kind(backbone, rows):
    kinds = run_kinds(backbone, rows)
    return next(k for k in COST_ORDER if k in kinds)


def probe_speed(preset, data, out_dir, jobs, kinds=None):
    """Train the most expensive run of each backbone ``probe_iter`` iterations, ``jobs`` copies at once.

    Args:
        kinds (dict | None): ``{backbone: run kind}`` to probe instead (only these backbones).
            Default: None (every backbone, its most expensive selected kind).

    Returns:
        dict: ``{backbone: {'kind', 'seconds_per_iter', 'startup_s', 'probes': [...]}}``, the
        slowest copy of each backbone (see :mod:`wbsr_plugin.reproduce_util.time_budget`).
    """
    probe_dir = osp.join(out_dir, 'probe')
    shutil.rmtree(probe_dir, ignore_errors=True)  # the runs of an earlier probe
    probe_iter = preset['probe_iter']
    workers, threads = machine_share(preset, jobs)
    slot_envs = device_slots(jobs)
    probe_preset = dict(preset, total_iter=probe_iter, num_worker=workers)
    kinds = kinds or {b: costliest_kind(b, preset['rows']) for b in preset['backbones']}
    backbones = list(kinds)
    if any(RUN_KINDS[k].sampling == 'hes' for k in kinds.values()):
        build_hes_index(preset, data)
    todo = []
    for i in range(max(jobs, len(backbones))):
        backbone = backbones[i % len(backbones)]
        opt = on_one_device(training_options(probe_preset, backbone, kinds[backbone], i, data), slot_envs)
        opt['name'] = f'probe_{run_name(backbone, kinds[backbone], i)}'
        opt['logger']['print_freq'] = 1
        todo.append(training_job(opt, probe_dir))
    log(f'time-budget probe: {len(todo)} run(s) of {probe_iter} iterations, {jobs} at a time '
        f"({', '.join(f'{b} {k}' for b, k in kinds.items())})")
    seconds = run_jobs(todo, jobs, probe_dir, subprocess_env(threads), log=lambda m: log(f'probe {m}'),
                       slot_envs=slot_envs)
    speeds = {}
    for i, job in enumerate(todo):
        backbone = backbones[i % len(backbones)]
        with open(job.log_path, encoding='utf-8', errors='replace') as f:
            measured = dict(probe_measurement(f.read(), seconds[job.name], probe_iter), run=job.name)
        entry = speeds.setdefault(backbone, {'kind': kinds[backbone], 'seconds_per_iter': 0., 'startup_s': 0.,
                                             'probes': []})
        entry['probes'].append(measured)
        entry['seconds_per_iter'] = max(entry['seconds_per_iter'], measured['seconds_per_iter'])
        entry['startup_s'] = max(entry['startup_s'], measured['startup_s'])
        log(f"probe {job.name}: {1 / measured['seconds_per_iter']:.1f} it/s after warm-up, start-up and saving "
            f"{measured['startup_s']:.1f} s")
    return speeds


def fit_time_budget(preset, data, out_dir, jobs, budget_s):
    """Set ``preset['total_iter']`` so that all runs train within ``budget_s`` (a probe measures the speed).

    Returns:
        dict: What was measured and planned (written to preset.json and results.md): ``budget_s``,
        ``jobs``, ``safety``, ``probe_iter``, ``backbones`` (per-backbone speed, see
        :func:`probe_speed`), ``order`` (backbones, slowest first), ``runs``, ``total_iter``, ``planned_s``.
    """
    speeds = probe_speed(preset, data, out_dir, jobs)
    order = sorted(preset['backbones'], key=lambda b: -speeds[b]['seconds_per_iter'])
    runs = training_runs(preset, order)
    costs = [(speeds[b]['startup_s'], speeds[b]['seconds_per_iter']) for b, _, _ in runs]
    total_iter, planned = plan_total_iter(costs, jobs, budget_s)
    preset['total_iter'] = total_iter
    log(f'time budget {budget_s:g} s, {len(runs)} run(s), {jobs} at a time: total_iter {total_iter} '
        f'(planned {planned:.0f} s = {100 * SAFETY:.0f} % of the budget at most)')
    return {'budget_s': budget_s, 'jobs': jobs, 'safety': SAFETY, 'probe_iter': preset['probe_iter'],
            'backbones': speeds, 'order': order, 'runs': len(runs), 'total_iter': total_iter, 'planned_s': planned}


# ----------------------------------------------------------------------------------------------
def matched_reference(rows):
    """The row whose default FLOPs set the matched budget: +WBSR, else the first dynamic row (or None)."""
    if 'wbsr' in rows:
        return 'wbsr'
    return next((r for r in rows if TABLE_ROWS[r][1] in DYNAMIC_METHODS), None)


def evaluate_seed(preset, backbone, seed, data, test_pairs, val_pairs, out_dir):
    """Every selected table row of one backbone and seed on every test set; cached in ``<out>/eval``.

    A cached result is reused when it holds every selected row.
    """
    path = osp.join(out_dir, 'eval', f'{backbone}_s{seed}.json')
    rows = table_rows(backbone, preset['rows'])
    if osp.isfile(path):
        cached = read_json(path)
        if set(rows) <= set(cached['rows']):
            log(f'evaluate {backbone} seed {seed}: done before, skipped')
            return cached
    scale, patch, overlap = preset['scale'], preset['patch_size'], preset['overlap']
    thresholds = data['thresholds']
    opts = {kind: training_options(preset, backbone, kind, seed, data) for kind in run_kinds(backbone, rows)}
    ckpt = {kind: checkpoint_path(out_dir, run_name(backbone, kind, seed)) for kind in opts}
    reference = matched_reference(rows)
    result = {'rows': {}, 'matched_fraction': {}, 'matched_reference': reference,
              'options': {k: osp.join(out_dir, 'runs', 'options', f'{run_name(backbone, k, seed)}.yml') for k in opts}}
    nets, metas, arm_tables = {}, {}, {}
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')

    def network(kind):
        if kind not in nets:
            if RUN_KINDS[kind].model_type == 'DynamicSRModel':
                nets[kind], metas[kind] = load_supernet(ckpt[kind], network_opt=opts[kind]['network_g'],
                                                           device=device)
            else:
                nets[kind] = load_plain(ckpt[kind], opts[kind]['network_g'], device=device)
        return nets[kind]

    def arm_table(kind):
        if kind not in arm_tables:
            arm_tables[kind] = build_arm_table(network(kind), val_pairs, patch, overlap)
        return arm_tables[kind]

    def runner(row, budget=None):
        kind, method = TABLE_ROWS[row]
        net = network(kind)
        if method == 'whole':
            if RUN_KINDS[kind].model_type == 'DynamicSRModel':
                return whole_image_runner(net)
            net_opt = opts[kind]['network_g']
            return whole_image_runner(net, plain_flops_counter(net_opt))
        elif method == 'dynamic':
            return engine_runner(net, thresholds, patch_size=patch, overlap=overlap, budget=budget,
                                    class_errors=metas[kind].get('class_errors'))
        elif method == 'arm':
            table = arm_table(kind)
            return arm_runner(net, table, patch, overlap, eta=table['eta'] if budget is None else None,
                                 budget=budget)
        elif method == 'classsr':
            return classsr_runner(net, patch, overlap, budget=budget)
        else:
            raise ValueError(f'unknown evaluation method {method!r}; expected one of whole, dynamic, arm, classsr.')

    def measure(run):
        return {name: evaluate(run, pairs, scale) for name, pairs in test_pairs.items()}

    log(f'evaluate {backbone} seed {seed} on {device.type}: {", ".join(rows)}')
    for row in ([reference] if reference else []) + [r for r in rows if r != reference]:
        entry = result['rows'][row] = {'default': measure(runner(row))}
        if row == reference:
            # the budget of every dynamic method: what the reference spends by default, at most the plain
            # network's FLOPs (tiling overlaps can push the default above 100 %; a budget lies in (0, 1])
            result['matched_fraction'] = {name: min(r['flops_percent'] / 100, 1.0)
                                          for name, r in entry['default'].items()}
        if TABLE_ROWS[row][1] in DYNAMIC_METHODS:
            entry['matched'] = {name: evaluate(runner(row, result['matched_fraction'][name]), pairs, scale)
                                for name, pairs in test_pairs.items()}
        if row == 'wbsr':
            entry['sweep'] = {f'{b:g}': measure(runner(row, b)) for b in preset['sweep_budgets']}
    if 'arm' in rows:
        table = arm_table(TABLE_ROWS['arm'][0])
        result['arm'] = {'eta': table['eta'], 'val_patches': table['val_patches'], 'edges': table['edges'].tolist(),
                         'psnr_table': table['psnr'].tolist()}
    write_json(path, result)
    return result


def evaluate_all(preset, data, test_sets, out_dir):
    """``{backbone: {seed: result}}`` for every backbone and seed (see :func:`evaluate_seed`)."""
    scale = preset['scale']
    test_pairs = {name: load_pairs(folder, None, scale) for name, folder in test_sets.items()}
    for name, pairs in test_pairs.items():
        if not pairs:
            raise ValueError(f'test set {name} ({test_sets[name]}) holds no images.')
    val_pairs = load_pairs(data['val_hr'], None, scale) if 'arm' in preset['rows'] else []
    return {backbone: {seed: evaluate_seed(preset, backbone, seed, data, test_pairs, val_pairs, out_dir)
                       for seed in preset['seeds']}
            for backbone in preset['backbones']}
