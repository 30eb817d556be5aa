"""The evaluation library (wbsr_plugin.cli.evaluation) and the curve command built on it."""
import csv
from os import path as osp

import numpy as np
import pytest
import torch
from conftest import FIXTURES, TINY_RESNET, y_psnr

from wbsr_plugin import curve
from wbsr_plugin.cli.evaluation import engine_runner, evaluate, load_pairs, to_uint8_bgr, whole_image_runner
from wbsr_plugin.inference.checkpoint import WBSR_KEY, make_wbsr_meta

from basicsr.archs import build_network

HR, LR = osp.join(FIXTURES, 'hr'), osp.join(FIXTURES, 'lr_x4')
THRESHOLDS = [2., 4., 6., 8., 10., 12., 14., 16., 18.]


@pytest.fixture
def supernet():
    return build_network(dict(TINY_RESNET, upscale=4)).eval()


def test_pairs_from_folder_or_bicubic():
    given, made = load_pairs(HR, LR, 4), load_pairs(HR, None, 4)
    assert [n for n, _, _ in given] == [n for n, _, _ in made] == ['astronaut', 'chelsea', 'coffee', 'rocket']
    for (_, lq, hr), (_, lq_made, hr_made) in zip(given, made):
        assert lq.shape == lq_made.shape == (1, 3, hr.shape[0] // 4, hr.shape[1] // 4)
        assert (hr == hr_made).all() and hr.dtype == to_uint8_bgr(lq).dtype


def test_evaluate_costs(supernet):
    pairs = load_pairs(HR, LR, 4)
    whole = evaluate(whole_image_runner(supernet), pairs, 4)
    assert whole['flops_percent'] == pytest.approx(100)
    expected = np.mean([y_psnr(supernet(lq).detach(), hr, 4) for _, lq, hr in pairs])
    assert whole['psnr'] == pytest.approx(expected, abs=1e-3)
    cheapest = evaluate(engine_runner(supernet, THRESHOLDS, patch_size=16, overlap=2, subnet=0), pairs, 4)
    # each 24 x 24 image: 2 x 2 patches through subnet 0, fitted to 13 x 13 (two patches of at most 16 that
    # overlap by 2 cover 24 from 13 on)
    per_image = 4 * supernet.flops(13, 13, subnet=0)
    assert cheapest['flops_percent'] == pytest.approx(100 * per_image / supernet.flops(24, 24))
    assert cheapest['gflops_per_32x32'] == pytest.approx(per_image / 1e9 * 32**2 / 24**2)
    assert 0 < cheapest['ssim'] <= 1


def test_curve_cli(supernet, tmp_path):
    path = str(tmp_path / 'net.pth')
    torch.save({'params': supernet.state_dict(), WBSR_KEY: make_wbsr_meta(supernet, THRESHOLDS, 16)}, path)
    hr, lr = tmp_path / 'hr', tmp_path / 'lr'
    for folder, source in ((hr, HR), (lr, LR)):  # one image keeps the sweep fast
        folder.mkdir()
        (folder / 'rocket.png').symlink_to(osp.join(source, 'rocket.png'))
    out = tmp_path / 'curve'
    assert curve.main(['--hr', str(hr), '--lr', str(lr), '--model', path, '--budgets', '0.5', '1', '-t', '16',
                       '--overlap', '2', '--device', 'cpu', '-o', str(out)]) == 0
    with open(out / 'curve.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['setting'] for r in rows] == (['full network, whole image'] +
                                            [r['setting'] for r in rows if r['setting'].startswith('subnet')] +
                                            ['FLOPs budget 0.5', 'FLOPs budget 1', 'Eq. 15, stored thresholds',
                                             'default policy: Eq. 15'])
    assert len(rows) == 1 + len(supernet.subnets) + 4
    (_, lq, hr_image), = load_pairs(str(hr), str(lr), 4)
    assert float(rows[0]['psnr']) == pytest.approx(y_psnr(supernet(lq).detach(), hr_image, 4), abs=1e-3)
    assert (out / 'curve.md').is_file()


def test_curve_latency_budgets_and_quality_targets(supernet, tmp_path, monkeypatch):
    monkeypatch.setenv('WBSR_CACHE_DIR', str(tmp_path / 'cache'))
    path = str(tmp_path / 'net.pth')
    errors = [[1.2, 1.1, 1.05, 1.0]] * 10
    torch.save({'params': supernet.state_dict(),
                WBSR_KEY: make_wbsr_meta(supernet, THRESHOLDS, 16, class_errors=errors)}, path)
    out = tmp_path / 'curve'
    assert curve.main(['--hr', osp.join(HR, 'rocket.png'), '--model', path, '--budgets', '0.5', '--budget-unit',
                       'time', '--max-loss', '0.3', '-t', '16', '--device', 'cpu', '-o', str(out)]) == 0
    with open(out / 'curve.csv') as f:
        rows = list(csv.DictReader(f))
    settings = [r['setting'] for r in rows]
    assert settings[1] == 'subnet 0 (w8 d1)'  # by time: tiled or whole, whichever is faster
    # the realised loss beside the expected one: the full network's PSNR minus the setting's
    target = rows[settings.index('quality target 0.3 dB')]
    assert float(target['realised_loss_db']) == pytest.approx(float(rows[0]['psnr']) - float(target['psnr']))
    assert 0 <= float(target['expected_loss_db']) <= 0.3 and rows[0]['expected_loss_db'] == ''
    assert '| expected loss (dB) | realised loss (dB) |' in (out / 'curve.md').read_text()
    assert settings[-4:] == ['latency budget 0.5', 'quality target 0.3 dB', 'Eq. 15, stored thresholds',
                             'default policy: quality target 0.03 dB']
    assert 'plans by time (this device)' in (out / 'curve.md').read_text()
    with pytest.raises(SystemExit) as exit_info:
        curve.main(['--hr', HR, '--model', path, '--budget-unit', 'time', '--plan-by', 'flops', '-o', str(out)])
    assert exit_info.value.code == 2


def test_an_interrupted_curve_writes_nothing(supernet, tmp_path, monkeypatch, capsys):
    path = str(tmp_path / 'net.pth')
    torch.save({'params': supernet.state_dict(), WBSR_KEY: make_wbsr_meta(supernet, THRESHOLDS, 16)}, path)
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return {'psnr': 1., 'ssim': 1., 'flops_percent': 1., 'gflops_per_32x32': 1., 'time_s': 1.}

    monkeypatch.setattr(curve, 'evaluate', interrupted)
    out = tmp_path / 'curve'
    assert curve.main(['--hr', osp.join(HR, 'rocket.png'), '--model', path, '-o', str(out), '--device', 'cpu']) == 130
    assert 'curve: interrupted' in capsys.readouterr().err and (not out.exists() or not list(out.iterdir()))


# ----------------------------------------------------------------------------------------------
# fair timing: the plain network in the engine's memory format, every runner warmed up per input shape
def counting_forward(module, calls):
    forward = module.forward

    def counted(x, *args, **kwargs):
        calls.append((tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last)))
        return forward(x, *args, **kwargs)

    module.forward = counted


