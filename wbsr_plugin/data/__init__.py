"""Import every ``*_dataset.py`` beside this file so its classes register in DATASET_REGISTRY."""
import importlib
from os import path as osp

from basicsr.utils import scandir

data_folder = osp.dirname(osp.abspath(__file__))
data_filenames = [osp.splitext(osp.basename(v))[0] for v in scandir(data_folder) if v.endswith('_dataset.py')]
_data_modules = [importlib.import_module(f'wbsr_plugin.data.{file_name}') for file_name in data_filenames]
