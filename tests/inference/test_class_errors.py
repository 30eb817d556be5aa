"""Class errors with their counts: the expected loss of a plan, the bound the planner uses, and `calibrate`."""
import math

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from wbsr_plugin import calibrate
from wbsr_plugin.inference.checkpoint import engine_options, load_supernet
from wbsr_runtime.class_errors import MARGIN, UNCOUNTED_MARGIN, Z_BOUND, ClassErrors
from wbsr_runtime.class_thresholds import ClassThresholds
from wbsr_runtime.expected_quality import loss_db, tiled_error, whole_error

HR = f'{FIXTURES}/hr'


def test_expected_loss_of_a_hand_made_table_is_the_numpy_value():
    table = np.array([[4., 3., 2.], [9., 6., 5.], [20., 12., 10.]])  # 3 classes x 3 subnets (the last: full)
    histogram = [50, 30, 20]
    levels = [0, 1, 2]  # class 1 -> subnet 0, class 2 -> subnet 1, class 3 -> the full network
    steps = [(2, 1, 2, 10)]  # 10 patches of class 2 moved from subnet 1 to subnet 2
    plan = 50 * 4. + 20 * 6. + 10 * 5. + 20 * 10.
    full = 50 * 2. + 30 * 5. + 20 * 10.
    assert tiled_error(histogram, levels, steps, table.tolist()) == pytest.approx(plan)
    assert whole_error(histogram, table.tolist(), 2) == pytest.approx(full)
    assert loss_db(plan, full) == pytest.approx(10 * np.log10(570. / 450.))


def test_the_planning_table_is_the_bound_of_the_module_docstring():
    means = np.array([[4., 3., 2.], [9., 6., 5.]])
    sd = np.array([[0.5, 0.3, 0.], [2., 1., 0.]])
    errors = ClassErrors(tuple(map(tuple, means)), counts=(25, 4), images=(3, 2), excess_sd=tuple(map(tuple, sd)))
    full = means[:, -1:]
    expected = full + (means - full) * MARGIN + Z_BOUND * sd * full / np.sqrt([[25], [4]])
    expected[:, -1] = full[:, 0]
    assert np.allclose(errors.planning_table(), expected)
    assert errors.thin_classes() == [1, 2]
    old = ClassErrors(tuple(map(tuple, means)))  # stored without counts: the wider margin
    assert np.allclose(old.planning_table(), full + (means - full) * UNCOUNTED_MARGIN)
    assert 'without counts' in old.reliability()


def test_an_images_own_spread_adds_z_times_the_root_of_its_patches_variances():
    table = [[4., 3., 2.], [9., 6., 5.], [20., 12., 10.]]
    spreads = [[1., 0.5, 0.], [3., 2., 0.], [4., 1., 0.]]
    histogram, levels, steps = [50, 30, 20], [0, 1, 2], [(2, 1, 2, 10)]
    plan = 50 * 4. + 20 * 6. + 10 * 5. + 20 * 10.
    variance = 50 * 1.**2 + 20 * 2.**2  # the full network's own patches add nothing
    assert tiled_error(histogram, levels, steps, table, spreads) == pytest.approx(plan + 1.2816 * math.sqrt(variance))
    whole = 50 * 3. + 30 * 6. + 20 * 12.
    assert whole_error(histogram, table, 1, spreads) == pytest.approx(
        whole + 1.2816 * math.sqrt(50 * 0.25 + 30 * 4. + 20 * 1.))
    assert whole_error(histogram, table, 2, spreads) == whole_error(histogram, table, 2)
    # the same mix of patches, 100 times over: the spread's share of the bound falls tenfold
    small = tiled_error(histogram, levels, steps, table, spreads) - plan
    large = tiled_error([100 * n for n in histogram], levels, [(2, 1, 2, 1000)], table, spreads) - 100 * plan
    assert large / (100 * plan) == pytest.approx(small / plan / 10)


