"""WBSRClassSRModel's branch phase: grouped by class on the device, the loss of the per-class formulation."""
import copy
import sys
import warnings
from os import path as osp

import pytest
import torch
from conftest import parsed_options, train_options
from torch.overrides import TorchFunctionMode

from basicsr.models import build_model

HOST_READS = (torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__int__,
              torch.Tensor.__bool__, torch.Tensor.nonzero)
TORCH_DIR = osp.dirname(torch.__file__)
CLASSSR_NET = {'type': 'WBSRClassSRNet', 'widths': [4, 6, 8], 'num_block': 1}
# flat patches score 0, uniform noise far more than 1 and far less than 1000: class 2 stays empty
THRESHOLDS = [1.0, 1000.0]
NOISY = [False, True, True, False, True, False]


class HostReads(TorchFunctionMode):
    """Records the tensor methods that read a tensor to the host (or boolean-mask it), called outside torch."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in HOST_READS and not sys._getframe(1).f_code.co_filename.startswith(TORCH_DIR):
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))


def classsr_model(tmp_path, scale=2, **options):
    opt = train_options('classsr', scale=scale, total_iter=10, model_type='WBSRClassSRModel', network=CLASSSR_NET,
                        **options)
    opt['classsr'] = {'branch_ratio': 0.5, 'thresholds': THRESHOLDS}
    opt['train']['ema_decay'] = 0
    return build_model(parsed_options(opt, tmp_path))


def mixed_batch(scale=2, size=8):
    """Flat and noisy LR patches, interleaved (``NOISY``), with random ground truth."""
    generator = torch.Generator().manual_seed(0)
    lq = torch.stack([torch.rand(3, size, size, generator=generator) if noisy else
                      torch.full((3, size, size), 0.1 * (i + 1)) for i, noisy in enumerate(NOISY)])
    return {'lq': lq, 'gt': torch.rand(len(NOISY), 3, size * scale, size * scale, generator=generator)}


def masked_branch_loss(net, lq, gt, classes, criterion):
    """The per-class formulation: boolean masks, loss of each branch weighted by its share of the batch."""
    total = 0
    for branch in range(len(net.branches)):
        members = classes == branch
        if members.any():
            total = total + criterion(net.branches[branch](lq[members]), gt[members]) * members.float().mean()
    return total


def test_patch_classes_follow_the_thresholds(tmp_path):
    model = classsr_model(tmp_path)
    classes = model.patch_classes(mixed_batch()['lq'], 3)
    assert classes.tolist() == [int(noisy) for noisy in NOISY]
    assert model.patch_classes(mixed_batch()['lq'], 1).tolist() == [0] * len(NOISY)


def test_branch_phase_loss_and_gradients_equal_the_masked_formulation(tmp_path):
    model = classsr_model(tmp_path)
    net = model.get_bare_model(model.net_g)
    reference = copy.deepcopy(net)
    batch = mixed_batch()
    model.feed_data(batch)
    with HostReads() as reads:
        model.optimize_parameters(1)
    assert reads.calls == ['tolist']  # the class sizes, once
    classes = torch.tensor([int(noisy) for noisy in NOISY])
    expected = masked_branch_loss(reference, batch['lq'], batch['gt'], classes, torch.nn.functional.l1_loss)
    expected.backward()
    assert model.get_current_log()['l_pix'] == pytest.approx(expected.item(), rel=1e-6)
    for (name, p), q in zip(net.named_parameters(), reference.parameters()):
        if q.grad is None:  # the classifier and the empty branch 2
            assert p.grad is None or not p.grad.any(), name
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert reference.branches[0].conv_first.weight.grad.abs().sum() > 0
    assert reference.branches[1].conv_first.weight.grad.abs().sum() > 0


def test_joint_phase_reads_nothing_and_logs_floats(tmp_path):
    model = classsr_model(tmp_path)
    model.feed_data(mixed_batch())
    with HostReads() as reads:
        model.optimize_parameters(6)
    assert reads.calls == []
    log = model.get_current_log()
    assert list(log) == ['l_pix', 'l_class', 'l_average'] and all(type(v) is float for v in log.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_on_cuda_the_branch_phase_waits_for_the_device_once(tmp_path):
    model = classsr_model(tmp_path, num_gpu=1)
    model.feed_data(mixed_batch())
    model.optimize_parameters(1)  # allocates the optimizer's state and the thresholds on the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            model.optimize_parameters(2)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    syncs = [str(w.message) for w in caught if 'synchroniz' in str(w.message).lower()]
    assert len(syncs) == 1, syncs  # the class sizes
