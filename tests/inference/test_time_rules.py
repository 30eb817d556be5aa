"""Deciding by time with an injected cost table: never slower than the plain network, explicit subnets, the table."""
import json
import math
import os

import pytest
import torch
from conftest import TINY_RESNET

from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_plugin.inference.cost_model import CostTable, cost_key, load_or_measure, measure_cost_table

from basicsr.archs import build_network

THRESHOLDS = [0.5 * k for k in range(1, 10)]


def tiny_net():
    """Subnets in cost order: w8d1, w8d2, w16d1, w16d2."""
    return build_network(dict(TINY_RESNET, upscale=4)).eval()


def table(net, *, patch_s, whole_pixel_s, patch_call_s=0.0, whole_call_s=0.0):
    """A hand-made table: the same seconds per patch at every side (per pixel: scaled from side 8 to 16)."""
    m = len(net.subnets)
    calls = ((patch_call_s, patch_call_s), ) * m
    return CostTable(cost_key(net, 'cpu', torch.float32, True), (8, 16), calls, tuple((s, 4 * s) for s in patch_s),
                     (whole_call_s, ) * m, tuple(whole_pixel_s))


def image():
    torch.manual_seed(3)
    lq = torch.rand(1, 3, 48, 64)
    lq[..., :37, :] = 0.5  # flat but for the bottom row of patches: cheap subnets there
    return lq


def engine(net, cost, **options):
    return DynamicInferenceEngine(net, thresholds=THRESHOLDS, patch_size=16, overlap=2, cost_table=cost, **options)


def test_predictions_by_hand():
    net = tiny_net()
    cost = table(net, patch_s=[1., 2., 3., 4.], whole_pixel_s=[0.1, 0.2, 0.3, 0.4], patch_call_s=0.5,
                 whole_call_s=0.25)
    assert cost.per_patch(3, 8) == (0.5, 4.) and cost.per_patch(3, 16) == (0.5, 16.)
    assert cost.per_patch(3, 12) == pytest.approx((0.5, 4. + 12. * (144 - 64) / (256 - 64)))  # by pixel count
    # 3 patches of w8d1 and 5 of w16d2 at side 8, 2 per call: 2 + 3 calls
    assert cost.tiled_seconds([3, 0, 0, 5], 8, 2) == pytest.approx(2 * 0.5 + 3 * 1. + 3 * 0.5 + 5 * 4.)
    assert cost.whole_seconds(2, 10, 20) == pytest.approx(0.25 + 200 * 0.3)
    assert cost.whole_peak_bytes(2, 10, 20) is None
    assert CostTable.from_json(cost.to_json()) == cost


def test_a_plan_predicted_slower_runs_the_full_network_on_the_whole_image():
    net, lq = tiny_net(), image()
    # every patch costs far more than the whole image through the full network
    cost = table(net, patch_s=[1., 1., 1., 1.], whole_pixel_s=[1e-4] * 4)
    sr, report = engine(net, cost).run(lq)
    assert report.plan.whole_image_subnet == 3 and report.whole_image
    assert report.plan.reason.startswith('full network on the whole image: the plan was predicted slower')
    assert report.plan.predicted_s == pytest.approx(48 * 64 * 1e-4)
    with torch.no_grad():
        torch.testing.assert_close(sr, net(lq), rtol=0, atol=1e-5)
    assert report.summary().endswith(report.plan.reason) and report.flops == report.full_flops


def test_a_plan_predicted_faster_runs_as_planned():
    net, lq = tiny_net(), image()
    cost = table(net, patch_s=[1e-6, 2e-6, 3e-6, 4e-6], whole_pixel_s=[1.] * 4)
    by_flops = engine(net, None).plan(lq)
    assert by_flops.whole_image_subnet is None and by_flops.histogram[0] > 0  # a tiled plan, cheap subnets in it
    by_time = engine(net, cost).plan(lq)
    assert by_time.histogram == by_flops.histogram and torch.equal(by_time.subnets, by_flops.subnets)
    assert by_time.whole_image_subnet is None and by_time.reason == 'plan predicted faster than the plain network'
    assert by_flops.reason is None and by_flops.predicted_s is None


def test_the_full_network_tiled_when_that_is_the_fastest_plain_execution():
    net, lq = tiny_net(), image()
    # the full subnet is cheap per patch, the others dear; the whole image dearer still
    cost = table(net, patch_s=[5., 5., 5., 1e-3], whole_pixel_s=[1.] * 4)
    sr, report = engine(net, cost).run(lq)
    assert report.plan.reason.startswith('full network tiled')
    assert report.histogram == [0, 0, 0, report.num_patches] and not report.whole_image
    forced, _ = DynamicInferenceEngine(net, patch_size=16, overlap=2, subnet=3, whole_image_fallback=False).run(lq)
    torch.testing.assert_close(sr, forced, rtol=0, atol=0)


