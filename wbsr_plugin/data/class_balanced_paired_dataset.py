import os
from copy import deepcopy

import numpy as np
import torch
from torch.utils import data as data
from torchvision.transforms.functional import normalize

from wbsr_plugin.data.hes import (
    ClassLevelDrawer,
    class_histogram,
    class_probabilities,
    lq_patch_size,
    parse_hes_options,
    switch_iteration,
)
from wbsr_plugin.data.hes_index import load_or_build_index
from wbsr_plugin.data.paired_reading import PairReader, list_pairs
from wbsr_plugin.utils.registry import register

from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.data.transforms import augment
from basicsr.utils import bgr2ycbcr, get_root_logger, img2tensor
from basicsr.utils.dist_util import get_dist_info
from basicsr.utils.registry import DATASET_REGISTRY

from .difficulty import difficulty_classes
from .training_progress import add_progress_listener, progress_tensor, read_training_progress

SAMPLE_LEVEL = 'sample-level'
CLASS_LEVEL = 'class-level'


@register(DATASET_REGISTRY)
class ClassBalancedPairedDataset(PairedImageDataset):
    """BasicSR's ``PairedImageDataset`` with Hierarchical Equalization Sampling (HES).

    Paper: Rethinking Imbalance in Image Super-Resolution for Efficient Inference (WBSR, NeurIPS 2024),
    Sec. 4.1.1, Eq. 7-8.

    Every option of ``PairedImageDataset`` keeps its meaning (``dataroot_gt``, ``dataroot_lq``,
    ``io_backend`` disk/lmdb, ``meta_info_file``, ``filename_tmpl``, ``gt_size``, ``use_hflip``,
    ``use_rot``, ``scale``, ``color``, ``mean``, ``std``). Training runs in two phases:

    * sample-level (iterations 1..S): exactly ``PairedImageDataset``: the sampler's image, a uniform
      random crop;
    * class-level (iterations > S): the sampler's index only paces the draws; a difficulty class is
      drawn by Eq. 8 and then a candidate patch of that class (from the index built once beside the
      LR data, see ``wbsr_plugin.data.hes``).

    The iteration comes from ``wbsr_plugin.data.training_progress``, which every BasicSR model
    publishes once ``wbsr_plugin`` is imported. Training batches carry ``hes_class`` (the class of
    each patch; -1 for sample-level patches). Validation/test phases ignore HES.

    Args:
        opt (dict): Options of ``PairedImageDataset`` plus:
            hes_enabled (bool): False: behave exactly like ``PairedImageDataset``. Default: True.
            hes_num_classes (int): K, number of difficulty classes. Default: 10.
            hes_delta (float): delta of Eq. 8, in (0, 1]; smaller favours hard classes more. Default: 0.9.
            hes_stride (int | None): Grid step of candidate patches in LR pixels.
                Default: None (half the LR patch, ``gt_size // scale // 2``).
            hes_switch_ratio (float): Switch to class-level sampling after this fraction of
                ``train.total_iter``. Default: 0.7.
            hes_switch_iter (int | None): Switch after this iteration instead. Default: None.
            hes_index_path (str | None): Index file; it must exist and match the data. Default: None
                (``<parent of dataroot_lq>/<name>_hes_p<patch>_s<stride>_<hash>.npz``, built when
                missing, rebuilt when the data or grid changed).
    """

    def __init__(self, opt):
        opt = deepcopy(opt)
        self.hes = parse_hes_options(opt)
        for key in self.hes:
            opt.pop(key, None)
        self.hes_enabled = bool(self.hes['hes_enabled']) and opt.get('phase', 'train') == 'train'
        if self.hes_enabled or opt['io_backend']['type'] in ('disk', 'lmdb'):
            list_pairs(opt)  # clear errors for missing folders, LMDBs and files before training starts
        self._reader_opt = deepcopy(opt)  # PairedImageDataset pops io_backend.type on first use
        super().__init__(opt)
        if not self.hes_enabled:
            return

        self.lq_size = lq_patch_size(opt['gt_size'], opt['scale'])
        index = load_or_build_index(opt, self.hes, progress=True)  # a bar on rank 0 in a terminal only
        self.index_path = index.path
        num_classes = self.hes['hes_num_classes']
        self.thresholds = index.thresholds(num_classes)
        classes = difficulty_classes(index.score, self.thresholds).astype(np.int16)
        self.class_sizes = class_histogram(index.score, self.thresholds, num_classes)
        self.class_probabilities = class_probabilities(self.class_sizes, self.hes['hes_delta'])
        order = np.argsort(classes, kind='stable')
        bounds = np.concatenate([[0], np.cumsum(self.class_sizes)])
        self.class_members = [order[bounds[k]:bounds[k + 1]].astype(np.int64) for k in range(num_classes)]
        self.candidate_image = index.image
        self.candidate_top = index.top
        self.candidate_left = index.left
        self.lq_shapes = index.lq_shapes
        self.rank, self.world_size = get_dist_info()
        self._progress = progress_tensor()
        self._drawer = None
        self._drawer_key = None
        self._reader = None
        self._logged_phase = None
        add_progress_listener(self._log_phase)

        logger = get_root_logger()
        logger.info(f'HES: {len(index)} candidate patches ({self.lq_size}x{self.lq_size} LR, stride '
                    f'{index.meta["stride"]}) from {self.index_path}')
        logger.info('HES: thresholds ' + ', '.join(f'{t:.3g}' for t in self.thresholds) + '; class sizes '
                    + ', '.join(str(int(n)) for n in self.class_sizes) + '; Eq. 8 probabilities '
                    + ', '.join(f'{p:.3f}' for p in self.class_probabilities))
        switch = self.hes['hes_switch_iter']
        logger.info('HES: class-level sampling after iteration '
                    + (f'{switch}' if switch is not None else f'{self.hes["hes_switch_ratio"]:g} x train.total_iter'))

    # ------------------------------------------------------------------------------------------
    def switch_iter(self, total_iter=None):
        """The last sample-level iteration S (None while ``total_iter`` is unknown)."""
        if total_iter is None:
            total_iter = read_training_progress(self._progress)[1]
        return switch_iteration(self.hes, total_iter)

    def phase(self):
        """``'sample-level'`` or ``'class-level'`` for the next batch to be loaded.

        The published iteration ``p`` is the one being trained, so what is loaded now is for an
        iteration > p: class-level when ``p >= S``. Never early; late by at most the prefetch depth.
        """
        current, total = read_training_progress(self._progress)
        switch = switch_iteration(self.hes, total)
        return CLASS_LEVEL if switch is not None and current >= switch else SAMPLE_LEVEL

    def _log_phase(self, current, total):
        switch = switch_iteration(self.hes, total)
        phase = CLASS_LEVEL if switch is not None and current >= switch else SAMPLE_LEVEL
        if self._logged_phase is None:
            get_root_logger().info(f'HES: {phase} sampling at iteration {current} of {total} '
                                   f'(class-level after iteration {switch}).')
        elif phase != self._logged_phase:
            get_root_logger().info(f'HES: {phase} sampling from iteration {current + 1} '
                                   f'(switch after iteration {switch} of {total}).')
        self._logged_phase = phase

    def __getstate__(self):
        state = self.__dict__.copy()
        state['_drawer'] = state['_drawer_key'] = state['_reader'] = None
        return state

    def _current_drawer(self):
        info = data.get_worker_info()
        if info is None:
            key = (os.getpid(), -1, torch.initial_seed())
            shard, num_shards = self.rank, self.world_size
        else:
            key = (os.getpid(), info.id, info.seed)
            shard, num_shards = self.rank * info.num_workers + info.id, self.world_size * info.num_workers
        if self._drawer is None or self._drawer_key != key:
            self._drawer = ClassLevelDrawer(self.class_members, self.class_probabilities, key[2], shard, num_shards)
            self._drawer_key = key
        return self._drawer

    def __getitem__(self, index):
        if not self.hes_enabled:
            return super().__getitem__(index)
        if self.phase() == SAMPLE_LEVEL:
            item = super().__getitem__(index)
            item['hes_class'] = -1
            return item
        cls, candidate = self._current_drawer().draw()
        return self._load_candidate(cls, candidate)

    def _load_candidate(self, cls, candidate):
        if self._reader is None:
            self._reader = PairReader(self._reader_opt)
        image = int(self.candidate_image[candidate])
        top, left = int(self.candidate_top[candidate]), int(self.candidate_left[candidate])
        lq_path, gt_path = self.paths[image]['lq_path'], self.paths[image]['gt_path']
        img_lq = self._reader.decode(self._reader.get(lq_path, 'lq'), lq_path, 'lq')
        img_gt = self._reader.decode(self._reader.get(gt_path, 'gt'), gt_path, 'gt')
        scale, size = self.opt['scale'], self.lq_size
        if tuple(img_lq.shape[:2]) != tuple(int(v) for v in self.lq_shapes[image]):
            raise ValueError(f"'{self._reader.name(lq_path, 'lq')}' is {img_lq.shape[0]}x{img_lq.shape[1]} but the "
                             f"HES index '{self.index_path}' recorded {tuple(self.lq_shapes[image])}; rebuild it.")
        if img_gt.shape[0] != img_lq.shape[0] * scale or img_gt.shape[1] != img_lq.shape[1] * scale:
            raise ValueError(f"GT '{self._reader.name(gt_path, 'gt')}' is not scale={scale} times its LQ.")
        img_lq = img_lq[top:top + size, left:left + size, ...]
        img_gt = img_gt[top * scale:(top + size) * scale, left * scale:(left + size) * scale, ...]
        img_gt, img_lq = augment([img_gt, img_lq], self.opt['use_hflip'], self.opt['use_rot'])
        color = self.opt.get('color')
        if color == 'y':
            img_gt = bgr2ycbcr(img_gt, y_only=True)[..., None]
            img_lq = bgr2ycbcr(img_lq, y_only=True)[..., None]
        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            normalize(img_lq, self.mean, self.std, inplace=True)
            normalize(img_gt, self.mean, self.std, inplace=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': lq_path, 'gt_path': gt_path, 'hes_class': cls}
