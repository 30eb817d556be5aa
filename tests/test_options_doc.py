"""docs/options.md against the code's own option tables: same keys, same defaults."""
import inspect
import re
from os import path as osp

import pytest
import yaml
from conftest import REPO_ROOT

from wbsr_plugin.archs.supernet_util import supernet_class, supernet_types
from wbsr_plugin.data.hes import HES_OPTIONS
from wbsr_plugin.inference.engine import DynamicInferenceEngine
from wbsr_plugin.losses import bd_loss
from wbsr_plugin.models.wbsr_options import DEFAULTS, INFERENCE_KEYS, POLICY_KEYS

DOC = osp.join(REPO_ROOT, 'docs', 'options.md')
MARKER = re.compile(r'^<!-- options: (\S+) -->$')
ROW = re.compile(r'^\| `([^`]+)` \| `([^`]*)` \| (.+) \|$')


def signature_defaults(cls, keys):
    parameters = inspect.signature(cls.__init__).parameters
    return {key: parameters[key].default for key in keys}


def code_tables():
    """Section -> {option: default} as the code declares them."""
    return {
        'wbsr': dict(DEFAULTS),
        'wbsr.inference': {**signature_defaults(DynamicInferenceEngine, INFERENCE_KEYS), **POLICY_KEYS},
        'hes': {key: default for key, (default, _) in HES_OPTIONS.items()},
        'BDLoss': signature_defaults(bd_loss.BDLoss, bd_loss._OPTIONS),
        **{name: signature_defaults(supernet_class(name), supernet_class(name).OPTIONS + ('widths', 'depths'))
           for name in supernet_types()},
    }


def doc_tables(text):
    """Section -> {option: default} of every ``<!-- options: SECTION -->`` table of the page."""
    tables, section = {}, None
    for number, line in enumerate(text.splitlines(), 1):
        marker = MARKER.match(line)
        if marker:
            section = marker.group(1)
            assert section not in tables, f'{DOC}:{number}: section {section} documented twice'
            tables[section] = {}
        elif section and line.startswith('| `'):
            row = ROW.match(line)
            assert row, f'{DOC}:{number}: not a "| `option` | `default` | meaning |" row: {line}'
            key, default = row.group(1), yaml.safe_load(row.group(2))
            assert key not in tables[section], f'{DOC}:{number}: {section}.{key} documented twice'
            tables[section][key] = default
        elif section and not line.startswith('|') and tables[section]:
            section = None  # the table ended
    return tables


def normalise(value):
    return list(value) if isinstance(value, tuple) else value


def test_every_option_is_documented_with_its_default():
    with open(DOC, encoding='utf-8') as f:
        documented = doc_tables(f.read())
    code = code_tables()
    assert sorted(documented) == sorted(code)
    for section, options in code.items():
        missing = sorted(set(options) - set(documented[section]))
        extra = sorted(set(documented[section]) - set(options))
        assert not missing, f'{DOC}: section {section} lacks {missing}'
        assert not extra, f'{DOC}: section {section} documents {extra}, which the code does not have'
        for key, default in options.items():
            assert documented[section][key] == normalise(default), (
                f'{DOC}: {section}.{key} documented with default {documented[section][key]!r}, '
                f'the code has {default!r}')
            assert type(documented[section][key]) is type(normalise(default)) or default is None, (section, key)


@pytest.mark.parametrize('name', ['train_wbsr_srresnet_x4.yml', 'train_wbsr_rcan_x4.yml'])
def test_option_files_point_to_the_page(name):
    with open(osp.join(REPO_ROOT, 'options', name), encoding='utf-8') as f:
        assert 'docs/options.md' in f.readline()
    assert osp.isfile(DOC)


def test_the_checker_sees_a_missing_and_a_wrong_row():
    with open(DOC, encoding='utf-8') as f:
        text = f.read()
    documented = doc_tables(text.replace('| `hes_delta` | `0.9` |', '| `hes_delta` | `0.8` |'))
    assert documented['hes']['hes_delta'] == 0.8
    documented = doc_tables('\n'.join(line for line in text.splitlines() if not line.startswith('| `trim`')))
    assert 'trim' not in documented['wbsr.inference'] and 'overlap' in documented['wbsr.inference']
