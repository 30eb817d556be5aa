import copy
import math
import re

import numpy as np
import pytest
import torch
from conftest import (
    fixture_dirs,
    parsed_options,
    read_train_log,
    record_subnet_outputs,
    run_module,
    train_options,
    write_yaml,
    y_psnr,
)

from wbsr_plugin.cli.evaluation import load_pairs
from wbsr_plugin.inference.checkpoint import load_supernet
from wbsr_plugin.models.subnet_sampling import SubnetSampler
from wbsr_plugin.models.wbsr_options import parse_wbsr_options
from wbsr_plugin.utils.compat import load_training_state
from wbsr_runtime.class_thresholds import ClassThresholds, thresholds_at

from basicsr.archs import build_network
from basicsr.models import build_model


def dynamic_options(name, **kwargs):
    opt = train_options(name, model_type='DynamicSRModel', **kwargs)
    opt['wbsr'] = {'subnet_sampling': 'sandwich', 'calibration_patches': 32,
                   'inference': {'patch_size': 12, 'overlap': 2}}
    return opt


def random_batch(scale=4, n=2, size=8):
    return {'lq': torch.rand(n, 3, size, size), 'gt': torch.rand(n, 3, size * scale, size * scale)}


def test_train_pipeline_logs_full_and_dynamic_validation(tmp_path):
    opt = dynamic_options('dynamic_run', total_iter=2)
    run_module('wbsr_plugin.train', '-opt', write_yaml(tmp_path / 'train.yml', opt), cwd=tmp_path)
    experiment = tmp_path / 'experiments' / 'dynamic_run'
    log = read_train_log(experiment)
    full_psnr = float(re.findall(r'Validation fixtures_val\n\s+# psnr: ([\d.]+)', log)[-1])
    assert re.search(r'Validation fixtures_val_dynamic\n\s+# psnr: [\d.]+', log)
    flops = re.findall(r'Dynamic inference on fixtures_val_dynamic: ([\d.]+) % of the full network FLOPs', log)
    assert 0 < float(flops[-1]) <= 100

    net, meta = load_supernet(str(experiment / 'models' / 'net_g_latest.pth'))
    # the last validation ran the final EMA weights, which the latest checkpoint holds
    pairs = load_pairs(*fixture_dirs(), 4)
    with torch.no_grad():
        expected = np.mean([y_psnr(net(lq), hr, 4) for _, lq, hr in pairs])
    assert full_psnr == pytest.approx(expected, abs=1e-3)
    assert meta['network_g']['type'] == 'WBSRResNet' and meta['patch_size'] == 12
    # thresholds per LR patch size, from the training LR images; 'thresholds' are those of the engine's patch
    table = ClassThresholds.from_meta(meta).as_table()
    assert isinstance(table, dict) and 16 in table and all(len(t) == 9 for t in table.values())
    assert meta['thresholds'] == pytest.approx(thresholds_at(table, 12))
    assert [s.width for s in net.subnets] == [8, 8, 16, 16]


@pytest.mark.parametrize('rule', ['uniform', 'sandwich', 'cost_weighted'])
def test_resume_restores_the_subnet_sampler_and_optimizer(rule, tmp_path):
    opt = dynamic_options('resume', total_iter=10)
    opt['wbsr']['subnet_sampling'] = rule
    model = build_model(parsed_options(copy.deepcopy(opt), tmp_path))
    for it in range(1, 4):
        model.feed_data(random_batch())
        model.optimize_parameters(it)
    model.save(epoch=0, current_iter=3)
    expected = [model.subnet_sampler.sample() for _ in range(5)]

    resumed = build_model(parsed_options(copy.deepcopy(opt), tmp_path))
    state = load_training_state(tmp_path / 'experiments' / 'resume' / 'training_states' / '3.state')
    resumed.resume_training(state)
    assert [resumed.subnet_sampler.sample() for _ in range(5)] == expected
    assert resumed.optimizer_g.state_dict()['state'][0]['step'] == 3


def test_sampling_rules():
    net = build_network({'type': 'WBSRResNet'})
    draws = [SubnetSampler(net.subnets, 'sandwich', seed=1).sample() for _ in range(3)]
    assert all(d[:2] == [8, 0] and 0 < d[2] < 8 for d in draws)
    sampler = SubnetSampler(net.subnets, 'cost_weighted', seed=1)
    counts = torch.bincount(torch.tensor([sampler.sample()[0] for _ in range(4000)]), minlength=9).double()
    expected = sampler.cost_weights * 4000
    chi2 = float(((counts - expected)**2 / expected).sum())
    assert chi2 < 26.1  # chi-square, 8 degrees of freedom, p = 0.001
    uniform = SubnetSampler(net.subnets, 'uniform', seed=1)
    assert {uniform.sample()[0] for _ in range(200)} == set(range(9))
    with pytest.raises(ValueError, match=r"wbsr.subnet_sampling must be one of \['uniform', 'sandwich'"):
        SubnetSampler(net.subnets, 'random')


@pytest.mark.parametrize('section,message', [
    ({'subnet_sampler': 'uniform'}, r"wbsr: unknown key\(s\) \['subnet_sampler'\]"),
    ({'inference': {'patch': 32}}, r"wbsr.inference: unknown key\(s\) \['patch'\]"),
    ({'loss_lr': '1e-2'}, 'wbsr.loss_lr must be a positive number'),
])
def test_wbsr_options_are_strict(section, message):
    with pytest.raises(ValueError, match=message):
        parse_wbsr_options(section)


