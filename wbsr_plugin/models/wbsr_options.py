"""The ``wbsr`` section of a training YAML: defaults, strict validation, class thresholds.

.. code-block:: yaml

    wbsr:
      subnet_sampling: sandwich   # uniform | sandwich | cost_weighted (see SubnetSampler)
      distill_weight: 0.0         # in-place distillation: weight of MSE(smaller subnet, full output), 0 = off
      loss_lr: 1.0e-2             # lr of a loss's own parameters (BDLoss noise scale)
      dynamic_val: true           # validate dynamic inference next to the full network
      thresholds: ~               # K-1 class thresholds; default: from the HES index of datasets.train
      calibration_patches: 256    # patches measuring every subnet's error per class at each checkpoint
                                  # (what a budget spends on, what a quality target bounds), 0 = off
      calibration_set: ~          # paired dataset (dataroot_gt, dataroot_lq, ...) of images neither training
                                  # nor validation uses; ~: the training images (optimistic, logged)
      inference:                  # DynamicInferenceEngine options for validation (docs/options.md)
        patch_size: 64
        overlap: 4
        budget: ~                 # a planning target (budget, max_loss, ...), or ~ for the default policy
"""
import copy

from wbsr_plugin.data.hes import parse_hes_options
from wbsr_plugin.data.hes_index import dataset_threshold_table
from wbsr_plugin.inference.calibration import DEFAULT_CALIBRATION_PATCHES, dataset_patch_pairs
from wbsr_plugin.inference.checkpoint import read_checkpoint
from wbsr_runtime.class_errors import CALIBRATION_CONTEXT, ClassErrors
from wbsr_runtime.class_thresholds import DEFAULT_NUM_CLASSES, ClassThresholds
from wbsr_runtime.planning_target import PlanningTarget, PlanningTargetError
from wbsr_runtime.tile_geometry import DEFAULT_PATCH_SIZE

from basicsr.utils import get_root_logger

# Training dataset types whose LR images give the class thresholds of dynamic inference.
PAIRED_DATASETS = ('ClassBalancedPairedDataset', 'PairedImageDataset')

DEFAULTS = {
    'subnet_sampling': 'sandwich',
    'distill_weight': 0.0,
    'loss_lr': 1.0e-2,
    'dynamic_val': True,
    'thresholds': None,
    'calibration_patches': DEFAULT_CALIBRATION_PATCHES,
    'calibration_set': None,
    'inference': {},
}
INFERENCE_KEYS = ('patch_size', 'overlap', 'trim', 'num_classes', 'budget', 'budget_unit', 'max_loss', 'target_gflops',
                  'alpha', 'subnet', 'max_batch_pixels', 'channels_last', 'whole_image_fallback',
                  'cuda_graphs', 'pad_batches', 'pad_widths')
# wbsr.inference keys of the planning target (PlanningTarget.from_options) and of the policy beside the engine's
TARGET_KEYS = ('budget', 'budget_unit', 'max_loss', 'target_gflops', 'alpha', 'subnet')
POLICY_KEYS = {'plan_by': None}


def parse_wbsr_options(section):
    """Return the ``wbsr`` options with defaults filled in; unknown keys raise ``ValueError``."""
    section = {} if section is None else copy.deepcopy(dict(section))
    unknown = set(section) - set(DEFAULTS)
    if unknown:
        raise ValueError(f'wbsr: unknown key(s) {sorted(unknown)}; allowed keys are {sorted(DEFAULTS)}.')
    opt = {**copy.deepcopy(DEFAULTS), **section}
    inference = dict(opt['inference'] or {})
    unknown = set(inference) - set(INFERENCE_KEYS) - set(POLICY_KEYS)
    if unknown:
        raise ValueError(f'wbsr.inference: unknown key(s) {sorted(unknown)}; allowed keys are '
                         f'{list(INFERENCE_KEYS) + list(POLICY_KEYS)}.')
    try:  # the planning target is checked before training starts, with the same message as infer's
        PlanningTarget.from_options(**target_options(inference))
    except PlanningTargetError as err:
        raise ValueError(f'wbsr.inference: {err}') from None
    opt['inference'] = inference
    if not isinstance(opt['loss_lr'], (int, float)) or opt['loss_lr'] <= 0:
        raise ValueError(f"wbsr.loss_lr must be a positive number (write 1.0e-2, not 1e-2), got {opt['loss_lr']!r}.")
    distill_weight = opt['distill_weight']
    if isinstance(distill_weight, bool) or not isinstance(distill_weight, (int, float)) or not (
            0 <= distill_weight < float('inf')):
        raise ValueError(f'wbsr.distill_weight must be a number >= 0 (0 = no distillation; write 0.5, not 5e-1), '
                         f'got {distill_weight!r}.')
    opt['distill_weight'] = float(distill_weight)
    patches = opt['calibration_patches']
    if isinstance(patches, bool) or not isinstance(patches, int) or patches < 0:
        raise ValueError(f'wbsr.calibration_patches must be an integer >= 0 (0 = no calibration), got {patches!r}.')
    calibration_set = opt['calibration_set']
    if calibration_set is not None and (not isinstance(calibration_set, dict) or 'dataroot_gt' not in calibration_set
                                        or 'dataroot_lq' not in calibration_set):
        raise ValueError(f'wbsr.calibration_set must be paired dataset options with dataroot_gt and dataroot_lq, '
                         f'or ~, got {calibration_set!r}.')
    if not isinstance(opt['dynamic_val'], bool):
        raise ValueError(f"wbsr.dynamic_val must be true or false, got {opt['dynamic_val']!r}.")
    thresholds = opt['thresholds']
    if thresholds is not None and (not isinstance(thresholds, (list, tuple)) or len(thresholds) < 1):
        raise ValueError(f'wbsr.thresholds must be a list of K-1 ascending numbers or ~, got {thresholds!r}.')
    return opt