def test_the_spread_table_is_the_relative_spread_times_the_full_networks_error():
    means = ((4., 3., 2.), (9., 6., 5.), (1., 1., 1.))
    sd = ((0.5, 0.3, 0.), (2., 1., 0.), (7., 7., 0.))
    errors = ClassErrors(means, counts=(25, 4, 1), images=(3, 2, 1), excess_sd=sd)
    # a class of one patch has no spread of its own: the widest measured one
    assert np.allclose(errors.spread_table(), [[1., 0.6, 0.], [10., 5., 0.], [2. * 1., 1. * 1., 0.]])
    assert ClassErrors(means).spread_table() is None  # no counts, no spreads
    thresholds = ClassThresholds.from_meta({'thresholds': [1., 2.], 'num_classes': 3, **errors.meta_entries()})
    assert np.allclose(thresholds.class_spread_lists(), errors.spread_table())
    assert ClassThresholds.of(thresholds, class_errors=[list(r) for r in means]).class_spreads is None
    plain = thresholds.without_class_errors()  # Eq. 16's thresholds: neither errors nor spreads
    assert ClassThresholds.of(plain).class_errors is None and ClassThresholds.of(plain).class_spreads is None
    with pytest.raises(ValueError, match='class_spreads need class_errors'):
        ClassThresholds.of(plain, class_spreads=errors.spread_table())


def test_a_synthetic_calibration_recovers_the_true_ratios_within_its_bound():
    rng = np.random.default_rng(0)
    true_ratio = np.array([[1.6, 1.3, 1.], [1.25, 1.1, 1.], [1.1, 1.04, 1.]])  # E[e_m] / E[e_full] per class
    full_level = np.array([1e-4, 1e-3, 5e-3])
    covered, trials = 0, 200
    for _ in range(trials):
        n = rng.integers(20, 60, size=3)
        classes = np.repeat([1, 2, 3], n)
        e_full = full_level[classes - 1] * rng.lognormal(0, 0.5, len(classes)) / math.exp(0.125)
        # each patch's excess is proportional to its full error, with noise of mean 1: E[e_m] = ratio E[e_full]
        noise = rng.gamma(4., 0.25, (len(classes), 3))
        errors = e_full[:, None] * (1 + (true_ratio[classes - 1] - 1) * noise)
        stats = ClassErrors.from_samples(classes, errors, rng.integers(0, 5, len(classes)), 3)
        assert stats.counts == tuple(int(c) for c in n)
        bound = np.array(stats.planning_table(margin=1.))
        true_mean = true_ratio * full_level[:, None]
        # the bound on the excess over the full network holds for the true excess of the measured full error
        true_excess = (true_ratio - 1) * np.array(stats.means)[:, -1:]
        covered += np.all((bound - np.array(stats.means)[:, -1:] >= true_excess - 1e-15)[:, :-1])
        assert np.allclose(np.array(stats.means), true_mean, rtol=0.6)
    assert covered / trials >= 0.8  # one-sided 95 % per entry, six entries at once


def test_an_empty_class_takes_its_nearest_class_and_no_count():
    classes = np.array([1, 1, 3])
    errors = np.array([[2., 1.], [4., 3.], [9., 5.]])
    stats = ClassErrors.from_samples(classes, errors, np.array([0, 1, 1]), 4)
    assert stats.counts == (2, 0, 1, 0) and stats.images == (2, 0, 1, 0)
    assert stats.means[0] == (3., 2.) and stats.means[1] == (3., 2.) and stats.means[3] == (9., 5.)
    with pytest.raises(ValueError, match='no calibration patch'):
        ClassErrors.from_samples(np.array([], dtype=int), np.zeros((0, 2)), np.array([]), 3)


def test_checkpoints_round_trip_the_counts_and_plan_by_the_bound():
    meta = {'thresholds': [1., 2.], 'class_errors': [[3., 2.], [5., 4.], [9., 6.]],
            'calibration': {'counts': [40, 40, 2], 'images': [4, 4, 1], 'excess_sd': [[0.2, 0.], [0.1, 0.], [0., 0.]],
                            'data': 'photos'}}
    stats = ClassErrors.from_meta(meta)
    assert stats.counted and stats.source == {'data': 'photos'} and stats.meta_entries()['calibration']['counts'] == [
        40, 40, 2]
    table = ClassThresholds.from_meta(meta).class_error_lists()
    assert table == stats.planning_table()
    assert [row[-1] for row in table] == [2., 4., 6.] and all(b > m for b, m in zip(table, meta['class_errors']))
    assert 'thin classes (< 30 patches): 3' in stats.reliability(patch_size=32)


