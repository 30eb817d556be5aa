"""Import every ``*_model.py`` beside this file so its classes register in MODEL_REGISTRY."""
import importlib
from os import path as osp

from basicsr.utils import scandir

models_folder = osp.dirname(osp.abspath(__file__))
models_filenames = [osp.splitext(osp.basename(v))[0] for v in scandir(models_folder) if v.endswith('_model.py')]
_models_modules = [importlib.import_module(f'wbsr_plugin.models.{file_name}') for file_name in models_filenames]
