"""The rows of the reproduction and the BasicSR training options of each.

A *run* is one training (a row's network, one seed); several table rows can share a run:
ARM and the Eq. 15 row of the uniform + L1 supernet evaluate the same run, WBSR-dagger the
+WBSR supernet. Besides the paper's rows there are rows that separate the causes of a gain:
MSE (the Gaussian kernel of BDLoss without its balancing term) on the plain network and on the
supernet, the uniform + L1 supernet with Eq. 15, and +WBSR with distillation.
"""
import collections
import copy

from wbsr_plugin.archs.supernet_util import supernet_class, supernet_for_label, supernet_types
from wbsr_plugin.cli import training_options as options

RunKind = collections.namedtuple('RunKind', ['model_type', 'sampling', 'loss', 'distill'])

# run kind -> how it trains; 'plain*' trains the BasicSR network itself.
RUN_KINDS = {
    'plain': RunKind('SRModel', 'uniform', 'l1', False),
    'plain_mse': RunKind('SRModel', 'uniform', 'mse', False),
    'uniform': RunKind('DynamicSRModel', 'uniform', 'l1', False),
    'uniform_mse': RunKind('DynamicSRModel', 'uniform', 'mse', False),
    'hes': RunKind('DynamicSRModel', 'hes', 'l1', False),
    'bdloss': RunKind('DynamicSRModel', 'uniform', 'bdloss', False),
    'wbsr': RunKind('DynamicSRModel', 'hes', 'bdloss', False),
    'wbsr_distill': RunKind('DynamicSRModel', 'hes', 'bdloss', True),
    'classsr': RunKind('WBSRClassSRModel', 'uniform', 'l1', False),
}
# run kinds from the most to the least expensive step (the time-budget probe trains the first one selected)
COST_ORDER = ('wbsr_distill', 'wbsr', 'bdloss', 'hes', 'uniform_mse', 'uniform', 'classsr', 'plain_mse', 'plain')

# table row -> (run kind, evaluation method): the paper's tables first, then the rows that separate causes
TABLE_ROWS = {
    'plain': ('plain', 'whole'),
    'classsr': ('classsr', 'classsr'),
    'arm': ('uniform', 'arm'),
    'hes': ('hes', 'dynamic'),
    'bdloss': ('bdloss', 'dynamic'),
    'wbsr': ('wbsr', 'dynamic'),
    'wbsr_dagger': ('wbsr', 'whole'),
    'plain_mse': ('plain_mse', 'whole'),
    'uniform': ('uniform', 'dynamic'),
    'uniform_mse': ('uniform_mse', 'dynamic'),
    'wbsr_distill': ('wbsr_distill', 'dynamic'),
}
PAPER_ROWS = ('plain', 'classsr', 'arm', 'hes', 'bdloss', 'wbsr', 'wbsr_dagger')
DYNAMIC_METHODS = ('classsr', 'arm', 'dynamic')
ROW_LABELS = {
    'plain': '{net} (uniform + L1)',
    'classsr': '+ClassSR',
    'arm': '+ARM',
    'hes': '+HES',
    'bdloss': '+BDLoss',
    'wbsr': '+WBSR',
    'wbsr_dagger': '+WBSR-dagger (full supernet)',
    'plain_mse': '{net} (uniform + MSE)',
    'uniform': 'supernet, uniform + L1, Eq. 15',
    'uniform_mse': 'supernet, uniform + MSE, Eq. 15',
    'wbsr_distill': '+WBSR + distillation',
}
# (row, reference row, what the PSNR gap measures): the report shows those whose rows were both evaluated
COMPARISONS = (
    ('plain_mse', 'plain', 'MSE instead of L1, plain network'),
    ('uniform_mse', 'uniform', 'MSE instead of L1, supernet (the kernel of BDLoss alone)'),
    ('bdloss', 'uniform_mse', "BDLoss's balancing term (BDLoss vs. its Gaussian kernel alone)"),
    ('bdloss', 'uniform', 'BDLoss instead of L1'),
    ('hes', 'uniform', 'HES sampling instead of uniform'),
    ('wbsr', 'uniform', 'HES + BDLoss together'),
    ('wbsr_distill', 'wbsr', 'distillation added to +WBSR'),
    ('wbsr_dagger', 'plain', 'full supernet vs. plain network (the cost of weight sharing)'),
)
CLASSSR_BACKBONE = 'srresnet'  # ClassSR's branches are MSRResNets
SIZE_OPTIONS = ('num_feat', 'num_group', 'num_block', 'widths', 'depths')  # a backbone entry of a preset


def backbone_supernet(backbone):
    """The supernet class of a backbone, named by its label in lower case (``'srresnet'``)."""
    cls = supernet_for_label(backbone)
    if cls is None:
        known = sorted(supernet_class(name).LABEL.lower() for name in supernet_types())
        raise ValueError(f'unknown backbone {backbone!r}; expected one of {known}.')
    return cls


def net_label(backbone):
    """How tables name a backbone (``'SRResNet'``)."""
    return backbone_supernet(backbone).LABEL


def paper_backbone(backbone):
    """A preset's backbone entry for the paper's network: its size, widths and depths."""
    return {k: v for k, v in backbone_supernet(backbone).default_options().items() if k in SIZE_OPTIONS}


def check_rows(rows):
    """``rows`` in table order; ValueError naming the unknown ones and the known rows."""
    unknown = [r for r in rows if r not in TABLE_ROWS]
    if unknown:
        raise ValueError(f'unknown row(s) {unknown}; expected some of {list(TABLE_ROWS)}.')
    return [r for r in TABLE_ROWS if r in rows]


