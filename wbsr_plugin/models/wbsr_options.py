"""The ``wbsr`` section of a training YAML: defaults, strict validation, class thresholds.

.. code-block:: yaml

    wbsr:
      subnet_sampling: sandwich   # uniform | sandwich | cost_weighted (see SubnetSampler)
      loss_lr: 1.0e-2             # lr of a loss's own parameters (BDLoss noise scale)
      dynamic_val: true           # validate dynamic inference next to the full network
      thresholds: ~               # K-1 class thresholds; default: from the HES index of datasets.train
      inference:                  # DynamicInferenceEngine options for validation
        patch_size: 64
        overlap: 4
        budget: ~                 # target fraction of the full FLOPs, or ~ for Eq. 15
"""
import copy

from basicsr.utils import get_root_logger
from wbsr_plugin.data.hes import index_thresholds_for_dataset
from wbsr_plugin.inference.checkpoint import read_checkpoint
from wbsr_plugin.inference.engine import DEFAULT_PATCH_SIZE

DEFAULTS = {
    'subnet_sampling': 'sandwich',
    'loss_lr': 1.0e-2,
    'dynamic_val': True,
    'thresholds': None,
    'inference': {},
}
INFERENCE_KEYS = ('patch_size', 'overlap', 'trim', 'num_classes', 'budget', 'target_gflops', 'alpha', 'subnet',
                  'max_batch_pixels', 'channels_last')


def parse_wbsr_options(section):
    """Return the ``wbsr`` options with defaults filled in; unknown keys raise ``ValueError``."""
    section = {} if section is None else copy.deepcopy(dict(section))
    unknown = set(section) - set(DEFAULTS)
    if unknown:
        raise ValueError(f'wbsr: unknown key(s) {sorted(unknown)}; allowed keys are {sorted(DEFAULTS)}.')
    opt = {**copy.deepcopy(DEFAULTS), **section}
    inference = dict(opt['inference'] or {})
    unknown = set(inference) - set(INFERENCE_KEYS)
    if unknown:
        raise ValueError(f'wbsr.inference: unknown key(s) {sorted(unknown)}; allowed keys are {list(INFERENCE_KEYS)}.')
    opt['inference'] = inference
    if not isinstance(opt['loss_lr'], (int, float)) or opt['loss_lr'] <= 0:
        raise ValueError(f"wbsr.loss_lr must be a positive number (write 1.0e-2, not 1e-2), got {opt['loss_lr']!r}.")
    if not isinstance(opt['dynamic_val'], bool):
        raise ValueError(f"wbsr.dynamic_val must be true or false, got {opt['dynamic_val']!r}.")
    thresholds = opt['thresholds']
    if thresholds is not None and (not isinstance(thresholds, (list, tuple)) or len(thresholds) < 1):
        raise ValueError(f'wbsr.thresholds must be a list of K-1 ascending numbers or ~, got {thresholds!r}.')
    return opt


def training_thresholds(opt, wbsr_opt):
    """Class thresholds for dynamic inference and the LR patch size they were measured on.

    In order: ``wbsr.thresholds``; the HES index of ``datasets.train`` when it is a
    ``ClassBalancedPairedDataset``; the ``'wbsr'`` entry of ``path.pretrain_network_g``;
    otherwise ``(None, patch_size)``, and inference falls back to per-image quantiles.
    """
    patch_size = wbsr_opt['inference'].get('patch_size', DEFAULT_PATCH_SIZE)
    if wbsr_opt['thresholds'] is not None:
        return [float(t) for t in wbsr_opt['thresholds']], patch_size
    train_set = opt.get('datasets', {}).get('train')
    if opt.get('is_train') and train_set and train_set.get('type') == 'ClassBalancedPairedDataset':
        found = index_thresholds_for_dataset(train_set)
        if found is not None:
            return found
    pretrained = opt['path'].get('pretrain_network_g')
    if pretrained:
        meta = read_checkpoint(pretrained)[1]
        if meta.get('thresholds') is not None:
            return list(meta['thresholds']), meta['patch_size']
    get_root_logger().info('Dynamic inference uses per-image quantile thresholds (no HES index, no wbsr.thresholds).')
    return None, patch_size
