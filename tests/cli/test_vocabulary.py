"""One vocabulary: --version, -opt, plain help, one-line errors, refused Real-ESRGAN flags, one planning target and
one default policy across the commands."""
import copy
from os import path as osp

import pytest
import torch
from conftest import FIXTURES, REPO_ROOT, TINY_RESNET, train_options, write_yaml

from wbsr_plugin import calibrate, curve, demo, export, fit_prior, infer, prepare, reproduce, subnets
from wbsr_plugin.cli.image_io import read_image
from wbsr_plugin.cli.pipeline_checks import check_pipeline_options
from wbsr_plugin.cli.training_options import parsed_options
from wbsr_plugin.inference.checkpoint import WBSR_KEY, make_wbsr_meta
from wbsr_plugin.models.wbsr_options import parse_wbsr_options

from basicsr.archs import build_network
from basicsr.models import build_model

COMMANDS = {'infer': infer.main, 'curve': curve.main, 'export': export.main, 'subnets': subnets.main,
            'prepare': prepare.main, 'fit_prior': fit_prior.main, 'reproduce': reproduce.main, 'demo': demo.main,
            'calibrate': calibrate.main}
OPTION_FILE = osp.join(REPO_ROOT, 'options', 'train_wbsr_srresnet_x4.yml')
IMAGE = osp.join(FIXTURES, 'lr_x4', 'rocket.png')
THRESHOLDS = [2. * k for k in range(1, 10)]
ERRORS = [[0.2 + 0.1 * k + 0.5 / (m + 1) for m in range(4)] for k in range(10)]  # harder classes gain more


