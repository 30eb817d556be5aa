"""The reproduction of Tables 1-2 end to end at toy size (python -m wbsr_plugin.reproduce --preset toy), its
rows, ``--rows``, ``--jobs`` and ``--time-budget``."""
import json

import pytest
import yaml
from conftest import FIXTURES, run_module

from wbsr_plugin.reproduce_util.presets import PRESETS, get_preset
from wbsr_plugin.reproduce_util.rows import PAPER_ROWS, TABLE_ROWS, run_kinds, training_options

DATA = {'train_hr': 'hr', 'train_lr': 'lr', 'calibration_hr': 'val_hr', 'calibration_lr': 'val_lr',
        'prior': 'prior.pth', 'thresholds': [float(t) for t in range(1, 10)],
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
                      '--out', 'out', '--iters', '2', '--seeds', '0', '--jobs', '2', cwd=tmp_path, timeout=300)
    text = (out / 'results.md').read_text()
    for label in ('SRResNet (uniform + L1)', '+ClassSR', '+ARM', '+HES', '+BDLoss', '+WBSR', '+WBSR-dagger'):
        assert label in text
    assert 'matched FLOPs' in text
    assert (out / 'psnr_vs_flops.png').is_file() or 'matplotlib is not installed' in proc.stderr
    result = json.loads((out / 'eval' / 'srresnet_s0.json').read_text())
    assert set(result['rows']) == set(PAPER_ROWS)  # the preset's rows
    for kind in run_kinds('srresnet', PAPER_ROWS):
        assert (out / 'runs' / 'options' / f'srresnet_{kind}_s0.yml').is_file()
        assert (out / 'runs' / 'experiments' / f'srresnet_{kind}_s0' / 'models' / 'net_g_latest.pth').is_file()
    matched = result['rows']['arm']['matched']['fixtures']['flops_percent']
    assert matched <= 100 * result['matched_fraction']['fixtures'] + 1e-6
    held_out = json.loads((out / 'data' / 'thresholds.json').read_text())['held_out_images']
    assert held_out and not set(held_out) & set(json.loads((out / 'data' / 'thresholds.json').read_text())
                                                ['train_images'])
    # supernet runs measure their class errors on sub-images of the held-out images, never on training ones
    calibration = {p.name.split('_s0')[0] for p in (out / 'data' / 'val_hr_sub').iterdir()}
    assert calibration == {name.rsplit('.', 1)[0] for name in held_out}
    wbsr_options = yaml.safe_load((out / 'runs' / 'options' / 'srresnet_wbsr_s0.yml').read_text())['wbsr']
    assert wbsr_options['calibration_set']['dataroot_gt'] == str(out / 'data' / 'val_hr_sub')
    # a rerun skips every finished step
    proc = run_module('wbsr_plugin.reproduce', '--preset', 'toy', '--train-hr', hr, '--test', f'fixtures={hr}',
                      '--out', str(out), '--iters', '2', '--seeds', '0', cwd=tmp_path, timeout=120)
    assert 'done before, skipped' in proc.stdout


# ----------------------------------------------------------------------------------------------
# rows that separate the causes, --rows, --jobs, --time-budget
def test_mse_and_distillation_rows_build_valid_options():
    from wbsr_plugin.models.wbsr_options import parse_wbsr_options

    from basicsr.archs import build_network
    from basicsr.losses import build_loss

    p = get_preset('toy', {'rows': list(TABLE_ROWS)})
    for kind in ('plain_mse', 'uniform_mse', 'wbsr_distill'):
        opt = training_options(p, 'srresnet', kind, 0, DATA)
        assert opt['name'] == f'srresnet_{kind}_s0'
        build_network(dict(opt['network_g']))
        if kind != 'wbsr_distill':
            assert opt['train']['pixel_opt']['type'] == 'MSELoss'
            build_loss(dict(opt['train']['pixel_opt']))
        if opt['model_type'] == 'DynamicSRModel':
            wbsr = parse_wbsr_options(opt['wbsr'])
            assert wbsr.get('distill_weight', 0) == (p['distill_weight'] if kind == 'wbsr_distill' else 0)
    assert training_options(p, 'srresnet', 'plain_mse', 0, DATA)['model_type'] == 'SRModel'
    wbsr = training_options(p, 'srresnet', 'wbsr', 0, DATA)
    distill = training_options(p, 'srresnet', 'wbsr_distill', 0, DATA)
    # the distillation row is +WBSR with one more option
    assert distill['datasets'] == wbsr['datasets'] and distill['train'] == wbsr['train']


