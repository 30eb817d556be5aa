"""The rows of the reproduction and the BasicSR training options of each.

A *run* is one training (a row's network, one seed); several table rows can share a run:
ARM evaluates the uniform + L1 supernet, WBSR-dagger the +WBSR supernet.
"""
import copy

# run kind -> (model_type, sampling, loss); 'plain' trains the BasicSR network itself.
RUN_KINDS = {
    'plain': ('SRModel', 'uniform', 'l1'),
    'uniform': ('DynamicSRModel', 'uniform', 'l1'),
    'hes': ('DynamicSRModel', 'hes', 'l1'),
    'bdloss': ('DynamicSRModel', 'uniform', 'bdloss'),
    'wbsr': ('DynamicSRModel', 'hes', 'bdloss'),
    'classsr': ('WBSRClassSRModel', 'uniform', 'l1'),
}

# table row -> (run kind, evaluation method), in the order of the paper's tables
TABLE_ROWS = {
    'plain': ('plain', 'whole'),
    'classsr': ('classsr', 'classsr'),
    'arm': ('uniform', 'arm'),
    'hes': ('hes', 'dynamic'),
    'bdloss': ('bdloss', 'dynamic'),
    'wbsr': ('wbsr', 'dynamic'),
    'wbsr_dagger': ('wbsr', 'whole'),
}
ROW_LABELS = {
    'plain': '{net} (uniform + L1)',
    'classsr': '+ClassSR',
    'arm': '+ARM',
    'hes': '+HES',
    'bdloss': '+BDLoss',
    'wbsr': '+WBSR',
    'wbsr_dagger': '+WBSR-dagger (full supernet)',
}
PLAIN_TYPES = {'srresnet': 'MSRResNet', 'rcan': 'RCAN'}
SUPERNET_TYPES = {'srresnet': 'WBSRResNet', 'rcan': 'WBSRRCAN'}
NET_LABELS = {'srresnet': 'SRResNet', 'rcan': 'RCAN'}


def table_rows(backbone):
    """Table rows of a backbone (ClassSR only with SRResNet branches)."""
    if backbone == 'srresnet':
        return list(TABLE_ROWS)
    if backbone == 'rcan':
        return [r for r in TABLE_ROWS if r != 'classsr']
    raise ValueError(f'unknown backbone {backbone!r}; expected one of {sorted(PLAIN_TYPES)}.')


def run_kinds(backbone):
    """Training runs a backbone needs, in training order."""
    kinds = []
    for row in table_rows(backbone):
        kind = TABLE_ROWS[row][0]
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def run_name(backbone, kind, seed):
    return f'{backbone}_{kind}_s{seed}'


def network_options(preset, backbone, kind):
    """``network_g`` of a run."""
    arch = dict(preset['backbones'][backbone])
    scale = preset['scale']
    if kind == 'classsr':
        if backbone != 'srresnet':
            raise ValueError(f'ClassSR runs with SRResNet branches only, not {backbone!r}.')
        return {'type': 'WBSRClassSRNet', 'num_in_ch': 3, 'num_out_ch': 3, 'widths': list(preset['classsr_widths']),
                'num_block': arch['num_block'], 'upscale': scale}
    if kind == 'plain':
        arch.pop('widths')
        arch.pop('depths')
        return {'type': PLAIN_TYPES[backbone], 'num_in_ch': 3, 'num_out_ch': 3, **arch, 'upscale': scale}
    if kind in RUN_KINDS:
        return {'type': SUPERNET_TYPES[backbone], 'num_in_ch': 3, 'num_out_ch': 3, **arch, 'upscale': scale}
    raise ValueError(f'unknown run kind {kind!r}; expected one of {sorted(RUN_KINDS)}.')