def test_the_plain_network_runs_channels_last_with_unchanged_output(supernet):
    lq = torch.rand(1, 3, 10, 13, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = supernet(lq)
    for channels_last in (True, False):
        sr, report = whole_image_runner(supernet, channels_last=channels_last)(lq)
        torch.testing.assert_close(sr, expected, rtol=0, atol=1e-5)
        assert sr.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert report['flops'] == supernet.flops(10, 13)
    # the caller's network is left in NCHW
    assert all(p.is_contiguous() for p in supernet.parameters())


def test_plain_network_is_warmed_up_once_per_input_shape(supernet, monkeypatch):
    import copy

    from wbsr_plugin.cli import evaluation

    calls = []

    def counting_copy(net):
        copied = copy.deepcopy(net).to(memory_format=torch.channels_last)
        counting_forward(copied, calls)
        return copied

    monkeypatch.setattr(evaluation, 'channels_last_copy', counting_copy)
    run = whole_image_runner(supernet)
    small, large = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 12)
    for lq in (small, small, large, small, large):
        run(lq)
    # shape 8x8: warm-up + 3 timed calls, 8x12: warm-up + 2, every call channels-last
    assert [shape for shape, _ in calls] == [small.shape] * 3 + [large.shape] * 2 + [small.shape, large.shape]
    assert all(channels_last for _, channels_last in calls)


def test_engine_runner_is_warmed_up_once_per_input_shape(supernet, monkeypatch):
    from wbsr_plugin.cli import evaluation

    calls = []
    engine_run = evaluation.DynamicInferenceEngine.run

    def counted(engine, lq):
        calls.append(tuple(lq.shape))
        return engine_run(engine, lq)

    monkeypatch.setattr(evaluation.DynamicInferenceEngine, 'run', counted)
    run = engine_runner(supernet, THRESHOLDS, patch_size=16, overlap=2)
    small, large = torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 28)
    first, _ = run(small)
    second, _ = run(small)
    run(large)
    assert calls == [(1, 3, 20, 20)] * 3 + [(1, 3, 20, 28)] * 2
    torch.testing.assert_close(first, second, rtol=0, atol=0)
