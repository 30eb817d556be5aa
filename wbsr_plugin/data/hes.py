"""Hierarchical Equalization Sampling (HES): its options, the classes and Eq. 8.

Paper: Rethinking Imbalance in Image Super-Resolution for Efficient Inference (WBSR, NeurIPS 2024),
Sec. 4.1.1, Eq. 7-8.

* Candidates and their difficulties: :mod:`.hes_index`.
* Classes: thresholds ``t_k = s[floor(k N / K)]``, k = 1..K-1, on the sorted scores ``s`` of the N
  candidates; a patch belongs to class ``#{k: t_k <= score}`` in 0..K-1
  (:func:`~wbsr_plugin.data.difficulty.difficulty_classes`, the rule inference uses too).
* Eq. 8: class k (1-based) is drawn with probability proportional to ``1 / (N_k delta^k)``;
  empty classes get probability 0.
"""
import numpy as np

from .difficulty import difficulty_classes

# name: (default, description). Keep docs/data.md in step with this table.
HES_OPTIONS = {
    'hes_enabled': (True, 'bool; false behaves exactly like PairedImageDataset'),
    'hes_num_classes': (10, 'int >= 2; K, the number of difficulty classes'),
    'hes_delta': (0.9, 'float in (0, 1]; delta of Eq. 8 (1 = equal class frequencies)'),
    'hes_stride': (None, 'int >= 1 or null; candidate grid step in LR pixels (null: half the LR patch)'),
    'hes_switch_ratio': (0.7, 'float in [0, 1]; class-level sampling after this fraction of train.total_iter'),
    'hes_switch_iter': (None, 'int >= 0 or null; class-level sampling after this iteration (overrides the ratio)'),
    'hes_index_path': (None, 'str or null; index file (null: beside dataroot_lq, built when missing or stale)'),
}


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value):
    return _is_int(value) or (isinstance(value, (float, np.floating)))


def parse_hes_options(opt):
    """Validate and complete the ``hes_*`` options of a dataset option dict.

    Args:
        opt (dict): Dataset options; only its ``hes_*`` keys are read.

    Returns:
        dict: Every option of ``HES_OPTIONS`` with its value or default.

    Raises:
        ValueError: An unknown ``hes_*`` key or a bad value, naming the key and what is allowed.
    """
    hes = {key: default for key, (default, _) in HES_OPTIONS.items()}
    for key, value in opt.items():
        if not key.startswith('hes_'):
            continue
        if key not in HES_OPTIONS:
            raise ValueError(f"Unknown HES option '{key}'; allowed: {sorted(HES_OPTIONS)}.")
        hes[key] = value

    def bad(key, allowed):
        return ValueError(f"HES option '{key}' must be {allowed}, got {hes[key]!r}.")

    if not isinstance(hes['hes_enabled'], (bool, np.bool_)):
        raise bad('hes_enabled', 'true or false')
    if not _is_int(hes['hes_num_classes']) or hes['hes_num_classes'] < 2:
        raise bad('hes_num_classes', 'an integer >= 2')
    if not _is_number(hes['hes_delta']) or not 0 < hes['hes_delta'] <= 1:
        raise bad('hes_delta', 'a number in (0, 1]')
    if hes['hes_stride'] is not None and (not _is_int(hes['hes_stride']) or hes['hes_stride'] < 1):
        raise bad('hes_stride', 'null or an integer >= 1')
    if not _is_number(hes['hes_switch_ratio']) or not 0 <= hes['hes_switch_ratio'] <= 1:
        raise bad('hes_switch_ratio', 'a number in [0, 1]')
    if hes['hes_switch_iter'] is not None:
        if not _is_int(hes['hes_switch_iter']) or hes['hes_switch_iter'] < 0:
            raise bad('hes_switch_iter', 'null or an integer >= 0')
        if 'hes_switch_ratio' in opt:
            raise ValueError("HES options 'hes_switch_iter' and 'hes_switch_ratio' exclude each other; set one.")
    if hes['hes_index_path'] is not None and not isinstance(hes['hes_index_path'], str):
        raise bad('hes_index_path', 'null or a path string')
    hes['hes_delta'] = float(hes['hes_delta'])
    hes['hes_switch_ratio'] = float(hes['hes_switch_ratio'])
    return hes