def training_options(preset, backbone, kind, seed, data):
    """BasicSR training options of one run.

    Args:
        preset (dict): From :func:`wbsr_plugin.reproduce_util.presets.get_preset`.
        backbone (str): 'srresnet' or 'rcan'.
        kind (str): A key of :data:`RUN_KINDS`.
        seed (int): ``manual_seed``.
        data (dict): From :func:`wbsr_plugin.reproduce_util.pipeline.prepare_data` (``train_hr``,
            ``train_lr``, ``prior``, ``thresholds``, ``classsr_thresholds``).
    """
    if kind not in RUN_KINDS:
        raise ValueError(f'unknown run kind {kind!r}; expected one of {sorted(RUN_KINDS)}.')
    model_type, sampling, loss = RUN_KINDS[kind]
    scale, total_iter = preset['scale'], preset['total_iter']
    dataset = {
        'name': 'train', 'type': 'PairedImageDataset', 'dataroot_gt': data['train_hr'],
        'dataroot_lq': data['train_lr'], 'filename_tmpl': '{}', 'io_backend': {'type': 'disk'},
        'gt_size': preset['gt_size'], 'use_hflip': True, 'use_rot': True,
        'num_worker_per_gpu': preset['num_worker'], 'batch_size_per_gpu': preset['batch_size'],
        'dataset_enlarge_ratio': 1, 'prefetch_mode': None,
    }
    if model_type == 'DynamicSRModel':
        dataset['type'] = 'ClassBalancedPairedDataset'
        if sampling == 'hes':
            dataset.update(hes_enabled=True, hes_num_classes=preset['hes_num_classes'], hes_delta=preset['hes_delta'],
                           hes_switch_ratio=preset['hes_switch_ratio'])
        elif sampling == 'uniform':
            dataset['hes_enabled'] = False
        else:
            raise ValueError(f'unknown sampling {sampling!r}; expected one of uniform, hes.')
    if loss == 'l1':
        pixel_opt = {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}
    elif loss == 'bdloss':
        pixel_opt = {'type': 'BDLoss', 'loss_weight': 1.0, 'reduction': 'mean', 'estimator': 'gai',
                     'prior_path': data['prior'], 'kernel': 'gaussian', 'scale': scale}
    else:
        raise ValueError(f'unknown loss {loss!r}; expected one of l1, bdloss.')
    opt = {
        'name': run_name(backbone, kind, seed),
        'model_type': model_type,
        'scale': scale,
        'num_gpu': 'auto',
        'manual_seed': int(seed),
        'datasets': {'train': dataset},
        'network_g': network_options(preset, backbone, kind),
        'path': {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None},
        'train': {
            'ema_decay': preset['ema_decay'],
            'optim_g': {'type': 'Adam', 'lr': float(preset['lr']), 'weight_decay': 0, 'betas': list(preset['betas'])},
            'scheduler': {'type': 'CosineAnnealingRestartLR', 'periods': [total_iter], 'restart_weights': [1],
                          'eta_min': float(preset['eta_min'])},
            'total_iter': total_iter,
            'warmup_iter': -1,
            'pixel_opt': pixel_opt,
        },
        'logger': {'print_freq': max(1, min(100, total_iter // 10)), 'save_checkpoint_freq': total_iter,
                   'use_tb_logger': False, 'wandb': None},
        'dist_params': {'backend': 'nccl', 'port': 29500},
    }
    if model_type == 'DynamicSRModel':
        opt['wbsr'] = {'subnet_sampling': preset['subnet_sampling'], 'loss_lr': 1.0e-2, 'dynamic_val': False,
                       'thresholds': [float(t) for t in data['thresholds']],
                       'inference': {'patch_size': preset['patch_size'], 'overlap': preset['overlap']}}
    elif model_type == 'WBSRClassSRModel':
        opt['classsr'] = {'branch_ratio': preset['classsr_branch_ratio'],
                          'thresholds': [float(t) for t in data['classsr_thresholds']],
                          'class_loss_weight': 5.0e-4, 'average_loss_weight': 3.0e-3}
    return copy.deepcopy(opt)
