"""Deciding by time with an injected cost table: never slower than the plain network, explicit subnets, the table."""
import json
import math
import os

import pytest
import torch
from conftest import TINY_RESNET

from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_plugin.inference.cost_model import cost_key, load_or_measure, measure_cost_table
from wbsr_runtime.cost_table import CostTable

from basicsr.archs import build_network

THRESHOLDS = [0.5 * k for k in range(1, 10)]


def tiny_net():
    """Subnets in cost order: w8d1, w8d2, w16d1, w16d2."""
    return build_network(dict(TINY_RESNET, upscale=4)).eval()


def table(net, calls, *, analysis=(0., 0.), tiling=0., pixels=(256, 4096)):
    """A hand-made table: ``calls[m]`` are subnet m's seconds per call at ``pixels`` LR pixels."""
    return CostTable(cost_key(net, 'cpu', torch.float32, True), pixels, tuple(tuple(c) for c in calls), analysis,
                     tiling)


def linear(net, rates, **options):
    """Seconds per call = ``rates[m]`` per LR pixel, exactly, at any size."""
    return table(net, [(256 * r, 4096 * r) for r in rates], **options)


def image():
    torch.manual_seed(3)
    lq = torch.rand(1, 3, 48, 64)
    lq[..., :37, :] = 0.5  # flat but for the bottom row of patches: cheap subnets there
    return lq


def engine(net, cost, **options):
    return DynamicInferenceEngine(net, thresholds=THRESHOLDS, patch_size=16, overlap=2, cost_table=cost, **options)


def test_predictions_by_hand():
    net = tiny_net()
    cost = table(net, [(1., 2.), (1., 3.), (2., 4.), (4., 8.)], analysis=(0.5, 1e-3), tiling=1e-2)
    assert cost.call_seconds(3, 256) == 4. and cost.call_seconds(3, 4096) == 8.
    assert cost.call_seconds(3, 1024) == pytest.approx(4. + 4. * 768 / 3840)  # between the points: a line
    assert cost.call_seconds(3, 8192) == pytest.approx(16.)  # beyond them: the last point's rate
    assert cost.call_seconds(1, 128) == pytest.approx(1. - 2. * 128 / 3840)  # before them: the first segment
    assert cost.whole_seconds(2, 32, 64) == pytest.approx(2. + 2. * (2048 - 256) / 3840)
    # 3 patches of w8d1 and 5 of w16d2 at side 16, 2 per call: calls of 2, 1; 2, 2, 1 patches
    expected = (1. + 1. * 256 / 3840) + 1. + 2 * (4. + 4. * 256 / 3840) + 4.
    assert cost.forward_seconds([3, 0, 0, 5], 16, [2, 2, 2, 2]) == pytest.approx(expected)
    assert cost.analysis_seconds(10, 20) == pytest.approx(0.5 + 0.2) and cost.tiling_seconds(8, 16) == 8 * 256e-2
    assert cost.whole_peak_bytes(2, 10, 20) is None and cost.num_subnets == 4
    assert CostTable.from_json(cost.to_json()) == cost


def test_a_plan_predicted_slower_runs_the_full_network_on_the_whole_image():
    net, lq = tiny_net(), image()
    # one patch per call: the cheapest tiled plan is fast, so the image is analysed; its patches through the full
    # network cost more than the whole image
    cost = table(net, [(1e-6, 1e-5)] * 3 + [(1., 1.01)], pixels=(225, 3072))
    sr, report = engine(net, cost, max_batch_pixels=225).run(lq)
    assert report.plan.classes is not None and report.plan.histogram[3] > 1
    assert report.plan.whole_image_subnet == 3 and report.whole_image
    assert report.plan.reason.startswith('full network on the whole image: the plan was predicted slower')
    assert report.plan.predicted_s == pytest.approx(1.01)
    with torch.no_grad():
        torch.testing.assert_close(sr, net(lq), rtol=0, atol=1e-5)
    assert report.summary().endswith(report.plan.reason) and report.flops == report.full_flops