def test_under_a_flops_budget_a_faster_whole_image_subnet_within_it():
    net, lq = tiny_net(), image()
    flops = [net.flops(48, 64, subnet=m) for m in range(4)]
    budget = 0.9
    assert engine(net, None, budget=budget).plan(lq).whole_image_subnet is None  # the FLOPs plan tiles
    fitting = [m for m in range(4) if flops[m] <= budget * flops[3]]
    assert fitting == [0, 1]
    # tiles are dear; every whole-image subnet beats the plain network (the full one on the whole image)
    cost = table(net, patch_s=[1.] * 4, whole_pixel_s=[1e-5, 2e-5, 3e-5, 4e-5])
    _, report = engine(net, cost, budget=budget).run(lq)
    assert report.plan.whole_image_subnet == 1 and report.flops == flops[1] <= budget * flops[3]
    assert report.plan.reason.startswith('whole-image subnet within the budget')
    # no subnet within the budget beats the plain network: the fastest plain execution runs
    cost = table(net, patch_s=[1.] * 4, whole_pixel_s=[1., 1., 1., 1e-5])
    _, report = engine(net, cost, budget=budget).run(lq)
    assert report.plan.whole_image_subnet == 3 and report.plan.reason.startswith('full network on the whole image')


@pytest.mark.parametrize('whole_pixel_s, whole', [(1e-6, True), (1., False)])
def test_an_explicit_subnet_runs_tiled_or_whole_whichever_is_faster(whole_pixel_s, whole):
    net, lq = tiny_net(), image()
    cost = table(net, patch_s=[1e-3] * 4, whole_pixel_s=[whole_pixel_s] * 4)
    sr, report = engine(net, cost, subnet=1).run(lq)
    assert report.whole_image == whole and report.histogram[1] == report.num_patches
    assert report.plan.reason == f"subnet: {'whole image' if whole else 'tiled'} predicted faster"
    with torch.no_grad():
        if whole:
            torch.testing.assert_close(sr, net(lq, subnet=1), rtol=0, atol=1e-5)


def test_a_table_of_another_network_is_refused():
    net = tiny_net()
    other = build_network({'type': 'WBSRResNet', 'num_feat': 16, 'num_block': 2, 'widths': [16], 'depths': [2]})
    with pytest.raises(ValueError, match='cost_table holds 1 subnets, the network 4'):
        DynamicInferenceEngine(net, cost_table=table(other, patch_s=[1.], whole_pixel_s=[1.]))
    with pytest.raises(TypeError, match='cost_table must be a CostTable or None, got dict'):
        DynamicInferenceEngine(net, cost_table={})


def test_the_key_names_what_the_cost_depends_on():
    net = tiny_net()
    key = cost_key(net, 'cpu', torch.float32, True)
    assert key['network'] == net.network_options() and key['dtype'] == 'float32' and key['channels_last']
    assert key['torch'] == torch.__version__ and f'{torch.get_num_threads()} threads' in key['device']
    assert cost_key(net, 'cpu', torch.bfloat16, True) != key and cost_key(net, 'cpu', torch.float32, False) != key
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert cost_key(net, 'cpu', torch.float32, True) != key
    finally:
        torch.set_num_threads(threads)


def test_measured_tables_are_cached_and_refreshed(tmp_path):
    net = tiny_net()
    measured = measure_cost_table(net, 'cpu', patch_sides=(8, 16), whole_sides=(8, 16))
    assert all(s >= 0 and math.isfinite(s) for row in measured.patch_s for s in row)
    assert measured.whole_pixel_s[-1] > 0 and len(measured.patch_s) == 4
    first = load_or_measure(net, 'cpu', folder=str(tmp_path))
    (path, ) = tmp_path.iterdir()
    assert json.loads(path.read_text())['key'] == cost_key(net, 'cpu', torch.float32, True)
    os.utime(path, (1, 1))
    assert load_or_measure(net, 'cpu', folder=str(tmp_path)) == first  # read, not measured:
    assert path.stat().st_mtime == 1
    load_or_measure(net, 'cpu', folder=str(tmp_path), refresh=True)
    assert path.stat().st_mtime > 1  # measured and written again
    path.write_text('not json')
    assert load_or_measure(net, 'cpu', folder=str(tmp_path)).key == first.key  # unreadable: measured again
