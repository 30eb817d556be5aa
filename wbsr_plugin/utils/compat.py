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
6. ``basicsr.utils.options.ordered_yaml`` parses option files with PyYAML's full
   loader, which builds Python objects from tags: an option file could run code.
   Ours is the safe loader, keeping key order (``!!float`` and the other standard
   tags stay).
7. ``BaseModel.load_network`` (``path.pretrain_network_g`` and the like) calls
   ``torch.load`` without ``weights_only``; ours reads tensors only, on the CPU,
   with one clear error for a file that is not a checkpoint, and ``.safetensors`` files too.
8. ``BaseModel.model_ema`` launches two kernels per parameter every step (RCAN:
   about 1.7k parameter tensors); ours updates them all with one foreach lerp.
9. Python 3.12 has no ``distutils``, which ``basicsr.archs.arch_util`` imports for
   ``LooseVersion``; where it is missing, a module with a ``LooseVersion`` of its own
   stands in.
10. ``basicsr.utils`` imports ``requests`` for its download helpers only; on a machine
   without it, a stand-in module raises a clear ImportError when a download is tried.
"""
import collections
import importlib
import importlib.util
import os
import re
import sys
import types
from copy import deepcopy
from os import path as osp

import torch
import yaml

from .checkpoint_files import load_checkpoint_file, load_weights_file

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
    return load_checkpoint_file(path, extra_globals=SAFE_STATE_GLOBALS)


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


class OrderedSafeLoader(getattr(yaml, 'CSafeLoader', yaml.SafeLoader)):
    """YAML's safe loader (no Python tags), with mappings as OrderedDicts as BasicSR expects."""


OrderedSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                  lambda loader, node: collections.OrderedDict(loader.construct_pairs(node)))


class OrderedSafeDumper(yaml.SafeDumper):
    """YAML's safe dumper, writing OrderedDicts as plain mappings in their order."""


OrderedSafeDumper.add_representer(collections.OrderedDict, lambda dumper, data: dumper.represent_dict(data.items()))


def safe_ordered_yaml():
    """Replacement of ``basicsr.utils.options.ordered_yaml``: (safe loader, safe dumper), both keeping key order."""
    return OrderedSafeLoader, OrderedSafeDumper


def _load_network(self, net, load_path, strict=True, param_key='params'):
    """``BaseModel.load_network`` reading tensors only, from ``.pth`` or ``.safetensors``
    (:func:`load_weights_file`)."""
    from basicsr.utils import get_root_logger

    logger = get_root_logger()
    net = self.get_bare_model(net)
    load_net = load_weights_file(load_path)
    if param_key is not None:
        if param_key not in load_net and 'params' in load_net:
            param_key = 'params'
            logger.info('Loading: params_ema does not exist, use params.')
        load_net = load_net[param_key]
    logger.info(f'Loading {net.__class__.__name__} model from {load_path}, with param key: [{param_key}].')
    for k, v in deepcopy(load_net).items():  # remove DataParallel's 'module.'
        if k.startswith('module.'):
            load_net[k[7:]] = v
            load_net.pop(k)
    self._print_different_keys_loading(net, load_net, strict)
    net.load_state_dict(load_net, strict=strict)


def _model_ema(self, decay=0.999):
    """``BaseModel.model_ema``: ``ema = decay * ema + (1 - decay) * param`` for every parameter, as one foreach
    lerp (parameters matched by name, as BasicSR does)."""
    params = dict(self.get_bare_model(self.net_g).named_parameters())
    ema_params = dict(self.net_g_ema.named_parameters())
    with torch.no_grad():
        torch._foreach_lerp_([ema_params[k].data for k in ema_params], [params[k].data for k in ema_params],
                             1 - decay)


class LooseVersion:
    """``distutils.version.LooseVersion``'s ordering: numbers compare as numbers, other parts as text."""

    def __init__(self, text):
        self.vstring = str(text)
        parts = re.findall(r'\d+|[a-z]+', self.vstring.lower())
        self.version = [int(p) if p.isdigit() else p for p in parts]

    def _key(self, other):
        other = other if isinstance(other, LooseVersion) else LooseVersion(other)
        key = [(0, p) if isinstance(p, int) else (-1, p) for p in self.version]
        return key, [(0, p) if isinstance(p, int) else (-1, p) for p in other.version]

    def __eq__(self, other):
        mine, theirs = self._key(other)
        return mine == theirs

    def __lt__(self, other):
        mine, theirs = self._key(other)
        return mine < theirs

    def __le__(self, other):
        return self == other or self < other

    def __gt__(self, other):
        return not self <= other

    def __ge__(self, other):
        return not self < other

    def __repr__(self):
        return f"LooseVersion('{self.vstring}')"


def _importable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def provide_missing_modules():
    """Stand-ins for ``distutils.version`` and ``requests`` where Python or the machine lacks them (fixes 9, 10)."""
    if not _importable('distutils'):
        distutils, version = types.ModuleType('distutils'), types.ModuleType('distutils.version')
        version.LooseVersion = LooseVersion
        distutils.version = version
        sys.modules.setdefault('distutils', distutils)
        sys.modules.setdefault('distutils.version', version)
    if not _importable('requests'):
        requests = types.ModuleType('requests')

        def missing(*args, **kwargs):
            raise ImportError('downloading needs the requests package: pip install requests')

        requests.get = requests.Session = missing
        sys.modules.setdefault('requests', requests)


def patch_basicsr():
    """Apply every workaround; safe to call more than once."""
    provide_missing_modules()
    import_torchvision()
    import basicsr.train
    import basicsr.utils.dist_util
    import basicsr.utils.options
    from basicsr.models.base_model import BaseModel

    if getattr(basicsr, _PATCHED, False):
        return
    basicsr.train.load_resume_state = load_resume_state
    basicsr.utils.dist_util._init_dist_pytorch = _init_dist_pytorch
    BaseModel.model_to_device = _model_to_device
    BaseModel.load_network = _load_network
    BaseModel.model_ema = _model_ema
    basicsr.utils.options.ordered_yaml = safe_ordered_yaml
    setattr(basicsr, _PATCHED, True)


patch_basicsr()