def test_the_plain_network_runs_without_analysis_when_nothing_else_could(monkeypatch):
    net, lq = tiny_net(), image()
    cost = linear(net, [1e-4] * 4, tiling=1.)  # every tiled plan is slower than the plain network

    def no_difficulty(*args):
        raise AssertionError('the difficulty was computed')

    monkeypatch.setattr('wbsr_plugin.inference.planning.patch_difficulty', no_difficulty)
    sr, report = engine(net, cost).run(lq)
    assert report.plan.whole_image_subnet == 3 and 'no analysis needed' in report.plan.reason
    assert report.plan.classes is None and report.plan.predicted_s == pytest.approx(48 * 64 * 1e-4)
    with torch.no_grad():
        torch.testing.assert_close(sr, net(lq), rtol=0, atol=1e-5)
    with pytest.raises(AssertionError, match='the difficulty was computed'):  # a tiled plan could be faster
        engine(net, linear(net, [1e-6, 1e-4, 1e-4, 1e-4])).run(lq)


def test_a_plan_predicted_faster_runs_as_planned():
    net, lq = tiny_net(), image()
    cost = linear(net, [1e-6, 2e-6, 3e-6, 1.])  # the full network is dear: the plan's cheap patches save time
    by_flops = engine(net, None).plan(lq)
    assert by_flops.whole_image_subnet is None and by_flops.histogram[0] > 0  # a tiled plan, cheap subnets in it
    by_time = engine(net, cost).plan(lq)
    assert by_time.histogram == by_flops.histogram and torch.equal(by_time.subnets, by_flops.subnets)
    assert by_time.whole_image_subnet is None and by_time.reason == 'plan predicted faster than the plain network'
    assert by_time.predicted_s == pytest.approx(sum(n * by_time.patch_size**2 * r for n, r in zip(by_time.histogram,
                                                                               [1e-6, 2e-6, 3e-6, 1.])))
    assert by_flops.reason is None and by_flops.predicted_s is None


def test_the_full_network_tiled_when_that_is_the_fastest_plain_execution():
    net, lq = tiny_net(), image()
    # one 15 x 15 patch per call: the full subnet is cheap on a patch and dear on the whole image (48 x 64), the
    # others dear always
    cost = table(net, [(5., 5.)] * 3 + [(1e-3, 100.)], pixels=(225, 3072))
    sr, report = engine(net, cost, max_batch_pixels=225).run(lq)
    assert report.plan.patch_size == 15 and report.num_patches == 20
    assert report.plan.reason.startswith('full network tiled')
    assert report.histogram == [0, 0, 0, report.num_patches] and not report.whole_image
    assert report.plan.predicted_s == pytest.approx(20 * 1e-3)
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
    cost = linear(net, [1e-5, 2e-5, 3e-5, 4e-5], tiling=1.)
    _, report = engine(net, cost, budget=budget).run(lq)
    assert report.plan.whole_image_subnet == 1 and report.flops == flops[1] <= budget * flops[3]
    assert report.plan.reason.startswith('whole-image subnet within the budget')
    # no subnet within the budget beats the plain network: the fastest plain execution runs
    cost = linear(net, [1., 1., 1., 1e-5], tiling=1.)
    _, report = engine(net, cost, budget=budget).run(lq)
    assert report.plan.whole_image_subnet == 3 and report.plan.reason.startswith('full network on the whole image')


@pytest.mark.parametrize('calls, whole', [((1., 1.0001), True), ((1e-3, 1.), False)])
def test_an_explicit_subnet_runs_tiled_or_whole_whichever_is_faster(calls, whole):
    net, lq = tiny_net(), image()
    sr, report = engine(net, table(net, [calls] * 4, pixels=(225, 3072)), subnet=1, max_batch_pixels=225).run(lq)
    assert report.whole_image == whole and report.histogram[1] == report.num_patches
    assert report.plan.reason == f"subnet: {'whole image' if whole else 'tiled'} predicted faster"
    with torch.no_grad():
        if whole:
            torch.testing.assert_close(sr, net(lq, subnet=1), rtol=0, atol=1e-5)


def test_a_table_of_another_network_is_refused():
    net = tiny_net()
    other = build_network({'type': 'WBSRResNet', 'num_feat': 16, 'num_block': 2, 'widths': [16], 'depths': [2]})
    with pytest.raises(ValueError, match='cost_table holds 1 subnets, the network 4'):
        DynamicInferenceEngine(net, cost_table=linear(other, [1.]))
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
    measured = measure_cost_table(net, 'cpu', sides=(8, 16))
    assert all(s > 0 and math.isfinite(s) for row in measured.call_s for s in row) and measured.pixels == (64, 256)
    assert measured.num_subnets == 4 and measured.tiling_pixel_s > 0 and measured.analysis_seconds(8, 8) > 0
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


