"""Presets of the reproduction of the paper's Tables 1-2 (see docs/reproduce.md).

Every row of a preset trains for the same ``total_iter`` x ``batch_size`` (the training budget).
"""
import copy

from .rows import PAPER_ROWS, TABLE_ROWS, check_rows, paper_backbone

PAPER_SRRESNET = paper_backbone('srresnet')
PAPER_RCAN = paper_backbone('rcan')

# Shared by every preset unless overridden.
COMMON = {
    'scale': 4,
    'seeds': [0],
    'rows': list(PAPER_ROWS),  # table rows trained and evaluated (rows.TABLE_ROWS)
    'backbones': {'srresnet': PAPER_SRRESNET},
    'classsr_widths': [36, 52, 64],
    'total_iter': 200000,
    'batch_size': 16,
    'gt_size': 128,
    'lr': 2.0e-4,
    'eta_min': 1.0e-7,
    'betas': [0.9, 0.999],
    'ema_decay': 0.999,
    'num_worker': 6,
    'subimage_crop': 480,
    'subimage_step': 240,
    'val_every': 10,  # every 10th training image (sorted by name) is held out for ARM's table
    'prior_components': 8,
    'prior_max_pixels': 20000000,
    'hes_num_classes': 10,
    'hes_delta': 0.9,
    'hes_switch_ratio': 0.7,
    'subnet_sampling': 'sandwich',
    'classsr_branch_ratio': 0.5,
    'patch_size': 32,  # LR patch of dynamic inference (ClassSR / ARM convention: 32, stride 28)
    'overlap': 4,
    'sweep_budgets': [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
    'tie_tolerance_db': 0.0,
    'distill_weight': 1.0,  # wbsr.distill_weight of the +WBSR + distillation row (docs/RESULTS.md)
    'calibration_patches': 256,  # wbsr.calibration_patches of every supernet run (what budgets spend by)
    'probe_iter': 100,  # iterations of each --time-budget probe run
}

PRESETS = {
    # End-to-end check of the machinery in seconds (CI); numbers mean nothing.
    'toy': {
        'seeds': [0],
        'backbones': {'srresnet': {'num_feat': 8, 'num_block': 3, 'widths': [4, 6, 8], 'depths': [1, 2, 3]}},
        'classsr_widths': [4, 6, 8],
        'total_iter': 2,
        'batch_size': 2,
        'gt_size': 32,
        'lr': 5.0e-4,
        'ema_decay': 0,
        'num_worker': 0,
        'subimage_crop': 96,
        'subimage_step': 48,
        'val_every': 4,
        'prior_components': 2,
        'prior_max_pixels': 100000,
        'sweep_budgets': [0.5, 1.0],
        'probe_iter': 4,
        'calibration_patches': 16,
    },
    # The paper's rows, three seeds, on 2 CPU cores with --jobs 2 in about an hour (docs/reproduce.md has the timing).
    'tiny': {
        'seeds': [0, 1, 2],
        'backbones': {'srresnet': {'num_feat': 32, 'num_block': 4, 'widths': [16, 24, 32], 'depths': [1, 2, 4]}},
        'classsr_widths': [16, 24, 32],
        'total_iter': 1000,
        'batch_size': 4,
        'gt_size': 64,
        'lr': 5.0e-4,
        'ema_decay': 0,
        'num_worker': 0,
        'prior_max_pixels': 2000000,
        'sweep_budgets': [0.5, 0.6, 0.7, 1.0],
        'probe_iter': 20,
    },
    # One GPU, every row (causes included): `--jobs 4 --time-budget 420` fits the training in 7 minutes.
    'small': {
        'seeds': [0, 1],
        'backbones': {
            'srresnet': PAPER_SRRESNET,
            'rcan': {'num_feat': 64, 'num_group': 4, 'num_block': 8, 'widths': [36, 52, 64], 'depths': [2, 4, 8]},
        },
        'rows': list(TABLE_ROWS),
        'total_iter': 1000,
        'batch_size': 16,
        'lr': 5.0e-4,
        'ema_decay': 0,
        'num_worker': 8,  # loader workers of the whole machine: --jobs N gives each run num_worker // N
        'probe_iter': 50,
    },
    # The paper's configuration (Sec. 5.1): DIV2K, 200k iterations x batch 16, 128x128 patches.
    'paper': {
        'backbones': {'srresnet': PAPER_SRRESNET, 'rcan': PAPER_RCAN},
    },
}


def get_preset(name, overrides=None):
    """The options of preset ``name`` merged over :data:`COMMON`, then ``overrides`` (keys of COMMON only)."""
    if name not in PRESETS:
        raise ValueError(f'unknown preset {name!r}; expected one of {sorted(PRESETS)}.')
    preset = {**copy.deepcopy(COMMON), **copy.deepcopy(PRESETS[name]), 'name': name}
    for key, value in (overrides or {}).items():
        if key not in COMMON:
            raise ValueError(f'unknown preset option {key!r}; allowed: {sorted(COMMON)}.')
        if value is not None:
            preset[key] = value
    preset['rows'] = check_rows(preset['rows'])
    return preset
