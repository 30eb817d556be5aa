"""Exact resume: where the training sampler stands in its epoch, and the random generators' states.

BasicSR's ``train_pipeline`` resumes at the start of the saved epoch, so the batches already trained
on in that epoch run again, and with freshly seeded generators, so random crops, flips and draws
differ from those of the uninterrupted run. ``DynamicSRModel`` stores :func:`resume_position` in its
training states; after a resume, :func:`request_resume` makes the training sampler
(BasicSR's ``EnlargedSampler``) skip the batches the interrupted run trained on, and restore the
generators (``random``, numpy, torch) when the resumed epoch starts. That happens after the
DataLoader has drawn its seed for the epoch, a draw the uninterrupted run made before the save, so
every later draw matches.

With ``num_worker_per_gpu: 0`` a resumed run trains on exactly what the uninterrupted run would
have (tested: same weights). With workers, the batches and their order are the same, but the
workers' own generators are seeded afresh. Under DDP (where only rank 0 writes training states)
every rank skips what it trained on, and the generators stay seeded per rank as BasicSR seeds them.
"""
import random

import numpy as np
import torch

from basicsr.utils.dist_util import get_dist_info

from .training_progress import read_training_progress

_HOOK_FLAG = '_wbsr_resume_hook'
# The epoch the training sampler is in, and the iterations trained before it began.
_EPOCH = {'epoch': None, 'first_iter': 0}
# What a resumed run still has to do: {'epoch', 'skip' (indices), 'rng'}, or None.
_PENDING = {'resume': None}


def rng_states():
    """The states of Python's, numpy's and torch's global generators (types ``weights_only`` loads)."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    states = {
        'python': random.getstate(),
        'numpy': {'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos), 'has_gauss': int(has_gauss),
                  'cached_gaussian': float(cached_gaussian)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states):
    """Set the global generators to ``states`` from :func:`rng_states`."""
    version, internal, gauss = states['python']
    random.setstate((version, tuple(internal), gauss))
    numpy_state = states['numpy']
    np.random.set_state(('MT19937', numpy_state['keys'].numpy().astype(np.uint32), numpy_state['pos'],
                         numpy_state['has_gauss'], numpy_state['cached_gaussian']))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


def resume_position(epoch, current_iter):
    """What a training state needs to resume exactly after iteration ``current_iter`` of ``epoch``.

    Returns:
        dict: ``epoch``, ``batches`` (trained on in this epoch; None when the sampler's epoch is not
        known, e.g. outside ``train_pipeline``) and ``rng`` (:func:`rng_states`; None under DDP).
    """
    batches = current_iter - _EPOCH['first_iter'] if _EPOCH['epoch'] == epoch else None
    return {'epoch': epoch, 'batches': batches, 'rng': rng_states() if get_dist_info()[1] == 1 else None}


def request_resume(position, batch_size):
    """After a resume from ``position``: the sampler skips ``position['batches'] * batch_size`` indices of the
    saved epoch and then restores the generators. A position without ``batches`` only clears the request."""
    if not position or position.get('batches') is None:
        _PENDING['resume'] = None
        return
    rng = position['rng'] if get_dist_info()[1] == 1 else None
    _PENDING['resume'] = {'epoch': position['epoch'], 'batches': position['batches'],
                          'skip': position['batches'] * batch_size, 'rng': rng}


def _sampler_set_epoch(original):

    def set_epoch(self, epoch):
        original(self, epoch)
        first_iter = read_training_progress()[0]
        pending = _PENDING['resume']
        if pending is not None and pending['epoch'] == epoch:
            first_iter -= pending['batches']
        _EPOCH.update(epoch=epoch, first_iter=first_iter)

    return set_epoch


def _sampler_iter(original):

    def iterate(self):
        indices = original(self)
        pending = _PENDING['resume']
        if pending is None or pending['epoch'] != self.epoch:
            return indices
        _PENDING['resume'] = None
        if pending['rng'] is not None:
            restore_rng_states(pending['rng'])
        return iter(list(indices)[pending['skip']:])

    return iterate


def install_resume_hook():
    """Make BasicSR's ``EnlargedSampler`` track its epoch's start and honour :func:`request_resume` (idempotent)."""
    from basicsr.data.data_sampler import EnlargedSampler

    if getattr(EnlargedSampler, _HOOK_FLAG, False):
        return
    EnlargedSampler.set_epoch = _sampler_set_epoch(EnlargedSampler.set_epoch)
    EnlargedSampler.__iter__ = _sampler_iter(EnlargedSampler.__iter__)
    setattr(EnlargedSampler, _HOOK_FLAG, True)
