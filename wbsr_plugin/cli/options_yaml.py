"""BasicSR option files read safely, with one line for every problem.

``read_option_file`` is what ``train``, ``test`` (before BasicSR parses the file again, with the safe loader of
``utils/compat.py``), ``infer``, ``curve``, ``export`` and ``subnets`` (their ``--opt``) read option files with.
"""
import sys

import yaml

from wbsr_plugin.utils.compat import OrderedSafeLoader

USAGE_ERROR = 2  # exit status of a bad option or input file


def exit_with_error(message):
    """Print ``error: message`` on stderr and exit with status 2."""
    print(f'error: {message}', file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def read_option_file(path, flag='--opt'):
    """The mapping in the YAML file ``path``; a missing, unreadable or broken file, or one with Python tags, exits
    with one ``error:`` line naming ``flag`` and the file."""
    try:
        with open(path, encoding='utf-8') as f:
            opt = yaml.load(f, Loader=OrderedSafeLoader)
    except FileNotFoundError:
        exit_with_error(f'{flag}: no such file: {path}')
    except IsADirectoryError:
        exit_with_error(f'{flag}: {path} is a folder, not a YAML file')
    except (OSError, UnicodeDecodeError) as err:
        exit_with_error(f'{flag}: cannot read {path}: {getattr(err, "strerror", None) or err}')
    except yaml.YAMLError as err:
        where = getattr(err, 'problem_mark', None)
        line = f' (line {where.line + 1})' if where is not None else ''
        problem = getattr(err, 'problem', None) or str(err).splitlines()[0]
        if 'constructor' in str(problem):
            problem += '; Python tags are not allowed in option files'
        exit_with_error(f'{flag}: {path} is not a valid option file{line}: {problem}')
    if not isinstance(opt, dict):
        exit_with_error(f'{flag}: {path} holds no options (expected a YAML mapping)')
    return opt


def network_options_from_yaml(path):
    """The ``network_g`` section of a BasicSR training or test YAML (one ``error:`` line when it has none)."""
    opt = read_option_file(path)
    if not isinstance(opt.get('network_g'), dict):
        exit_with_error(f'--opt: {path} has no network_g section')
    return dict(opt['network_g'])
