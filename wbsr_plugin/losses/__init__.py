"""Import every ``*_loss.py`` beside this file so its classes register in LOSS_REGISTRY."""
import importlib
from os import path as osp

from basicsr.utils import scandir

losses_folder = osp.dirname(osp.abspath(__file__))
losses_filenames = [osp.splitext(osp.basename(v))[0] for v in scandir(losses_folder) if v.endswith('_loss.py')]
_losses_modules = [importlib.import_module(f'wbsr_plugin.losses.{file_name}') for file_name in losses_filenames]
