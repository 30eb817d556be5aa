"""Checkpoints for inference: the supernet's weights plus what the projection needs.

A checkpoint is BasicSR's ``{'params': ..., 'params_ema': ...}`` with one more top-level key,
``'wbsr'`` (BasicSR's ``load_network`` reads only the params key and ignores it)::

    'wbsr': {
        'version': 1,
        'network_g': {'type': 'WBSRResNet', 'upscale': 4, 'num_feat': 64, 'num_block': 16,
                      'widths': [36, 52, 64], 'depths': [4, 8, 16], ...},   # build_network options
        'thresholds': [t_1, ..., t_{K-1}],   # class thresholds on the scalar difficulty
        'num_classes': K,
        'patch_size': P,                     # LR patch side the thresholds were computed on
        'thresholds_by_patch_size': {16: [...], ..., 128: [...]},   # optional: per LR patch side
        'iter': N,                           # optional: training iterations done
        'class_errors': [[...], ...],        # optional: K x M expected error per class and subnet
        'calibration': {'counts': [...], ...},   # optional: counts and spreads of the class errors
        'difficulty': 'wbsr_plugin.data.difficulty.patch_difficulty',
    }

Without ``'wbsr'`` (a plain BasicSR checkpoint of a supernet's counterpart, or a supernet saved
without it) the architecture, size and scale are read from the tensor shapes (each supernet's
``shape_options``) and its default widths and depths are assumed; the engine then falls back to
per-image quantile thresholds.

A ``.safetensors`` file (``utils/safetensors_files.py``) holds one set of weights, and the ``'wbsr'`` entry as JSON
in its header; it reads as ``{'params': ..., 'wbsr': ...}``.
"""
import torch

from wbsr_plugin.archs.supernet_util import recognise_state_dict, supernet_class, supernet_types
from wbsr_plugin.utils.checkpoint_files import CheckpointError, load_weights_file
from wbsr_runtime.class_errors import ClassErrors
from wbsr_runtime.class_thresholds import DEFAULT_NUM_CLASSES, ClassThresholds, check_class_errors, check_thresholds

from basicsr.archs import build_network

WBSR_KEY = 'wbsr'
META_VERSION = 1
DIFFICULTY_NAME = 'wbsr_plugin.data.difficulty.patch_difficulty'


def make_wbsr_meta(net, thresholds, patch_size, num_classes=None, *, iteration=None, class_errors=None):
    """The ``'wbsr'`` entry of a checkpoint.

    Args:
        net (SupernetMixin): The supernet (its options are stored).
        thresholds (list[float] | dict[int, list[float]] | ClassThresholds | None): K - 1 class thresholds,
            or a table of them per LR patch side (stored as ``'thresholds_by_patch_size'``; ``'thresholds'``
            then holds those of ``patch_size``), or their value. None: not known yet.
        patch_size (int): LR patch side of ``'thresholds'`` (the engine's patch size).
        num_classes (int | None): K; defaults to the number of thresholds + 1, or 10.
        iteration (int | None): Training iterations done, stored as ``'iter'`` when given.
        class_errors (ClassErrors | list[list[float]] | None): Expected error of every class through every subnet
            (``inference/calibration.py``), stored when given (or held by ``thresholds``); a
            :class:`~.class_errors.ClassErrors` is stored with its counts (``'calibration'``).
    """
    measured = class_errors if isinstance(class_errors, ClassErrors) else None
    if measured is not None:
        class_errors = [list(row) for row in measured.means]
    value = ClassThresholds.of(thresholds, class_errors=class_errors, num_classes=num_classes,
                               num_subnets=len(net.subnets))
    meta = {
        'version': META_VERSION,
        'network_g': net.network_options(),
        'thresholds': None,
        'num_classes': DEFAULT_NUM_CLASSES if num_classes is None else num_classes,
        'patch_size': int(patch_size),
        'difficulty': DIFFICULTY_NAME,
    }
    if value is not None:
        meta.update(value.meta_entries(patch_size))
    elif class_errors is not None:
        meta['class_errors'] = check_class_errors(class_errors, meta['num_classes'], len(net.subnets))
    if measured is not None:
        meta.update(measured.meta_entries())
    if iteration is not None:
        meta['iter'] = int(iteration)
    return meta


def engine_thresholds(meta):
    """The thresholds of a checkpoint's ``'wbsr'`` entry as stored: the table per patch side when there is one,
    else the single list (None when neither is stored). :meth:`ClassThresholds.from_meta` gives them as one value,
    with the class errors."""
    value = ClassThresholds.from_meta(meta)
    return None if value is None else value.as_table() or list(value.values)