def table_rows(backbone, rows=None):
    """Table rows of a backbone among ``rows`` (default: all), in table order; ClassSR only with SRResNet."""
    rows = list(TABLE_ROWS) if rows is None else check_rows(rows)
    backbone_supernet(backbone)
    return rows if backbone == CLASSSR_BACKBONE else [r for r in rows if r != 'classsr']


def run_kinds(backbone, rows=None):
    """Training runs the rows of a backbone need, in table order."""
    kinds = []
    for row in table_rows(backbone, rows):
        kind = TABLE_ROWS[row][0]
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def run_name(backbone, kind, seed):
    return f'{backbone}_{kind}_s{seed}'


def network_options(preset, backbone, kind):
    """``network_g`` of a run."""
    if kind not in RUN_KINDS:
        raise ValueError(f'unknown run kind {kind!r}; expected one of {sorted(RUN_KINDS)}.')
    arch = dict(preset['backbones'][backbone])
    scale = preset['scale']
    model_type = RUN_KINDS[kind].model_type
    if model_type == 'WBSRClassSRModel':
        if backbone != CLASSSR_BACKBONE:
            raise ValueError(f'ClassSR runs with {net_label(CLASSSR_BACKBONE)} branches only, not {backbone!r}.')
        return {'type': 'WBSRClassSRNet', 'num_in_ch': 3, 'num_out_ch': 3, 'widths': list(preset['classsr_widths']),
                'num_block': arch['num_block'], 'upscale': scale}
    supernet = backbone_supernet(backbone)
    if model_type == 'SRModel':
        arch.pop('widths')
        arch.pop('depths')
        return {'type': supernet.PLAIN_TYPE, 'num_in_ch': 3, 'num_out_ch': 3, **arch, 'upscale': scale}
    elif model_type == 'DynamicSRModel':
        return {'type': supernet.__name__, 'num_in_ch': 3, 'num_out_ch': 3, **arch, 'upscale': scale}
    else:
        raise ValueError(f'unknown model type {model_type!r}; expected one of SRModel, DynamicSRModel, '
                         'WBSRClassSRModel.')


def training_options(preset, backbone, kind, seed, data):
    """BasicSR training options of one run.

    Args:
        preset (dict): From :func:`wbsr_plugin.reproduce_util.presets.get_preset`.
        backbone (str): 'srresnet' or 'rcan'.
        kind (str): A key of :data:`RUN_KINDS`.
        seed (int): ``manual_seed``.
        data (dict): From :func:`wbsr_plugin.reproduce_util.pipeline.prepare_data` (``train_hr``,
            ``train_lr``, ``calibration_hr``, ``calibration_lr``, ``prior``, ``thresholds``, ``classsr_thresholds``).
    """
    if kind not in RUN_KINDS:
        raise ValueError(f'unknown run kind {kind!r}; expected one of {sorted(RUN_KINDS)}.')
    model_type, sampling, loss, distill = RUN_KINDS[kind]
    scale, total_iter = preset['scale'], preset['total_iter']
    dataset = options.training_dataset('train', data['train_hr'], data['train_lr'], gt_size=preset['gt_size'],
                               batch_size=preset['batch_size'], num_worker=preset['num_worker'], filename_tmpl='{}')
    if model_type == 'DynamicSRModel':
        dataset['type'] = 'ClassBalancedPairedDataset'
        if sampling == 'hes':
            dataset.update(hes_enabled=True, hes_num_classes=preset['hes_num_classes'], hes_delta=preset['hes_delta'],
                           hes_switch_ratio=preset['hes_switch_ratio'])
        elif sampling == 'uniform':
            dataset['hes_enabled'] = False
        else:
            raise ValueError(f'unknown sampling {sampling!r}; expected one of uniform, hes.')
    wbsr = None
    if model_type == 'DynamicSRModel':
        wbsr = {'subnet_sampling': preset['subnet_sampling'], 'loss_lr': 1.0e-2, 'dynamic_val': False,
                'thresholds': [float(t) for t in data['thresholds']],
                'calibration_patches': int(preset['calibration_patches']),
                'inference': {'patch_size': preset['patch_size'], 'overlap': preset['overlap']}}
        if data.get('calibration_hr'):
            wbsr['calibration_set'] = {'dataroot_gt': data['calibration_hr'], 'dataroot_lq': data['calibration_lr']}
        if distill:
            wbsr['distill_weight'] = float(preset['distill_weight'])
    pixel_opt = options.pixel_loss(loss, prior_path=data['prior'], scale=scale)
    opt = options.training_options(run_name(backbone, kind, seed), model_type=model_type, scale=scale,
                                   network=network_options(preset, backbone, kind), pixel_opt=pixel_opt,
                                   total_iter=total_iter, lr=preset['lr'], datasets={'train': dataset},
                                   manual_seed=int(seed), ema_decay=preset['ema_decay'], betas=preset['betas'],
                                   eta_min=preset['eta_min'], wbsr=wbsr, dist_backend='nccl')
    if model_type == 'WBSRClassSRModel':
        opt['classsr'] = {'branch_ratio': preset['classsr_branch_ratio'],
                          'thresholds': [float(t) for t in data['classsr_thresholds']],
                          'class_loss_weight': 5.0e-4, 'average_loss_weight': 3.0e-3}
    return copy.deepcopy(opt)
