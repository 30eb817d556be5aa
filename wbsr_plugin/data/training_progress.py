"""The training iteration, shared with DataLoader workers.

BasicSR's ``train_pipeline`` knows the iteration; the dataset in the workers does not. This module
keeps ``[current_iter, total_iter]`` in a small shared-memory int64 tensor. Datasets hold a
reference to it (:func:`progress_tensor`), so it reaches fork and spawn workers alike, and the main
process writes it through :func:`publish_training_progress`.

:func:`install_progress_hook` (called when ``wbsr_plugin`` is imported) makes every BasicSR model
publish it: ``BaseModel.update_learning_rate(current_iter)`` runs at the start of each iteration of
``train_pipeline``, and ``BaseModel.resume_training(resume_state)`` runs after a resume, before the
first batch of the resumed run is drawn. ``total_iter`` is read from ``opt['train']['total_iter']``.

``current_iter`` is the iteration being trained (0 before the first). Workers load batches ahead
(``num_workers * prefetch_factor`` batches, plus ``num_prefetch_queue`` with ``prefetch_mode: cpu``
and one with ``cuda``), so what a worker reads may be that many iterations behind the iteration its
batch will be used at; it is never ahead.
"""
import weakref

import torch

_PROGRESS = None
_LISTENERS = []
_HOOK_FLAG = '_wbsr_progress_hook'


def progress_tensor():
    """The shared ``[current_iter, total_iter]`` tensor of this process, created on first use."""
    global _PROGRESS
    if _PROGRESS is None:
        _PROGRESS = torch.zeros(2, dtype=torch.int64).share_memory_()
    return _PROGRESS


def publish_training_progress(current_iter, total_iter=None):
    """Tell datasets (and their workers) the iteration being trained.

    Args:
        current_iter (int): The iteration being trained (0 before the first one).
        total_iter (int | None): ``train.total_iter``; None keeps the last published value.
    """
    progress = progress_tensor()
    progress[0] = int(current_iter)
    if total_iter is not None:
        progress[1] = int(total_iter)
    current, total = int(progress[0]), int(progress[1])
    for ref in list(_LISTENERS):
        listener = ref()
        if listener is None:
            _LISTENERS.remove(ref)
        else:
            listener(current, total)


def read_training_progress(tensor=None):
    """``(current_iter, total_iter)``; ``total_iter`` is 0 while nothing was published."""
    progress = progress_tensor() if tensor is None else tensor
    values = progress.tolist()
    return int(values[0]), int(values[1])


def reset_training_progress():
    """Back to ``(0, 0)``; for tests and for several trainings in one process."""
    progress_tensor().zero_()


def add_progress_listener(method):
    """Call ``method(current_iter, total_iter)`` after each publication (held by a weak reference)."""
    _LISTENERS.append(weakref.WeakMethod(method))


def _total_iter(model):
    train_opt = model.opt.get('train') or {}
    total = train_opt.get('total_iter')
    return None if total is None else int(total)


def install_progress_hook():
    """Make BasicSR's ``BaseModel`` publish the iteration (idempotent)."""
    from basicsr.models.base_model import BaseModel

    if getattr(BaseModel, _HOOK_FLAG, False):
        return
    update_learning_rate = BaseModel.update_learning_rate
    resume_training = BaseModel.resume_training

    def update_learning_rate_and_publish(self, current_iter, *args, **kwargs):
        publish_training_progress(current_iter, _total_iter(self))
        return update_learning_rate(self, current_iter, *args, **kwargs)

    def resume_training_and_publish(self, resume_state):
        result = resume_training(self, resume_state)
        publish_training_progress(resume_state['iter'], _total_iter(self))
        return result

    update_learning_rate_and_publish.__doc__ = update_learning_rate.__doc__
    resume_training_and_publish.__doc__ = resume_training.__doc__
    BaseModel.update_learning_rate = update_learning_rate_and_publish
    BaseModel.resume_training = resume_training_and_publish
    setattr(BaseModel, _HOOK_FLAG, True)