def exit_of(main, argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.mark.parametrize('name', sorted(COMMANDS))
def test_version_and_plain_help_in_every_command(name, capsys):
    code, out, _ = exit_of(COMMANDS[name], ['--version'], capsys)
    assert code == 0 and out.startswith('wbsr_plugin ') and 'torch' in out
    code, out, _ = exit_of(COMMANDS[name], ['--help'], capsys)
    assert code == 0 and f'python -m wbsr_plugin.{name}' in out
    assert ':mod:' not in out and ':class:' not in out and '``' not in out


def test_version_in_train_and_test(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        check_pipeline_options(['--version'])
    assert info.value.code == 0 and capsys.readouterr().out.startswith('wbsr_plugin ')
    option_file = write_yaml(tmp_path / 'train.yml', train_options('vocabulary'))  # its datasets exist
    argv = ['--opt', option_file, '--debug']
    check_pipeline_options(argv)
    assert argv == ['-opt', option_file, '--debug']  # BasicSR's spelling


@pytest.mark.parametrize('name', ['subnets', 'export', 'infer', 'curve'])
def test_dash_opt_is_opt(name, capsys):
    if name == 'subnets':
        assert subnets.main(['-opt', OPTION_FILE]) is None
        assert 'w64d16' in capsys.readouterr().out
        return
    parser = {'export': export.build_parser, 'infer': infer.build_parser, 'curve': curve.build_parser}[name]()
    required = {'export': ['--model', 'm.pth', '--all', '-o', 'x'], 'infer': ['-i', 'x', '--model', 'm.pth'],
                'curve': ['--hr', 'x', '--model', 'm.pth']}[name]
    assert parser.parse_args(required + ['-opt', OPTION_FILE]).opt == OPTION_FILE


@pytest.mark.parametrize('flag, instead', [
    (['--face_enhance'], 'no face enhancement'),
    (['-n', 'RealESRGAN_x4plus'], '--model'),
    (['--outscale', '3.5'], 'resize it afterwards'),
    (['--tile_pad', '10'], '--overlap'),
    (['-t', '0'], '-t/--patch-size is the LR patch side'),
])
def test_real_esrgan_flags_are_refused_with_one_line(flag, instead, capsys):
    code, _, err = exit_of(infer.main, ['-i', IMAGE, '--model', 'm.pth'] + flag, capsys)
    assert code == 2 and instead in err and len(err.strip().splitlines()) == 1
    assert err.startswith('python -m wbsr_plugin.infer: error: ')


def test_parser_errors_are_one_line(capsys):
    for main, argv in ((infer.main, ['-i', IMAGE]), (subnets.main, ['-s', '5']), (curve.main, ['--nope'])):
        code, _, err = exit_of(main, argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and ': error: ' in err


@pytest.mark.parametrize('option, value, message', [
    ('budget', '1.5', "budget must be a fraction in (0, 1], got '1.5'"),
    ('budget', 'x', "budget must be a fraction in (0, 1], got 'x'"),
    ('max_loss', '-1', "max_loss must be a loss in dB >= 0 or 'off', got '-1'"),
    ('budget_unit', 'seconds', "budget_unit must be one of flops, time, got 'seconds'"),
    ('plan_by', 'weather', "plan_by must be one of flops, time, got 'weather'"),
])
def test_each_invalid_target_value_gets_one_message_in_every_command(option, value, message, tmp_path, capsys):
    """The same line from infer, curve and a training option file (where the parser's choices do not catch it
    first: a choice's value is refused by argparse's own line, which names the allowed values too)."""
    flag = '--' + option.replace('_', '-')
    curve_flag = '--budgets' if option == 'budget' else flag
    runs = [(infer.main, ['-i', IMAGE, '--model', 'm.pth', flag, value]),
            (curve.main, ['--hr', IMAGE, '--model', 'm.pth', curve_flag, value])]
    for main, argv in runs:
        code, _, err = exit_of(main, argv, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1
        if option in ('budget_unit', 'plan_by'):
            assert 'invalid choice' in err and value in err
        else:
            assert err.strip().endswith(message)
    with pytest.raises(ValueError) as info:
        parse_wbsr_options({'inference': {option: value}})
    assert str(info.value) == f'wbsr.inference: {message}'


def test_the_default_policy_gives_one_plan_through_infer_curve_and_test(tmp_path, monkeypatch):
    """The same checkpoint and image, each command under its defaults: the same target, patch size and plan."""
    net = build_network(dict(TINY_RESNET, upscale=4)).eval()
    path = str(tmp_path / 'net.pth')
    torch.save({'params': net.state_dict(),
                WBSR_KEY: make_wbsr_meta(net, THRESHOLDS, 12, class_errors=ERRORS)}, path)
    lq = read_image(IMAGE)[0]
    engines = {}

    parser = infer.build_parser()
    args = parser.parse_args(['-i', IMAGE, '-o', str(tmp_path / 'out'), '--model', path, '--device', 'cpu'])
    engines['infer'] = infer.build_engine(args, parser, torch.device('cpu'), None)[0]

    recorded = []
    monkeypatch.setattr(curve, 'engine_runner', lambda net, **kw: recorded.append(kw) or (lambda lq: None))
    monkeypatch.setattr(curve, 'evaluate', lambda *a: {'psnr': 1., 'ssim': 1., 'flops_percent': 1.,
                                                      'gflops_per_32x32': 1., 'time_s': 1.})
    assert curve.main(['--hr', osp.join(FIXTURES, 'hr'), '--model', path, '-o', str(tmp_path / 'c')]) == 0
    engines['curve'] = infer.DynamicInferenceEngine(net, **recorded[-1])  # the last row: the default policy

    opt = parsed_options(train_options('policy', model_type='DynamicSRModel'), tmp_path)
    opt = dict(copy.deepcopy(opt), is_train=False)
    opt['path'] = dict(opt['path'], pretrain_network_g=path, strict_load_g=True, param_key_g='params')
    opt.pop('train')
    model = build_model(opt)
    engines['test.py'] = model.validation_engine(0)[0]

    plans = {name: engine.plan(lq) for name, engine in engines.items()}
    assert {str(e.target) for e in engines.values()} == {'quality target 0.03 dB'}
    assert {e.patch_size for e in engines.values()} == {12}  # the checkpoint's own
    assert len({p.patch_size for p in plans.values()}) == 1
    reference = plans['infer']
    for name, plan in plans.items():
        assert plan.histogram == reference.histogram, name
        assert torch.equal(plan.subnets, reference.subnets), name
        assert plan.whole_image_subnet == reference.whole_image_subnet, name