def engine_options(meta):
    """The :class:`DynamicInferenceEngine` options a checkpoint's ``'wbsr'`` entry gives: ``thresholds``, a
    :class:`~.class_thresholds.ClassThresholds` with the class errors (None when none are stored)."""
    return {'thresholds': ClassThresholds.from_meta(meta)}


def infer_network_options(state):
    """Supernet options read from the tensor shapes of a state dict (a supernet's or its plain network's)."""
    arch, options = recognise_state_dict(state)
    if arch is None:
        known = ', '.join(f'{supernet_class(name).PLAIN_TYPE} ({name})' for name in supernet_types())
        raise CheckpointError(f'the weights match none of the supernets or their plain networks: {known}.')
    choices = arch.default_choices(options['num_feat'], options['num_block'])
    if choices is None:
        raise CheckpointError(f"the checkpoint holds a {arch.__name__} with num_feat={options['num_feat']}, "
                              f"num_block={options['num_block']} and no '{WBSR_KEY}' metadata, so its subnet widths "
                              'and depths are unknown; pass the training options (--opt).')
    widths, depths = choices
    return {'type': arch.__name__, **options, 'widths': list(widths), 'depths': list(depths)}


def read_checkpoint(path):
    """Weights (``params_ema`` preferred, then ``params``, else the dict itself) and the ``'wbsr'`` entry, of a
    ``.pth`` or ``.safetensors`` file."""
    ckpt = load_weights_file(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{path}: expected a dict of weights, got {type(ckpt).__name__}.')
    meta = ckpt.get(WBSR_KEY) or {}
    for key in ('params_ema', 'params'):
        if key in ckpt:
            state = ckpt[key]
            break
    else:
        state = {k: v for k, v in ckpt.items() if k != WBSR_KEY}
    if not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: no weights found ('params_ema', 'params' or a state dict).")
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    return state, meta


def check_finite_weights(state, path):
    """A :class:`CheckpointError` naming ``path`` when a floating-point tensor of ``state`` holds NaN or Inf (a
    diverged training, a broken conversion): such weights give images of one colour, never a useful output."""
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        more = f' and {len(bad) - 3} more' if len(bad) > 3 else ''
        raise CheckpointError(f"{path}: weights that are not finite (NaN or Inf) in {', '.join(bad[:3])}{more}; "
                              'the checkpoint cannot be used (take an earlier one)')


def load_supernet(path, *, arch=None, scale=None, network_opt=None, device='cpu'):
    """Build the supernet of a checkpoint and load its weights.

    Args:
        path (str): Checkpoint file.
        arch (str | None): Expected supernet type (``supernet_types()``); a checkpoint of
            another architecture is an error. Default: None (any).
        scale (int | None): Expected upscale factor; another one is an error. Default: None (any).
        network_opt (dict | None): ``network_g`` options (from training YAML); otherwise the
            checkpoint's ``'wbsr'`` entry, otherwise the tensor shapes. Default: None.
        device (str | torch.device): Where to put the network. Default: 'cpu'.

    Returns:
        tuple[nn.Module, dict]: The supernet in eval mode and the ``'wbsr'`` entry ({} if absent).

    Raises:
        CheckpointError: An unreadable checkpoint, weights that are not finite, or another network than asked.
    """
    state, meta = read_checkpoint(path)
    check_finite_weights(state, path)
    if network_opt is not None:
        opt = dict(network_opt)
    elif meta.get('network_g'):
        opt = dict(meta['network_g'])
    else:
        opt = infer_network_options(state)
    found = opt.get('type')
    if found not in supernet_types():
        raise CheckpointError(f'network type {found!r} is not a WBSR supernet; expected one of {supernet_types()}.')
    if arch is not None and arch != found:
        raise CheckpointError(f'{path} holds a {found}, not a {arch}.')
    if scale is not None and opt.get('upscale', 4) != scale:
        raise CheckpointError(f"{path} holds a x{opt.get('upscale', 4)} {found}, not x{scale}.")
    net = build_network(opt)
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise CheckpointError(f'{path} does not match {found} x{net.upscale}: missing keys {missing[:3]}, '
                              f'unexpected keys {unexpected[:3]}, other shapes {mismatched[:3]}.')
    net.load_state_dict(state, strict=True)
    if meta.get('thresholds') is not None:  # the single list beside a table is checked too
        check_thresholds(meta['thresholds'])
    ClassThresholds.from_meta(meta, num_subnets=len(net.subnets))
    return net.to(device).eval(), meta