def lq_patch_size(gt_size, scale):
    """LR patch side for a GT patch side; ``gt_size`` must be a multiple of ``scale``."""
    if not _is_int(gt_size) or not _is_int(scale) or scale < 1 or gt_size < scale or gt_size % scale:
        raise ValueError(f'gt_size ({gt_size!r}) must be a positive multiple of scale ({scale!r}).')
    return gt_size // scale


def switch_iteration(hes, total_iter):
    """Iterations 1..S use sample-level sampling, iterations > S class-level; None while S is unknown."""
    if hes['hes_switch_iter'] is not None:
        return int(hes['hes_switch_iter'])
    if hes['hes_switch_ratio'] == 0:
        return 0
    if total_iter is None or total_iter <= 0:
        return None
    return int(round(hes['hes_switch_ratio'] * total_iter))


def class_probabilities(class_sizes, delta):
    """Eq. 8: ``P_k = (sum_j 1/N_j) / (N_k delta^k)`` (k = 1..K), normalised; empty classes get 0."""
    sizes = np.asarray(class_sizes, dtype=np.float64)
    if not 0 < delta <= 1:
        raise ValueError(f'delta must be in (0, 1], got {delta!r}.')
    if sizes.sum() <= 0:
        raise ValueError('every class is empty.')
    k = np.arange(1, sizes.size + 1, dtype=np.float64)
    nonempty = sizes > 0
    weights = np.zeros_like(sizes)
    inv_sum = (1.0 / sizes[nonempty]).sum()
    weights[nonempty] = inv_sum / (sizes[nonempty] * delta**k[nonempty])
    return weights / weights.sum()


def class_histogram(scores, thresholds, num_classes):
    """Number of candidates in each class."""
    return np.bincount(difficulty_classes(scores, thresholds), minlength=num_classes)


class ClassLevelDrawer:
    """Class-level draws of HES for one process (the main process or one DataLoader worker).

    A class is drawn by Eq. 8; the candidate is the next one of that class in a shuffled queue
    (without replacement, reshuffled when used up). The candidates of each class are striped over
    ``num_shards`` shards (``rank * num_workers + worker_id``), so two ranks, or two workers, never
    hold the same candidate unless a class has fewer candidates than shards.

    Args:
        members (list[ndarray]): Candidate numbers of each class.
        probabilities (ndarray): Eq. 8 class probabilities.
        seed (int): Seed of this process's stream.
        shard (int): This process's shard.
        num_shards (int): Number of shards.
    """

    def __init__(self, members, probabilities, seed, shard, num_shards):
        self.rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed % (1 << 64), shard, 0x484553])))
        self.probabilities = probabilities
        self.cumulative = np.cumsum(probabilities)
        self.cumulative[-1] = 1.0
        self.pools = []
        for candidates in members:
            stripe = candidates[shard::num_shards]
            self.pools.append(stripe if stripe.size else candidates)
        self.queues = [None] * len(members)
        self.positions = [0] * len(members)

    def draw(self):
        """``(class, candidate)``."""
        cls = int(np.searchsorted(self.cumulative, self.rng.random(), side='right'))
        cls = min(cls, len(self.pools) - 1)
        while self.probabilities[cls] == 0:  # only reachable through rounding at the top end
            cls -= 1
        queue = self.queues[cls]
        if queue is None or self.positions[cls] >= queue.size:
            queue = self.queues[cls] = self.rng.permutation(self.pools[cls])
            self.positions[cls] = 0
        candidate = int(queue[self.positions[cls]])
        self.positions[cls] += 1
        return cls, candidate
