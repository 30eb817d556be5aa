"""BasicSR option files read safely, with one line for every problem.

``read_option_file`` is what ``train``, ``test`` (before BasicSR parses the file again, with the safe loader of
``utils/compat.py``), ``infer``, ``curve``, ``export`` and ``subnets`` (their ``--opt``) read option files with.
Aliases (``*name``) may repeat a value, but a file whose values, aliases expanded, number more than
:data:`MAX_VALUES` is refused before it is built: a few lines of nested aliases could otherwise expand to more
values than any command could print, copy or compare.
"""
import reprlib
import sys

import yaml

from wbsr_plugin.utils.compat import OrderedSafeLoader

USAGE_ERROR = 2  # exit status of a bad option or input file
MAX_VALUES = 100_000  # values of an option file with its aliases expanded (real ones hold a few hundred)


class ExpansionError(ValueError):
    """An option file whose aliases expand without bound, or refer to themselves."""


def expanded_size(node, limit=MAX_VALUES):
    """How many values (scalars, lists and mappings) the YAML node graph ``node`` holds with every alias expanded;
    :class:`ExpansionError` beyond ``limit`` or for an alias inside itself. Linear in the nodes of the file."""
    sizes, open_nodes = {}, set()

    def size(current):
        key = id(current)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ExpansionError('an alias refers to a value that holds it')
        open_nodes.add(key)
        total = 1
        if isinstance(current, yaml.SequenceNode):
            total += sum(size(child) for child in current.value)
        elif isinstance(current, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in current.value)
        open_nodes.discard(key)
        if total > limit:
            raise ExpansionError(f'its aliases expand to more than {limit} values')
        sizes[key] = total
        return total

    return size(node)


def short(value, length=200):
    """``repr(value)`` cut to about ``length`` characters, for messages about values read from files."""
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = length
    shortener.maxlist = shortener.maxdict = shortener.maxtuple = shortener.maxset = 8
    shortener.maxlevel = 3
    text = shortener.repr(value)
    return text if len(text) <= length else text[:length] + '...'


def load_yaml(stream):
    """The document in ``stream`` read with the safe loader that keeps key order, its alias expansion bounded
    (:func:`expanded_size`)."""
    loader = OrderedSafeLoader(stream)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded_size(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def exit_with_error(message):
    """Print ``error: message`` on stderr and exit with status 2."""
    print(f'error: {message}', file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def read_option_file(path, flag='--opt'):
    """The mapping in the YAML file ``path``; a missing, unreadable or broken file, or one with Python tags, exits
    with one ``error:`` line naming ``flag`` and the file."""
    try:
        with open(path, encoding='utf-8') as f:
            opt = load_yaml(f)
    except FileNotFoundError:
        exit_with_error(f'{flag}: no such file: {path}')
    except IsADirectoryError:
        exit_with_error(f'{flag}: {path} is a folder, not a YAML file')
    except (OSError, UnicodeDecodeError) as err:
        exit_with_error(f'{flag}: cannot read {path}: {getattr(err, "strerror", None) or err}')
    except ExpansionError as err:
        exit_with_error(f'{flag}: {path} is not a valid option file: {err}')
    except RecursionError:
        exit_with_error(f'{flag}: {path} is not a valid option file: its values nest too deeply')
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
