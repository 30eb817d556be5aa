"""Checks of a ``train`` or ``test`` command line before BasicSR starts: one ``error:`` line (exit status 2) instead of
a usage block or a traceback after the experiment or result folders exist."""
import re

from .common_args import CommandParser, version_text
from .options_yaml import exit_with_error, read_option_file
from .pipeline_options import PipelineOptionError, check_pipeline_opt

FORCE_YML = re.compile(r'^[A-Za-z0-9_]+(:[A-Za-z0-9_]+)*=.*$')  # BasicSR's --force_yml KEY:KEY=VALUE


def force_yml_entry(text):
    """A ``--force_yml`` entry ``KEY:KEY=VALUE`` whose keys are names (BasicSR builds code from them)."""
    import argparse
    if not FORCE_YML.match(text):
        raise argparse.ArgumentTypeError(f'expected KEY:KEY=VALUE with keys of letters, digits and _, got {text!r}')
    return text


def pipeline_parser(command, doc):
    """BasicSR's ``train.py``/``test.py`` arguments, parsed by a :class:`CommandParser` (one line per error)."""
    parser = CommandParser(command, doc)
    parser.add_argument('-opt', required=True, help='option YAML file')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true', help='resume from the latest training state')
    parser.add_argument('--debug', action='store_true', help="BasicSR's debug mode")
    parser.add_argument('--local_rank', type=int, default=0, help='rank on this node (old launchers)')
    parser.add_argument('--force_yml', nargs='+', type=force_yml_entry, help='set options: train:ema_decay=0.999')
    return parser


def check_forced_keys(opt, entries, path):
    """Every key of ``--force_yml`` exists in ``opt`` (BasicSR cannot add keys)."""
    for entry in entries or ():
        value = opt
        keys = entry.split('=', 1)[0].split(':')
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                exit_with_error(f'--force_yml: {path} has no option {".".join(keys)} to set')
            value = value[key]


def check_pipeline_options(argv, command='train', doc=None):
    """Parse a ``train``/``test`` command line as BasicSR would, read its ``-opt`` file safely and check it
    (:mod:`.pipeline_options`); exit with one ``error:`` line (status 2) on the first problem. ``--version``
    prints the versions and exits; ``--opt`` is taken for BasicSR's ``-opt`` (``argv`` is changed in place).

    Args:
        argv (list[str]): The command line after the program name.
        command (str): 'train' or 'test'. Default: 'train'.
        doc (str | None): The command's help text. Default: None.
    """
    if '--version' in argv:
        print(version_text())
        raise SystemExit(0)
    argv[:] = ['-opt' if arg == '--opt' else arg for arg in argv]
    args = pipeline_parser(command, doc).parse_args(argv)
    opt = read_option_file(args.opt, '-opt')
    try:
        check_pipeline_opt(opt, command)
    except PipelineOptionError as err:
        exit_with_error(f'{args.opt}: {err}')
    check_forced_keys(opt, args.force_yml, args.opt)