def test_a_whole_image_predicted_not_to_fit_in_memory_is_never_chosen():
    net, lq = tiny_net(), image()
    cost = linear(net, [1e-4] * 4, tiling=1.)  # tiles are dear: the whole image through the full network wins
    cost = CostTable(cost.key, cost.pixels, cost.call_s, cost.analysis_s, cost.tiling_pixel_s, (1., 2., 3., 4.))
    assert cost.whole_peak_bytes(3, 48, 64) == 4. * 48 * 64
    fits = engine(net, cost)
    fits.timer.memory_limit = lambda: 4 * 48 * 64
    assert fits.plan(lq).whole_image_subnet == 3
    tight = engine(net, cost)
    tight.timer.memory_limit = lambda: 4 * 48 * 64 - 1  # the full network on the whole image does not fit
    plan = tight.plan(lq)
    assert plan.whole_image_subnet is None and plan.reason.startswith('full network tiled')
    assert engine(net, cost).timer.memory_limit() is None  # on CPU: no limit


# -- every rule just below and just above its threshold ---------------------------------------------------------
RATES = [1e-6, 2e-6, 3e-6, 1e-4]  # the full network is dear per pixel: the plan saves time, by a margin we set


@pytest.mark.parametrize('side, runs_plan', [(-1, True), (+1, False)])
def test_never_slower_at_its_boundary(side, runs_plan):
    """A plan predicted a hair slower than the fastest plain execution does not run; a hair faster does."""
    net, lq = tiny_net(), image()
    probe = engine(net, linear(net, RATES)).plan(lq)
    plain = 48 * 64 * RATES[-1]  # the full network on the whole image (tiled costs more: overlaps)
    margin = plain - probe.predicted_s  # the analysis intercept that makes the plan cost exactly the plain network
    assert margin > 0
    plan = engine(net, linear(net, RATES, analysis=(margin + side * 1e-9, 0.))).plan(lq)
    if runs_plan:
        assert plan.reason == 'plan predicted faster than the plain network' and plan.whole_image_subnet is None
    else:
        assert plan.whole_image_subnet == 3 and plan.reason.startswith('full network on the whole image')


@pytest.mark.parametrize('side, whole', [(-1, False), (+1, True)])
def test_whole_versus_tiled_at_its_boundary(side, whole):
    """The fastest plain execution is the whole image unless tiling is predicted faster (a tie goes to whole)."""
    net, lq = tiny_net(), image()
    probe = engine(net, linear(net, [1.] * 4, pixels=(225, 3072)), max_batch_pixels=225)
    geometry = probe.planner.analyse(lq, content=False)
    tiled_forwards = geometry.num_patches * 0.01  # one 15 x 15 patch per call at 0.01 s
    # whole image: 48 x 64 = 3072 pixels at 1 s per call; tiling cost per LR pixel chosen around the boundary
    tiling = (1. - tiled_forwards) / (geometry.num_patches * 225) * (1 + side * 1e-9)
    cost = table(net, [(0.01, 1.)] * 4, tiling=tiling, pixels=(225, 3072))
    seconds, is_whole = engine(net, cost, max_batch_pixels=225).timer.fastest_plain(geometry, 4)
    assert is_whole is whole and seconds == pytest.approx(1.)


@pytest.mark.parametrize('side, fits', [(-1, False), (+1, True)])
def test_a_latency_fit_at_its_boundary(side, fits):
    """A plan whose predicted time is a hair within the latency budget is taken; a hair beyond is not."""
    net, lq = tiny_net(), image()
    cost = linear(net, RATES)
    plain = 48 * 64 * RATES[-1]
    whole_cheapest = 48 * 64 * RATES[0] + 0.  # subnet 0 on the whole image (its analysis costs nothing here)
    fraction = whole_cheapest / plain * (1 + side * 1e-9)
    plan = engine(net, cost, budget=fraction, budget_unit='time').plan(lq)
    if fits:
        assert 'best expected quality predicted within' in plan.reason
    else:
        assert 'no plan predicted within' in plan.reason


