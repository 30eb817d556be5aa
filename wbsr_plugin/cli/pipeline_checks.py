"""Checks of a BasicSR option file before ``train`` or ``test`` starts: one ``error:`` line instead of a traceback
after the experiment folders exist."""
import argparse

from wbsr_plugin.utils.checkpoint_files import CheckpointError, load_checkpoint_file

from .common_args import version_text
from .options_yaml import exit_with_error, read_option_file


def check_pipeline_options(argv):
    """Read the ``-opt`` file of a ``train``/``test`` command line safely and every checkpoint its ``path`` names
    (``pretrain_network_*``); exit with one ``error:`` line (status 2) on the first problem. ``--version`` prints
    the versions and exits; ``--opt`` is taken for BasicSR's ``-opt`` (``argv`` is changed in place)."""
    if '--version' in argv:
        print(version_text())
        raise SystemExit(0)
    argv[:] = ['-opt' if arg == '--opt' else arg for arg in argv]
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt')
    path = parser.parse_known_args(argv)[0].opt
    if path is None:
        return  # BasicSR's own parser says that -opt is required
    opt = read_option_file(path, '-opt')
    paths = opt.get('path') or {}
    if not isinstance(paths, dict):
        exit_with_error(f'-opt: {path}: path must be a mapping, got {type(paths).__name__}')
    for key, value in paths.items():
        if key.startswith('pretrain_network') and value:
            try:
                load_checkpoint_file(value)
            except CheckpointError as err:
                exit_with_error(f'{path}: path.{key}: {err}')
