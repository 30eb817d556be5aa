"""BasicSR training options built in Python, in the layout of BasicSR's YAML files.

The one place where the demo, the reproduction, the benchmarks and the tests build what
``python wbsr_plugin/train.py -opt X.yml`` would read from a file.
"""
import os
from os import path as osp


def pixel_loss(kind, *, prior_path=None, scale=None):
    """``train.pixel_opt`` of ``kind``: ``'l1'``, ``'mse'`` or ``'bdloss'`` (which needs ``prior_path`` and
    ``scale``)."""
    if kind == 'l1':
        return {'type': 'L1Loss', 'loss_weight': 1.0, 'reduction': 'mean'}
    if kind == 'mse':
        return {'type': 'MSELoss', 'loss_weight': 1.0, 'reduction': 'mean'}
    if kind == 'bdloss':
        return {'type': 'BDLoss', 'loss_weight': 1.0, 'reduction': 'mean', 'estimator': 'gai', 'prior_path': prior_path,
                'kernel': 'gaussian', 'scale': scale}
    raise ValueError(f'unknown loss {kind!r}; expected one of l1, mse, bdloss.')


def y_metrics(scale, ssim=True):
    """``val.metrics``: PSNR (and SSIM) on the Y channel with ``scale`` border pixels cropped, as BasicSR reports."""
    metrics = {'psnr': {'type': 'calculate_psnr', 'crop_border': scale, 'test_y_channel': True}}
    if ssim:
        metrics['ssim'] = {'type': 'calculate_ssim', 'crop_border': scale, 'test_y_channel': True}
    return metrics


def paired_dataset(name, hr, lr, **options):
    """A ``PairedImageDataset`` of two folders (``options`` add keys or override them, ``type`` included)."""
    return {'name': name, 'type': 'PairedImageDataset', 'dataroot_gt': hr, 'dataroot_lq': lr,
            'io_backend': {'type': 'disk'}, **options}


def training_dataset(name, hr, lr, *, gt_size, batch_size, num_worker=0, enlarge_ratio=1, **options):
    """:func:`paired_dataset` with random crops of ``gt_size``, flips and rotations, and its loader (``options``
    add keys or override them)."""
    loader = {'gt_size': gt_size, 'use_hflip': True, 'use_rot': True, 'num_worker_per_gpu': num_worker,
              'batch_size_per_gpu': batch_size, 'dataset_enlarge_ratio': enlarge_ratio, 'prefetch_mode': None}
    return paired_dataset(name, hr, lr, **{**loader, **options})


def training_options(name, *, model_type, scale, network, pixel_opt, total_iter, lr, datasets=None, num_gpu='auto',
                     manual_seed=0, ema_decay=0.999, betas=(0.9, 0.99), eta_min=1.0e-7, scheduler=None,
                     metrics=None, print_freq=None, wbsr=None, dist_backend=None):
    """BasicSR training options: Adam, cosine annealing over ``total_iter`` to ``eta_min`` (or ``scheduler``).

    Args:
        name (str): Experiment name.
        model_type (str): ``'SRModel'``, ``'DynamicSRModel'``, ...
        scale (int): Upscale factor.
        network (dict): ``network_g``.
        pixel_opt (dict): ``train.pixel_opt`` (:func:`pixel_loss`).
        total_iter (int): Training iterations; checkpoints (and validation, with ``metrics``) at the end.
        lr (float): Adam's learning rate.
        datasets (dict | None): ``datasets`` (``train``, and ``val`` with ``metrics``); None: batches are fed
            directly to the model. Default: None.
        num_gpu (int | str): Default: 'auto'.
        manual_seed (int): Default: 0.
        ema_decay (float): Default: 0.999.
        betas (tuple[float]): Adam's betas. Default: (0.9, 0.99).
        eta_min (float): Final learning rate of the cosine schedule. Default: 1e-7.
        scheduler (dict | None): ``train.scheduler`` instead of the cosine schedule. Default: None.
        metrics (dict | None): ``val.metrics`` (:func:`y_metrics`), validated at the end; None: no ``val``.
        print_freq (int | None): Default: a tenth of ``total_iter``, between 1 and 100.
        wbsr (dict | None): The ``wbsr`` section of a ``DynamicSRModel``. Default: None.
        dist_backend (str | None): ``dist_params.backend`` (port 29500). Default: None (no ``dist_params``).
    """
    opt = {'name': name, 'model_type': model_type, 'scale': scale, 'num_gpu': num_gpu, 'manual_seed': manual_seed}
    if datasets is not None:
        opt['datasets'] = datasets
    opt['network_g'] = network
    opt['path'] = {'pretrain_network_g': None, 'strict_load_g': True, 'resume_state': None}
    opt['train'] = {
        'ema_decay': ema_decay,
        'optim_g': {'type': 'Adam', 'lr': float(lr), 'weight_decay': 0, 'betas': list(betas)},
        'scheduler': scheduler or {'type': 'CosineAnnealingRestartLR', 'periods': [total_iter], 'restart_weights': [1],
                                   'eta_min': float(eta_min)},
        'total_iter': total_iter,
        'warmup_iter': -1,
        'pixel_opt': pixel_opt,
    }
    if wbsr is not None:
        opt['wbsr'] = wbsr
    if metrics is not None:
        opt['val'] = {'val_freq': total_iter, 'save_img': False, 'metrics': metrics}
    opt['logger'] = {'print_freq': max(1, min(100, total_iter // 10)) if print_freq is None else print_freq,
                     'save_checkpoint_freq': total_iter, 'use_tb_logger': False, 'wandb': None}
    if dist_backend is not None:
        opt['dist_params'] = {'backend': dist_backend, 'port': 29500}
    return opt


def parsed_options(opt, root):
    """What ``basicsr.utils.options.parse_options`` adds for a non-distributed training run under ``root``, for
    building a model directly (``build_model``) rather than through ``train.py``."""
    opt = dict(opt, dist=False, rank=0, world_size=1, is_train=True, auto_resume=False, root_path=str(root))
    experiments = osp.join(str(root), 'experiments', opt['name'])
    opt['path'] = dict(opt['path'], experiments_root=experiments, models=osp.join(experiments, 'models'),
                       training_states=osp.join(experiments, 'training_states'), log=experiments,
                       visualization=osp.join(experiments, 'visualization'))
    for folder in ('models', 'training_states'):
        os.makedirs(opt['path'][folder], exist_ok=True)
    for phase, dataset in opt.get('datasets', {}).items():
        dataset['phase'] = phase.split('_')[0]
        dataset['scale'] = opt['scale']
    return opt