def target_options(inference_opt):
    """The planning-target options of ``wbsr.inference`` (:meth:`PlanningTarget.from_options`'s arguments)."""
    return {key: inference_opt[key] for key in (*TARGET_KEYS, *POLICY_KEYS) if key in inference_opt}


def training_thresholds(opt, wbsr_opt):
    """Class thresholds for dynamic inference and the LR patch size of the engine.

    In order: ``wbsr.thresholds`` (one list, used at every patch size); a table of thresholds per LR
    patch size computed from the LR images of ``datasets.train`` (a paired dataset: the engine then
    classifies every patch with the thresholds of its own size, docs/inference.md); the thresholds of
    ``path.pretrain_network_g``'s ``'wbsr'`` entry; otherwise ``(None, patch_size)``, and inference falls
    back to per-image quantiles.

    Returns:
        tuple[ClassThresholds | None, int]: The thresholds (without class errors) and the engine's patch
        size.
    """
    patch_size = wbsr_opt['inference'].get('patch_size', DEFAULT_PATCH_SIZE)
    if wbsr_opt['thresholds'] is not None:
        return ClassThresholds.of(wbsr_opt['thresholds']), patch_size
    train_set = opt.get('datasets', {}).get('train')
    logger = get_root_logger()
    if opt.get('rank', 0) != 0:  # only rank 0 validates and saves checkpoints
        return None, patch_size
    if opt.get('is_train') and train_set and train_set.get('type') in PAIRED_DATASETS:
        num_classes = wbsr_opt['inference'].get('num_classes')
        if num_classes is None:
            num_classes = (parse_hes_options(train_set)['hes_num_classes']
                           if train_set['type'] == 'ClassBalancedPairedDataset' else DEFAULT_NUM_CLASSES)
        try:
            table = dataset_threshold_table(train_set, num_classes)
        except ValueError as err:
            logger.warning(f'Class thresholds per patch size could not be computed from datasets.train: {err}')
        else:
            logger.info(f'Class thresholds for LR patch sizes {sorted(table)} computed from datasets.train.')
            return ClassThresholds.of(table), patch_size
    pretrained = opt['path'].get('pretrain_network_g')
    if pretrained:
        meta = read_checkpoint(pretrained)[1]
        thresholds = ClassThresholds.from_meta(meta)
        if thresholds is not None:  # the checkpoint's own patch size, unless wbsr.inference gives one (as infer)
            patch_size = wbsr_opt['inference'].get('patch_size') or meta.get('patch_size') or DEFAULT_PATCH_SIZE
            return thresholds.without_class_errors(), patch_size  # see pretrained_class_errors
    logger.info('Dynamic inference uses per-image quantile thresholds (no paired training data, no wbsr.thresholds).')
    return None, patch_size


def calibration_patches(opt, wbsr_opt, thresholds, patch_size):
    """LR/HR patches on which checkpoints measure every subnet's error per class: of ``wbsr.calibration_set``,
    else of ``datasets.train``.

    Returns:
        tuple[Tensor, Tensor, np.ndarray, str] | None: ``wbsr.calibration_patches`` uint8 patches of the engine's
        patch size (:func:`~wbsr_plugin.inference.calibration.dataset_patch_pairs`), the image of every patch and
        what they were taken from; None when calibration is off, on ranks other than 0, without thresholds, or
        without paired data.
    """
    count = wbsr_opt['calibration_patches']
    train_set = opt.get('datasets', {}).get('train')
    calibration_set = wbsr_opt.get('calibration_set')
    if calibration_set is not None:
        data, what = {'type': 'PairedImageDataset', 'io_backend': {'type': 'disk'}, **calibration_set}, 'calibration'
    else:
        data, what = train_set, 'training'
    if (count == 0 or thresholds is None or opt.get('rank', 0) != 0 or not opt.get('is_train') or not data
            or data.get('type') not in PAIRED_DATASETS):
        return None
    try:
        lq, gt, ids = dataset_patch_pairs(data, patch_size, opt['scale'], count, seed=opt.get('manual_seed') or 0,
                                          with_images=True, context=CALIBRATION_CONTEXT)
    except (ValueError, FileNotFoundError) as err:
        get_root_logger().warning(f'Checkpoints will not be calibrated (wbsr.calibration_patches): {err}')
        return None
    logger = get_root_logger()
    logger.info(f'{len(lq)} {what} patches of {gt.shape[-1] // opt["scale"]} LR px will measure every subnet\'s error '
                'per class at each checkpoint.')
    if calibration_set is None:
        logger.warning('Class errors are measured on training images (no wbsr.calibration_set): expected losses '
                       'on other photos will be optimistic.')
    return lq, gt, ids, f"{what} images ({data.get('dataroot_gt', data.get('name', '?'))})"


def pretrained_class_errors(opt, thresholds):
    """The class errors (:class:`ClassErrors`) stored in ``path.pretrain_network_g`` (testing a trained model), or
    None; only when they have a row per class of ``thresholds``."""
    pretrained = opt.get('path', {}).get('pretrain_network_g')
    if not pretrained or thresholds is None:
        return None
    stored = ClassErrors.from_meta(read_checkpoint(pretrained)[1])
    if stored is None or len(stored.means) != thresholds.num_classes:
        return None
    return stored