def test_calibrate_writes_a_new_checkpoint_and_never_overwrites(tiny_checkpoint, tmp_path, capsys):
    out = str(tmp_path / 'calibrated.pth')
    assert calibrate.main(['--model', tiny_checkpoint, '--hr', HR, '-o', out, '--patches', '40']) == 0
    captured = capsys.readouterr()
    assert 'measured 40/40 patches' in captured.err and 'reading astronaut.png' in captured.err
    net, meta = load_supernet(out)
    _, before = load_supernet(tiny_checkpoint)
    assert 'class_errors' not in before  # the input is left as it was
    stats = ClassErrors.from_meta(meta)
    assert sum(stats.counts) == 40 and meta['calibration']['data'] == HR and meta['calibration']['data_images'] == 4
    assert meta['calibration']['by'] == 'calibrate' and meta['thresholds'] == before['thresholds']
    table = engine_options(meta)['thresholds'].class_error_lists()
    stored = meta['calibration']  # the full network with context, plus every subnet's deviation from it (or more)
    for row, context, deviation in zip(table, stored['full_in_context'], stored['deviation']):
        assert row[-1] == pytest.approx(context + deviation[-1])
        assert all(x >= context + d - 1e-12 for x, d in zip(row[:-1], deviation))
    assert len(stored['correlation']) == len(net.subnets) and all(0 <= c <= 1 for c in stored['correlation'])
    # never overwrites: one line, exit status 2, the file unchanged
    written = torch.load(out, weights_only=False)['wbsr']['calibration']['date']
    with pytest.raises(SystemExit) as info:
        calibrate.main(['--model', tiny_checkpoint, '--hr', HR, '-o', out])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and 'exists' in err
    assert torch.load(out, weights_only=False)['wbsr']['calibration']['date'] == written


@pytest.mark.parametrize('args, message', [
    (['--hr', '/nonexistent', '-o', 'x.pth'], '--hr'),
    (['--hr', HR, '-o', 'x.png'], '-o/--output'),
    (['--hr', HR, '-o', 'x.pth', '--patches', '0'], '--patches'),
])
def test_calibrate_bad_input_is_one_line(tiny_checkpoint, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        calibrate.main(['--model', tiny_checkpoint, *args])
    err = capsys.readouterr().err
    assert info.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err


def test_the_demo_calibrates_on_photos_neither_training_nor_validation_uses(tmp_path):
    from wbsr_plugin.demo import demo_options, prepare_demo_data
    from wbsr_plugin.models.wbsr_options import parse_wbsr_options
    folders = prepare_demo_data(str(tmp_path))
    train, _ = demo_options(folders, 'prior.pth', 10)
    wbsr = parse_wbsr_options(train['wbsr'])
    calibration = wbsr['calibration_set']['dataroot_gt']
    names = {split: sorted(p.name for p in (tmp_path / split / 'hr').iterdir()) for split in folders}
    assert calibration == folders['calibration'][0] and len(names['calibration']) >= 3
    assert not set(names['calibration']) & (set(names['train']) | set(names['val']))
    assert train['datasets']['train']['dataroot_gt'] != calibration != train['datasets']['val']['dataroot_gt']


def test_counts_that_do_not_match_the_class_errors_are_one_error():
    meta = {'thresholds': [1.], 'class_errors': [[3., 2.], [5., 4.]],
            'calibration': {'counts': [4], 'excess_sd': [[0.1, 0.], [0.1, 0.]]}}
    with pytest.raises(ValueError, match='calibration: counts and excess_sd must match class_errors'):
        ClassThresholds.from_meta(meta)
