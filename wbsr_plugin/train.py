"""BasicSR's training pipeline with the plugin registered.

``python wbsr_plugin/train.py -opt X.yml``, ``python -m wbsr_plugin.train -opt X.yml`` and
``wbsr-train -opt X.yml`` take every flag of BasicSR's ``train.py`` (``--launcher``,
``--auto_resume``, ``--debug``, ``--force_yml``). ``experiments/`` and ``tb_logger/`` are
written under the current directory.
"""
import os
import sys
from os import path as osp

if not __package__:  # run as a file: import the package, not the files beside this one
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))

import wbsr_plugin  # noqa: E402, F401  (registers the plugin and applies the compatibility fixes)
from wbsr_plugin.cli.pipeline_checks import check_pipeline_options  # noqa: E402

from basicsr.train import train_pipeline  # noqa: E402


def main():
    argv = sys.argv[1:]
    check_pipeline_options(argv, 'train', __doc__)  # one line, before any folder is made, for a bad option file
    sys.argv[1:] = argv  # BasicSR reads sys.argv: --opt spelled as its -opt
    train_pipeline(os.getcwd())


if __name__ == '__main__':
    main()