def test_model_refuses_a_plain_network(tmp_path):
    opt = dynamic_options('plain', network={'type': 'MSRResNet', 'num_feat': 16, 'num_block': 2})
    with pytest.raises(ValueError, match='is not one'):
        build_model(parsed_options(opt, tmp_path))


def test_loss_sigma_trains_in_its_own_group_and_resumes(tmp_path):
    opt = dynamic_options('sigma', total_iter=10)
    opt['train']['pixel_opt'] = {'type': 'BDLoss', 'estimator': 'bmc', 'scale': 4, 'learn_sigma': True,
                                 'init_noise_sigma': 0.05}
    opt['wbsr']['loss_lr'] = 0.05
    model = build_model(parsed_options(copy.deepcopy(opt), tmp_path))
    groups = model.optimizer_g.param_groups
    assert len(groups) == 2 and groups[1]['lr'] == 0.05 and groups[1]['params'] == model.cri_pix.sigma_parameters()
    for it in range(1, 4):
        model.feed_data(random_batch())
        model.optimize_parameters(it)
    sigma = float(model.cri_pix.sigma)
    # random outputs err by far more than sigma: each Adam step (lr 0.05) raises log(sigma) by about 0.05
    assert 0.05 * math.exp(0.12) < sigma < 0.05 * math.exp(0.155)
    model.save(epoch=0, current_iter=3)

    resumed = build_model(parsed_options(copy.deepcopy(opt), tmp_path))
    resumed.resume_training(load_training_state(tmp_path / 'experiments' / 'sigma' / 'training_states' / '3.state'))
    assert float(resumed.cri_pix.sigma) == sigma


def _record_mse(monkeypatch):
    """Record (output, target) of every MSE term (with an L1 pixel loss: the distillation terms)."""
    from wbsr_plugin.models import dynamic_sr_model
    calls = []
    mse = dynamic_sr_model.F.mse_loss

    def recording(output, target, *args, **kwargs):
        calls.append((output, target))
        return mse(output, target, *args, **kwargs)

    monkeypatch.setattr(dynamic_sr_model.F, 'mse_loss', recording)
    return calls


def test_distillation_uses_the_detached_full_output_of_the_same_step(tmp_path, monkeypatch):
    opt = dynamic_options('distill', total_iter=10)
    opt['wbsr']['distill_weight'] = 0.5
    model = build_model(parsed_options(opt, tmp_path))
    calls = _record_mse(monkeypatch)
    order, outputs = record_subnet_outputs(model)
    model.feed_data(random_batch())
    model.optimize_parameters(1)
    full = model.full_subnet
    assert order[0] == full and len(order) == 3 and full not in order[1:]
    assert len(calls) == 2  # the smaller subnets only
    for (output, target), student in zip(calls, outputs[1:]):
        assert output is student and output.requires_grad
        assert not target.requires_grad and torch.equal(target, outputs[0].detach())
    expected = 0.5 * sum(float(torch.nn.functional.mse_loss(o, outputs[0])) for o in outputs[1:]) / 2
    assert model.get_current_log()['l_distill'] == pytest.approx(expected, rel=1e-5)
    assert set(model.log_dict) >= {'l_pix', 'l_distill'}


def test_distillation_off_trains_as_before(tmp_path, monkeypatch):
    opt = dynamic_options('no_distill', total_iter=10)
    model = build_model(parsed_options(opt, tmp_path))
    assert model.wbsr_opt['distill_weight'] == 0
    calls = _record_mse(monkeypatch)
    order, _ = record_subnet_outputs(model)
    expected_order = SubnetSampler(model.get_bare_model(model.net_g).subnets, 'sandwich', 10).sample()
    model.feed_data(random_batch())
    model.optimize_parameters(1)
    assert order == expected_order and not calls and 'l_distill' not in model.log_dict


def test_distillation_resumes_to_the_same_step(tmp_path):
    opt = dynamic_options('distill_resume', total_iter=10)
    opt['wbsr']['distill_weight'] = 1.0
    batches = [random_batch() for _ in range(4)]
    model = build_model(parsed_options(copy.deepcopy(opt), tmp_path))
    for it, batch in enumerate(batches[:3], 1):
        model.feed_data(batch)
        model.optimize_parameters(it)
    model.save(epoch=0, current_iter=3)
    model.feed_data(batches[3])
    model.optimize_parameters(4)

    experiment = tmp_path / 'experiments' / 'distill_resume'
    resumed = build_model(parsed_options(copy.deepcopy(opt), tmp_path))
    resumed.load_network(resumed.net_g, str(experiment / 'models' / 'net_g_3.pth'), True)
    resumed.resume_training(load_training_state(experiment / 'training_states' / '3.state'))
    resumed.feed_data(batches[3])
    resumed.optimize_parameters(4)
    log, resumed_log = model.get_current_log(), resumed.get_current_log()
    for key in ('l_pix', 'l_distill', 'subnet'):
        assert resumed_log[key] == pytest.approx(log[key], rel=1e-6)
    for p, q in zip(model.net_g.parameters(), resumed.net_g.parameters()):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize('value', [-0.1, '0.5', True, float('nan'), float('inf')])
def test_distill_weight_is_validated(value):
    with pytest.raises(ValueError, match='wbsr.distill_weight must be a number >= 0'):
        parse_wbsr_options({'distill_weight': value})


def test_distillation_needs_the_sandwich(tmp_path):
    opt = dynamic_options('distill_uniform')
    opt['wbsr'].update(distill_weight=0.5, subnet_sampling='uniform')
    with pytest.raises(ValueError, match='wbsr.subnet_sampling: sandwich'):
        build_model(parsed_options(opt, tmp_path))
