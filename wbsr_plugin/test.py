"""BasicSR's test pipeline with the plugin registered.

``python wbsr_plugin/test.py -opt X.yml``, ``python -m wbsr_plugin.test -opt X.yml`` and
``wbsr-test -opt X.yml`` take every flag of BasicSR's ``test.py``. ``results/`` is written
under the current directory.
"""
import os
import sys
from os import path as osp

if not __package__:  # run as a file: import the package, not the files beside this one
    sys.path[0] = osp.dirname(osp.dirname(osp.abspath(__file__)))

import wbsr_plugin  # noqa: E402, F401  (registers the plugin and applies the compatibility fixes)
from wbsr_plugin.cli.pipeline_checks import check_pipeline_options  # noqa: E402

from basicsr.test import test_pipeline  # noqa: E402


def main():
    argv = sys.argv[1:]
    check_pipeline_options(argv, 'test', __doc__)  # one line, before any folder is made, for a bad option file
    sys.argv[1:] = argv  # BasicSR reads sys.argv: --opt spelled as its -opt
    test_pipeline(os.getcwd())


if __name__ == '__main__':
    main()