@pytest.mark.parametrize('args, message', [
    (['--rows', 'plain', 'mse'], "unknown row(s) ['mse']; expected some of ['plain', 'classsr'"),
    (['--iters', '2', '--time-budget', '10'], 'not allowed with argument'),
    (['--jobs', '0'], 'expected a positive int'),
])
def test_bad_reproduce_arguments_are_refused(args, message, capsys, tmp_path):
    from wbsr_plugin.reproduce import main

    with pytest.raises(SystemExit) as exit_info:
        main(['--preset', 'toy', '--train-hr', str(tmp_path), '--test', f'x={tmp_path}', '--out', str(tmp_path),
              *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_time_budget_plan():
    from wbsr_plugin.reproduce_util.time_budget import iteration_times, makespan, plan_total_iter, seconds_per_iteration

    log = '\n'.join(f'2026-11-28 05:00:{10 + i:02d},500 INFO: [probe..][epoch:  0, iter:{i:8,d}, lr:(5.000e-04,)] '
                    f'[eta: 0:00:01, time (data): 1.000 (0.001)] l_pix: 1.0e-01' for i in range(1, 9))
    assert seconds_per_iteration(iteration_times(log)) == pytest.approx(1.0)
    costs = [(10., 0.5)] * 5  # five runs, 10 s start-up, 0.5 s per iteration
    total_iter, planned = plan_total_iter(costs, 2, 100.)  # three waves on two slots
    assert planned <= 90. < makespan(costs, total_iter + 1, 2)
    assert total_iter == 40
    with pytest.raises(ValueError, match='too short'):
        plan_total_iter(costs, 2, 30.)


def test_failed_job_names_its_log(tmp_path):
    import sys

    from wbsr_plugin.reproduce_util.jobs import Job, JobsFailed, run_jobs, share_of_machine

    assert share_of_machine(4, 8, cpus=16) == (2, 4)  # loader workers and threads per run
    assert share_of_machine(2, 0, cpus=2) == (0, 1) and share_of_machine(4, 2, cpus=2) == (1, 1)

    jobs = [Job('ok', [sys.executable, '-c', 'print("fine")'], str(tmp_path / 'ok.log')),
            Job('bad', [sys.executable, '-c', 'import sys; print("boom"); sys.exit(3)'], str(tmp_path / 'bad.log'))]
    with pytest.raises(JobsFailed) as failure:
        run_jobs(jobs, 2, str(tmp_path), None, log=lambda m: None)
    text = str(failure.value)
    assert 'bad failed (exit 3)' in text and str(tmp_path / 'bad.log') in text and 'boom' in text
    assert (tmp_path / 'ok.log').read_text() == 'fine\n'


def test_rows_jobs_and_time_budget_on_toy(tmp_path):
    hr = f'{FIXTURES}/hr'
    out = tmp_path / 'out'
    proc = run_module('wbsr_plugin.reproduce', '--preset', 'toy', '--train-hr', hr, '--test', f'fixtures={hr}',
                      '--out', str(out), '--rows', 'plain_mse', 'uniform_mse', '--jobs', '2', '--time-budget', '45',
                      cwd=tmp_path, timeout=300)
    preset = json.loads((out / 'preset.json').read_text())
    plan = preset['time_budget']
    assert preset['rows'] == ['plain_mse', 'uniform_mse'] and preset['jobs'] == 2
    assert preset['total_iter'] == plan['total_iter'] >= 1 and plan['planned_s'] <= 45
    assert plan['backbones']['srresnet']['kind'] == 'uniform_mse'  # the costlier of the two rows was probed
    assert len(plan['backbones']['srresnet']['probes']) == 2  # one probe per job, side by side
    options = sorted((out / 'runs' / 'options').iterdir())
    assert [o.name for o in options] == ['srresnet_plain_mse_s0.yml', 'srresnet_uniform_mse_s0.yml']
    assert {yaml.safe_load(o.read_text())['train']['total_iter'] for o in options} == {plan['total_iter']}
    for name in ('plain_mse', 'uniform_mse'):
        log_path = out / 'runs' / 'logs' / f'srresnet_{name}_s0.log'
        assert log_path.is_file()
        progress = [line for line in proc.stdout.splitlines() if f'train srresnet_{name}_s0: iter ' in line]
        assert progress and all(f"/{plan['total_iter']}" in line and f'log: {log_path}' in line for line in progress)
    assert f"total_iter {plan['total_iter']}" in proc.stdout
    text = (out / 'results.md').read_text()
    assert 'SRResNet (uniform + MSE)' in text and 'supernet, uniform + MSE, Eq. 15' in text
    assert '+WBSR' not in text and 'separating the causes' not in text  # no comparison has both of its rows
    assert f"fit {plan['total_iter']} iterations" in text
    # a rerun with the same budget reuses the plan (no second probe) and skips the finished runs
    proc = run_module('wbsr_plugin.reproduce', '--preset', 'toy', '--train-hr', hr, '--test', f'fixtures={hr}',
                      '--out', str(out), '--rows', 'plain_mse', 'uniform_mse', '--jobs', '2', '--time-budget', '45',
                      cwd=tmp_path, timeout=120)
    assert f"chose total_iter {plan['total_iter']}; reused" in proc.stdout and 'done before, skipped' in proc.stdout


# ----------------------------------------------------------------------------------------------
# one device per run
def test_each_slot_gets_one_device():
    from wbsr_plugin.reproduce_util.jobs import one_device_each

    assert one_device_each(3, 0) == [{}, {}, {}]  # CPU: nothing changes
    assert [e['CUDA_VISIBLE_DEVICES'] for e in one_device_each(3, 2)] == ['0', '1', '0']
    assert [e['CUDA_VISIBLE_DEVICES'] for e in one_device_each(2, 4)] == ['0', '1']
    # the user's own selection: its entries are handed out, as written
    assert [e['CUDA_VISIBLE_DEVICES'] for e in one_device_each(3, 2, '5, 2')] == ['5', '2', '5']
    assert [e['CUDA_VISIBLE_DEVICES'] for e in one_device_each(2, 1, 'GPU-1a2b,GPU-3c4d')] == ['GPU-1a2b'] * 2
    assert one_device_each(2, 0, '') == [{}, {}]
    with pytest.raises(ValueError, match='slots must be at least 1'):
        one_device_each(0, 2)


def test_run_jobs_gives_each_job_the_environment_of_its_slot(tmp_path):
    import sys

    from wbsr_plugin.reproduce_util.jobs import Job, run_jobs

    def job(name, sleep):
        code = f'import os, time; time.sleep({sleep}); print(os.environ["SLOT_DEVICE"], os.environ["SHARED"])'
        return Job(name, [sys.executable, '-c', code], str(tmp_path / f'{name}.log'))

    # 'slow' holds slot 0 while 'fast' ends, so 'next' runs in slot 1
    jobs = [job('slow', 1.5), job('fast', 0), job('next', 0)]
    run_jobs(jobs, 2, str(tmp_path), {'SHARED': 'x'}, log=lambda m: None,
             slot_envs=[{'SLOT_DEVICE': 'a'}, {'SLOT_DEVICE': 'b'}])
    assert [(tmp_path / f'{name}.log').read_text() for name in ('slow', 'fast', 'next')] == ['a x\n', 'b x\n', 'b x\n']
    with pytest.raises(ValueError, match='1 environment'):
        run_jobs(jobs, 2, str(tmp_path), None, slot_envs=[{}])


@pytest.mark.parametrize('device_count, visible, expected', [(0, None, ('auto', [None])),
                                                             (2, '6,3', (1, ['6', '3']))])
def test_training_runs_use_one_device_each(device_count, visible, expected, tmp_path, monkeypatch):
    from wbsr_plugin.reproduce_util import pipeline

    monkeypatch.setattr(pipeline.torch.cuda, 'device_count', lambda: device_count)
    if visible is None:
        monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    else:
        monkeypatch.setenv('CUDA_VISIBLE_DEVICES', visible)
    calls = []

    def run_jobs(todo, parallel, cwd, env, log, slot_envs):
        calls.append(slot_envs)
        for job in todo:
            checkpoint = pipeline.checkpoint_path(str(tmp_path), job.name)
            (tmp_path / 'runs' / 'experiments' / job.name / 'models').mkdir(parents=True)
            open(checkpoint, 'w').close()
        return {}

    monkeypatch.setattr(pipeline, 'run_jobs', run_jobs)
    preset = get_preset('toy', {'rows': ['plain'], 'seeds': [0, 1]})
    pipeline.train_all(preset, DATA, str(tmp_path), jobs=2)
    num_gpu, devices = expected
    assert [env.get('CUDA_VISIBLE_DEVICES') for env in calls[0]] == devices * (2 // len(devices))
    options = sorted((tmp_path / 'runs' / 'options').iterdir())
    assert len(options) == 2 and {yaml.safe_load(o.read_text())['num_gpu'] for o in options} == {num_gpu}


def test_held_out_images_smaller_than_a_sub_image_leave_calibration_to_training_patches(tmp_path):
    import cv2
    import numpy as np

    from wbsr_plugin.reproduce_util.pipeline import prepare_data

    src = tmp_path / 'hr'
    src.mkdir()
    rng = np.random.default_rng(0)
    for i, side in enumerate((200, 200, 200, 40)):  # the toy preset holds out every 4th image: the 40-px one
        cv2.imwrite(str(src / f'im{i}.png'), (rng.random((side, side, 3)) * 255).astype(np.uint8))
    preset = get_preset('toy')
    for _ in range(2):  # and again on the same folder
        data = prepare_data(preset, str(src), str(tmp_path / 'out'))
        assert data['held_out_images'] == ['im3.png'] and data['calibration_hr'] is None
        assert 'calibration_set' not in training_options(preset, 'srresnet', 'wbsr', 0, data)['wbsr']
