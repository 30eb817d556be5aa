"""What ``train`` and ``test`` check in a BasicSR option file before BasicSR starts (and makes any folder): the
keys BasicSR reads without a default, the dataset folders, LMDBs and ``meta_info`` files, BDLoss priors, and the
weights of ``path.pretrain_network_*``. Each check gives one line naming the key and what is wrong.
"""
import os
from os import path as osp

import torch

from wbsr_plugin.losses.gmm_prior_util import load_gmm_prior
from wbsr_plugin.utils.checkpoint_files import CheckpointError, load_weights_file

# Keys BasicSR 1.4.2 reads with ``opt[key]`` (no default): a missing one ends its pipeline with a KeyError.
COMMON_KEYS = ('name', 'model_type', 'num_gpu', 'datasets', 'path', 'network_g', 'network_g.type')
TRAIN_KEYS = COMMON_KEYS + (
    'datasets.train', 'datasets.train.batch_size_per_gpu', 'datasets.train.num_worker_per_gpu', 'train',
    'train.total_iter', 'train.optim_g', 'train.optim_g.type', 'train.scheduler', 'train.scheduler.type', 'logger',
    'logger.print_freq', 'logger.save_checkpoint_freq', 'logger.use_tb_logger')
TEST_KEYS = COMMON_KEYS + ('val', 'val.save_img')
DATASET_KEYS = ('name', 'type', 'io_backend', 'io_backend.type')  # of every dataset
TRAINING_PHASES = ('train', 'val')  # a training run's dataset names: train, val, val_*


class PipelineOptionError(ValueError):
    """An option file that BasicSR's pipeline would stop on."""


def _lookup(opt, dotted):
    """The value at ``dotted`` ('a.b.c') in ``opt``; KeyError (naming the missing key) when absent, TypeError when a
    parent is not a mapping."""
    value = opt
    for depth, key in enumerate(dotted.split('.')):
        if not isinstance(value, dict):
            raise TypeError('.'.join(dotted.split('.')[:depth]))
        if key not in value:
            raise KeyError(dotted)
        value = value[key]
    return value


def missing_keys(opt, keys):
    """The keys of ``keys`` absent from ``opt`` (a parent that is not a mapping: :class:`PipelineOptionError`)."""
    missing = []
    for key in keys:
        try:
            _lookup(opt, key)
        except KeyError:
            if not any(key.startswith(m + '.') for m in missing):  # 'train' missing: not 'train.total_iter' too
                missing.append(key)
        except TypeError as err:
            raise PipelineOptionError(f'{err.args[0]} must be a mapping') from None
    return missing


def required_keys(opt, command):
    """The keys BasicSR reads without a default in a ``command`` ('train' or 'test') run of ``opt``."""
    keys = list(TRAIN_KEYS if command == 'train' else TEST_KEYS)
    if command == 'train' and opt.get('val') is not None:
        keys += ['val.val_freq', 'val.save_img']
    if command == 'test' and isinstance(opt.get('val'), dict) and opt['val'].get('save_img'):
        keys.append('val.suffix')
    datasets = opt.get('datasets')
    if isinstance(datasets, dict):
        keys += [f'datasets.{phase}.{key}' for phase in datasets for key in DATASET_KEYS]
    return keys


def check_keys(opt, command):
    """:class:`PipelineOptionError` for the keys BasicSR would miss, and for dataset names it refuses."""
    missing = missing_keys(opt, required_keys(opt, command))
    if missing:
        raise PipelineOptionError(f"{', '.join(missing)} missing; BasicSR's {command} reads "
                                  f"{'it' if len(missing) == 1 else 'them'} without a default")
    if command == 'train':
        odd = [p for p in opt['datasets'] if p.split('_')[0] not in TRAINING_PHASES]
        if odd:
            raise PipelineOptionError(f'datasets.{odd[0]}: a training dataset is named train, val or val_*')


def check_dataset_paths(opt):
    """:class:`PipelineOptionError` for a dataset folder, LMDB or ``meta_info_file`` that is not there."""
    for phase, dataset in opt.get('datasets', {}).items():
        backend = dataset.get('io_backend', {}).get('type') if isinstance(dataset.get('io_backend'), dict) else None
        for key, value in dataset.items():
            if value is None or not (key.startswith('dataroot') or key == 'meta_info_file'):
                continue
            where = f'datasets.{phase}.{key}'
            if not isinstance(value, str):
                raise PipelineOptionError(f'{where}: expected a path, got {type(value).__name__}')
            value = osp.expanduser(value)
            if key == 'meta_info_file':
                if not osp.isfile(value):
                    raise PipelineOptionError(f'{where}: no such file: {value}')
            elif not osp.isdir(value):
                kind = 'LMDB folder' if backend == 'lmdb' else 'folder'
                raise PipelineOptionError(f'{where}: no such {kind}: {value}')
            elif backend == 'lmdb':
                lacking = [n for n in ('data.mdb', 'meta_info.txt') if not osp.isfile(osp.join(value, n))]
                if lacking:
                    raise PipelineOptionError(f'{where}: {value} is not a complete LMDB (no {lacking[0]}); make '
                                              'it with python -m wbsr_plugin.prepare lmdb')
            elif not os.access(value, os.R_OK | os.X_OK):
                raise PipelineOptionError(f'{where}: permission denied: {value}')


def _sections(value, where):
    """``(where, mapping)`` of every mapping in ``value``, nested ones included."""
    if isinstance(value, dict):
        yield where, value
        for key, child in value.items():
            yield from _sections(child, f'{where}.{key}')
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _sections(child, f'{where}[{index}]')


def check_priors(opt):
    """:class:`PipelineOptionError` for a ``prior_path`` (BDLoss) under ``train`` that is not a prior."""
    for where, section in _sections(opt.get('train'), 'train'):
        if section.get('prior_path') is not None:
            try:
                load_gmm_prior(section['prior_path'])
            except (ValueError, TypeError, OSError) as err:
                raise PipelineOptionError(f'{where}.prior_path: {err}') from None


def nonfinite_tensors(value, where=''):
    """The places in a loaded checkpoint (nested dicts and lists) of floating-point tensors with NaN or Inf."""
    if torch.is_tensor(value):
        return [where or 'the tensor'] if value.is_floating_point() and not torch.isfinite(value).all() else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    return [place for key, child in items for place in nonfinite_tensors(child, f'{where}.{key}'.lstrip('.'))]


def check_pretrained(opt):
    """:class:`PipelineOptionError` for a ``path.pretrain_network_*`` that is not a checkpoint of finite weights."""
    for key, value in (opt.get('path') or {}).items():
        if key.startswith('pretrain_network') and value:
            try:
                bad = nonfinite_tensors(load_weights_file(osp.expanduser(str(value))))
            except CheckpointError as err:
                raise PipelineOptionError(f'path.{key}: {err}') from None
            if bad:
                raise PipelineOptionError(f"path.{key}: {value}: weights that are not finite (NaN or Inf) in "
                                          f"{', '.join(bad[:3])}; the checkpoint cannot be used")


def check_pipeline_opt(opt, command):
    """Every check of this module on the options ``opt`` of a ``command`` ('train' or 'test') run."""
    if not isinstance(opt.get('path', {}), dict):
        raise PipelineOptionError(f"path must be a mapping, got {type(opt['path']).__name__}")
    check_pretrained(opt)
    check_keys(opt, command)
    check_dataset_paths(opt)
    if command == 'train':
        check_priors(opt)
