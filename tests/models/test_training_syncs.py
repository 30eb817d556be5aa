"""A training step never reads the device; the log is read (reduced over the ranks) only when asked for."""
import copy
import sys
import warnings
from os import path as osp

import numpy as np
import pytest
import torch
from conftest import parsed_options, record_subnet_outputs, train_options
from torch.overrides import TorchFunctionMode

from wbsr_plugin.utils.deferred_log import log_to_floats

from basicsr.models import build_model
from basicsr.models.sr_model import SRModel

HOST_READS = (torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__int__,
              torch.Tensor.__bool__)
# Callers whose reads are of CPU tensors whatever the training device, so never wait for it: torch's own
# (Adam reads its CPU step counters) and the subnet sampler (draws on its own CPU generator).
CPU_READERS = (osp.dirname(torch.__file__), osp.join('wbsr_plugin', 'models', 'subnet_sampling.py'))


class HostReads(TorchFunctionMode):
    """Records the tensor methods that read a tensor to the host, but those of :data:`CPU_READERS`."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS:
            caller = sys._getframe(1).f_code.co_filename
            if not any(reader in caller for reader in CPU_READERS):
                self.calls.append((func.__name__, caller, sys._getframe(1).f_lineno))
        return func(*args, **(kwargs or {}))


def dynamic_options(name, **wbsr):
    opt = train_options(name, model_type='DynamicSRModel', total_iter=10)
    opt['wbsr'] = {'subnet_sampling': 'sandwich', 'calibration_patches': 32,
                   'inference': {'patch_size': 12, 'overlap': 2}, **wbsr}
    return opt


def random_batch(seed, n=2, size=8, scale=4):
    generator = torch.Generator().manual_seed(seed)
    return {'lq': torch.rand(n, 3, size, size, generator=generator),
            'gt': torch.rand(n, 3, size * scale, size * scale, generator=generator)}


def test_the_recorder_sees_every_host_read():
    value = torch.tensor([2.5])
    with HostReads() as reads:
        value.item(), value.tolist(), float(value), int(value), bool(value)
    assert [name for name, _, _ in reads.calls] == ['item', 'tolist', '__float__', '__int__', '__bool__']


def test_logged_losses_equal_the_hand_computed_ones(tmp_path):
    model = build_model(parsed_options(dynamic_options('log_values'), tmp_path))
    subnets, outputs = record_subnet_outputs(model)
    batch = random_batch(0)
    model.feed_data(batch)
    model.optimize_parameters(1)
    gt = batch['gt'].numpy()
    expected = np.mean([np.abs(out.detach().numpy() - gt).mean() for out in outputs])  # L1, mean over subnets
    log = model.get_current_log()
    assert len(outputs) == 3 and list(log) == ['l_pix', 'subnet']
    assert log['l_pix'] == pytest.approx(expected, rel=1e-5)
    assert log['subnet'] == float(subnets[-1])
    # the same as BasicSR's per-step reduction of the stored losses
    assert log['l_pix'] == pytest.approx(SRModel.reduce_loss_dict(model, {'l_pix': model.log_dict['l_pix']})['l_pix'])


@pytest.mark.parametrize('wbsr,pixel_opt', [
    ({}, None),
    ({'distill_weight': 0.5}, None),
    ({'loss_lr': 0.05}, {'type': 'BDLoss', 'estimator': 'bmc', 'scale': 4, 'learn_sigma': True,
                         'init_noise_sigma': 0.05}),
])
def test_a_training_step_reads_nothing_and_the_log_is_read_once(wbsr, pixel_opt, tmp_path):
    opt = dynamic_options('no_reads', **wbsr)
    if pixel_opt is not None:
        opt['train']['pixel_opt'] = pixel_opt
    model = build_model(parsed_options(opt, tmp_path))
    for it, seed in enumerate((1, 2), 1):
        model.feed_data(random_batch(seed))
        with HostReads() as reads:
            model.optimize_parameters(it)
        assert reads.calls == []
    assert all(torch.is_tensor(v) and not v.requires_grad for k, v in model.log_dict.items() if k != 'subnet')
    with HostReads() as reads:
        log = model.get_current_log()
    assert [name for name, _, _ in reads.calls] == ['tolist']
    assert all(type(value) is float for value in log.values())
    if pixel_opt is not None:
        assert log['sigma'] == pytest.approx(float(model.cri_pix.sigma.detach()))
    if wbsr.get('distill_weight'):
        assert 'l_distill' in log


def test_the_log_averages_the_losses_over_the_ranks_in_one_collective(monkeypatch):
    collectives = []

    def all_reduce(tensor):  # the other rank logged l_pix 0.6, l_distill 0.0
        collectives.append(tensor.clone())
        tensor += torch.tensor([0.6, 0.0])

    monkeypatch.setattr(torch.distributed, 'all_reduce', all_reduce)
    log = {'l_pix': torch.tensor(0.2), 'l_distill': torch.tensor([0.3, 0.5]), 'subnet': 3, 'sigma': torch.tensor(0.05)}
    floats = log_to_floats(log, rank_mean_keys=('l_pix', 'l_distill'), world_size=2)
    assert list(floats) == ['l_pix', 'l_distill', 'subnet', 'sigma']
    assert floats['l_pix'] == pytest.approx(0.4) and floats['l_distill'] == pytest.approx(0.2)
    assert floats['subnet'] == 3.0 and floats['sigma'] == pytest.approx(0.05)  # read as they are
    assert len(collectives) == 1 and torch.allclose(collectives[0], torch.tensor([0.2, 0.4]))
    assert log_to_floats(log, rank_mean_keys=('l_pix', 'l_distill'), world_size=1)['l_pix'] == pytest.approx(0.2)


def test_a_distributed_model_reduces_when_its_log_is_read(tmp_path, monkeypatch):
    model = build_model(parsed_options(dynamic_options('dist_log'), tmp_path))
    model.feed_data(random_batch(3))
    model.optimize_parameters(1)
    single = model.get_current_log()
    monkeypatch.setattr(torch.distributed, 'all_reduce', lambda tensor: tensor.mul_(2))  # two equal ranks
    model.opt = copy.deepcopy(model.opt)
    model.opt.update(dist=True, world_size=2)
    assert model.get_current_log() == pytest.approx(single)
    monkeypatch.setattr(torch.distributed, 'all_reduce', lambda tensor: tensor.mul_(3))  # the others logged 2x
    assert model.get_current_log()['l_pix'] == pytest.approx(1.5 * single['l_pix'])
    assert model.get_current_log()['subnet'] == single['subnet']


def cuda_syncs(action):
    """The device synchronisations of ``action()``, as PyTorch's sync debug mode reports them."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            action()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    return [str(w.message) for w in caught if 'synchroniz' in str(w.message).lower()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_on_cuda_a_step_never_waits_and_reading_the_log_waits_once(tmp_path):
    model = build_model(parsed_options(dict(dynamic_options('cuda_syncs'), num_gpu=1), tmp_path))
    for it in (1, 2):  # the first step allocates the optimizer's state
        model.feed_data(random_batch(it))
        syncs = cuda_syncs(lambda: model.optimize_parameters(it))
    assert syncs == []
    reads = []
    assert len(cuda_syncs(lambda: reads.append(model.get_current_log()))) == 1
    assert all(type(value) is float for value in reads[0].values())
