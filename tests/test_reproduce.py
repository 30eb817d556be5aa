"""The reproduction of Tables 1-2 end to end at toy size (python -m wbsr_plugin.reproduce --preset toy)."""
import json

import pytest

from conftest import FIXTURES, run_module
from wbsr_plugin.reproduce_util.presets import PRESETS, get_preset
from wbsr_plugin.reproduce_util.rows import TABLE_ROWS, run_kinds, training_options

DATA = {'train_hr': 'hr', 'train_lr': 'lr', 'prior': 'prior.pth', 'thresholds': [float(t) for t in range(1, 10)],
        'classsr_thresholds': [10.0, 30.0]}


@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_every_row_has_the_same_training_budget(preset):
    p = get_preset(preset)
    for backbone in p['backbones']:
        opts = [training_options(p, backbone, kind, 0, DATA) for kind in run_kinds(backbone)]
        budgets = {(o['train']['total_iter'], o['datasets']['train']['batch_size_per_gpu']) for o in opts}
        assert len(budgets) == 1
        assert all(isinstance(o['train']['optim_g']['lr'], float) for o in opts)


def test_unknown_preset_option_is_refused():
    with pytest.raises(ValueError, match='unknown preset option'):
        get_preset('tiny', {'total_iters': 3})


def test_toy_preset_end_to_end(tmp_path):
    hr = f'{FIXTURES}/hr'
    out = tmp_path / 'out'
    # a relative --out, as users type it: training runs in subprocesses with their own working folder
    proc = run_module('wbsr_plugin.reproduce', '--preset', 'toy', '--train-hr', hr, '--test', f'fixtures={hr}',
                      '--out', 'out', '--iters', '2', '--seeds', '0', cwd=tmp_path, timeout=300)
    text = (out / 'results.md').read_text()
    for label in ('SRResNet (uniform + L1)', '+ClassSR', '+ARM', '+HES', '+BDLoss', '+WBSR', '+WBSR-dagger'):
        assert label in text
    assert 'matched FLOPs' in text
    assert (out / 'psnr_vs_flops.png').is_file() or 'matplotlib is not installed' in proc.stderr
    result = json.loads((out / 'eval' / 'srresnet_s0.json').read_text())
    assert set(result['rows']) == set(TABLE_ROWS)
    for kind in run_kinds('srresnet'):
        assert (out / 'runs' / 'options' / f'srresnet_{kind}_s0.yml').is_file()
        assert (out / 'runs' / 'experiments' / f'srresnet_{kind}_s0' / 'models' / 'net_g_latest.pth').is_file()
    matched = result['rows']['arm']['matched']['fixtures']['flops_percent']
    assert matched <= 100 * result['matched_fraction']['fixtures'] + 1e-6
    held_out = json.loads((out / 'data' / 'thresholds.json').read_text())['held_out_images']
    assert held_out and not set(held_out) & set(json.loads((out / 'data' / 'thresholds.json').read_text())
                                                ['train_images'])
    # a rerun skips every finished step
    proc = run_module('wbsr_plugin.reproduce', '--preset', 'toy', '--train-hr', hr, '--test', f'fixtures={hr}',
                      '--out', str(out), '--iters', '2', '--seeds', '0', cwd=tmp_path, timeout=120)
    assert 'done before, skipped' in proc.stdout
