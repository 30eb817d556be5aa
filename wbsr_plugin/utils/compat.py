"""Compatibility fixes for basicsr 1.4.2 with current torch and torchvision.

Imported by ``wbsr_plugin/__init__.py`` before anything touches basicsr. Every
workaround lives here, and each one is applied to the running process only;
nothing in site-packages is edited.

1. torchvision wheels whose C extension cannot load (for example a CUDA build
   next to a CPU build of torch) fail at import with
   ``RuntimeError: operator torchvision::nms does not exist``. Only the
   registration of fake kernels for the missing operators fails; the pure-Python
   parts that basicsr uses (``make_grid``, ``normalize``, transforms) are fine,
   so those registrations are skipped.
2. ``torchvision.transforms.functional_tensor`` was renamed to
   ``_functional_tensor`` in torchvision 0.17; basicsr still imports the old name.
3. ``basicsr.train.load_resume_state`` maps the state onto
   ``torch.cuda.current_device()`` and looks for ``experiments/`` relative to
   the working directory; ours loads on the CPU (the optimizers move their state
   to the parameters' device) with ``weights_only=True``, from the experiment
   folder the options name.
4. ``--launcher pytorch`` hard-codes NCCL and ``torch.cuda.set_device``; without
   CUDA we use gloo.
5. ``BaseModel.model_to_device`` wraps DDP with CUDA ``device_ids``; on the CPU
   DDP needs ``device_ids=None``.
"""
import collections
import importlib
import os
import sys
from os import path as osp

import torch

_PATCHED = '_wbsr_compat_patched'


def _register_fake_skipping_missing_torchvision_ops(original):

    def register_fake(op, func=None, /, **kwargs):
        if func is not None:
            return original(op, func, **kwargs)
        decorator = original(op, **kwargs)

        def apply(fn):
            try:
                return decorator(fn)
            except RuntimeError as err:
                if isinstance(op, str) and op.startswith('torchvision::') and 'does not exist' in str(err):
                    return fn
                raise

        return apply

    return register_fake


def import_torchvision():
    """Import torchvision even when its compiled operators cannot be loaded."""
    if 'torchvision' not in sys.modules:
        original = torch.library.register_fake
        torch.library.register_fake = _register_fake_skipping_missing_torchvision_ops(original)
        try:
            importlib.import_module('torchvision')
        finally:
            torch.library.register_fake = original
    if 'torchvision.transforms.functional_tensor' not in sys.modules:
        transforms = importlib.import_module('torchvision.transforms')
        functional_tensor = importlib.import_module('torchvision.transforms._functional_tensor')
        sys.modules['torchvision.transforms.functional_tensor'] = functional_tensor
        transforms.functional_tensor = functional_tensor


# Plain containers that BasicSR's schedulers put into training states.
SAFE_STATE_GLOBALS = [collections.Counter, collections.OrderedDict]


def load_training_state(path):
    """Load a ``.state`` file on the CPU with ``weights_only=True``."""
    with torch.serialization.safe_globals(SAFE_STATE_GLOBALS):
        return torch.load(path, map_location='cpu', weights_only=True)


def _latest_state_path(state_dir):
    if not osp.isdir(state_dir):
        return None
    iters = [int(name[:-len('.state')]) for name in os.listdir(state_dir)
             if name.endswith('.state') and name[:-len('.state')].isdigit()]
    return osp.join(state_dir, f'{max(iters)}.state') if iters else None


def load_resume_state(opt):
    """Device-agnostic replacement of ``basicsr.train.load_resume_state``."""
    from basicsr.utils.misc import check_resume

    if opt['auto_resume']:
        state_dir = opt['path'].get('training_states') or osp.join('experiments', opt['name'], 'training_states')
        resume_state_path = _latest_state_path(state_dir)
        if resume_state_path is not None:
            opt['path']['resume_state'] = resume_state_path
    else:
        resume_state_path = opt['path'].get('resume_state')

    if resume_state_path is None:
        return None
    if not osp.isfile(resume_state_path):
        raise FileNotFoundError(f"path.resume_state: no such file '{resume_state_path}'.")
    resume_state = load_training_state(resume_state_path)
    check_resume(opt, resume_state['iter'])
    return resume_state


def _init_dist_pytorch(backend, **kwargs):
    import torch.distributed as dist

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        torch.cuda.set_device(int(os.environ['RANK']) % torch.cuda.device_count())
    elif backend == 'nccl':
        backend = 'gloo'
    dist.init_process_group(backend=backend, **kwargs)


def _model_to_device(self, net):
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    net = net.to(self.device)
    if self.opt['dist']:
        device_ids = [torch.cuda.current_device()] if self.device.type == 'cuda' else None
        net = DistributedDataParallel(
            net, device_ids=device_ids, find_unused_parameters=self.opt.get('find_unused_parameters', False))
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


def patch_basicsr():
    """Apply every workaround; safe to call more than once."""
    import_torchvision()
    import basicsr.train
    import basicsr.utils.dist_util
    from basicsr.models.base_model import BaseModel

    if getattr(basicsr, _PATCHED, False):
        return
    basicsr.train.load_resume_state = load_resume_state
    basicsr.utils.dist_util._init_dist_pytorch = _init_dist_pytorch
    BaseModel.model_to_device = _model_to_device
    setattr(basicsr, _PATCHED, True)


patch_basicsr()