def test_each_subnet_used_costs_its_switch_once_per_plan():
    """Switching between compiled models costs ``switch_s`` per subnet a plan uses, never per patch."""
    net = tiny_net()
    cost = table(net, [(1., 2.), (1., 3.), (2., 4.), (4., 8.)])
    switching = CostTable(cost.key, cost.pixels, cost.call_s, switch_s=0.25)
    for histogram in ([3, 0, 0, 5], [0, 1, 0, 0], [2, 2, 2, 2]):
        used = sum(1 for n in histogram if n)
        assert switching.forward_seconds(histogram, 16, [2] * 4) == pytest.approx(
            cost.forward_seconds(histogram, 16, [2] * 4) + 0.25 * used)
    assert CostTable.from_json(switching.to_json()).switch_s == 0.25


@pytest.mark.parametrize('switch, runs_plan', [(-1, True), (+1, False)])
def test_never_slower_counts_the_switches(switch, runs_plan):
    """A plan that would beat the plain network but for the cost of switching between its subnets does not run."""
    net, lq = tiny_net(), image()
    probe = engine(net, linear(net, RATES)).plan(lq)
    used = sum(1 for n in probe.histogram if n)
    assert used > 1 and probe.reason == 'plan predicted faster than the plain network'
    margin = 48 * 64 * RATES[-1] - probe.predicted_s
    cost = linear(net, RATES)
    cost = CostTable(cost.key, cost.pixels, cost.call_s, switch_s=margin / used * (1 + switch * 1e-6))
    plan = engine(net, cost).plan(lq)
    assert (plan.whole_image_subnet is None) is runs_plan


def test_predictions_are_computed_once_per_image_size_and_histogram():
    from wbsr_runtime.time_rules import PlanTimer

    net = tiny_net()
    cost = linear(net, [1e-6, 2e-6, 3e-6, 4e-6], analysis=(1e-3, 1e-8), tiling=1e-7)
    asked = []
    timer = PlanTimer(cost, lambda side: asked.append(side) or [4, 4, 4, 4])
    # 6 patches of 16 through subnet 1 (calls of 4 and 2 patches) and 2 through subnet 3, on a 40 x 56 image
    expected = 2e-6 * 16 * 16 * 6 + 4e-6 * 16 * 16 * 2 + 1e-7 * 8 * 16 * 16 + 1e-3 + 1e-8 * 40 * 56
    for _ in range(3):
        assert timer.tiled([0, 6, 0, 2], 16, 40, 56) == pytest.approx(expected, rel=1e-12)
        assert timer.whole(2, 40, 56, analysed=False) == pytest.approx(3e-6 * 40 * 56, rel=1e-12)
    assert asked == [16]
    assert timer.tiled([0, 6, 0, 2], 16, 40, 56, analysed=False) == pytest.approx(expected - 1e-3 - 1e-8 * 40 * 56)


def test_an_image_that_is_one_patch_is_predicted_as_it_runs_whole():
    """The engine runs an image that is one patch through its subnet on the whole image (no tiling, no stitching):
    its plans are predicted so, and a cheap subnet that tiling's costs would have made slower runs."""
    net = tiny_net()
    cost = linear(net, RATES, analysis=(1e-4, 0.), tiling=1.)  # tiling dearer than the full network
    lq = torch.full((1, 3, 16, 16), 0.5)  # flat: the cheapest subnet
    plan = engine(net, cost).plan(lq)
    assert plan.patch_size == 16 and plan.histogram == [1, 0, 0, 0]
    assert plan.reason == 'plan predicted faster than the plain network'
    assert plan.predicted_s == pytest.approx(16 * 16 * RATES[0] + 1e-4, rel=1e-12)
    report = engine(net, cost).run(lq)[1]
    assert report.histogram == [1, 0, 0, 0] and report.flops == net.flops(16, 16, subnet=0)


def test_a_subnet_measured_slower_than_one_that_computes_more_gets_that_ones_time():
    """Protects the cost table against noise where it decides most: by hand, on w8d1, w8d2, w16d1, w16d2."""
    from wbsr_plugin.inference.cost_model import dominance_clamped

    net = tiny_net()
    assert [s.name for s in net.subnets] == ['w8d1', 'w8d2', 'w16d1', 'w16d2']
    measured = ((1., 10.), (5., 3.), (2., 4.), (4., 8.))
    # w8d1: every subnet computes at least as much; w8d2: itself and w16d2; w16d1: itself and w16d2
    assert dominance_clamped(measured, net.subnets) == ((1., 3.), (4., 3.), (2., 4.), (4., 8.))
