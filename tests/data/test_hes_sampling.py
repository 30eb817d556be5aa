"""HES building blocks: options, thresholds, classes and the Eq. 8 class probabilities."""
import numpy as np
import pytest
import torch

from wbsr_plugin.data.difficulty import difficulty_classes, quantile_thresholds
from wbsr_plugin.data.hes import (
    HES_OPTIONS,
    ClassLevelDrawer,
    class_histogram,
    class_probabilities,
    lq_patch_size,
    parse_hes_options,
    switch_iteration,
)

# 0.999 quantiles of the chi-square distribution, by degrees of freedom
CHI2_999 = {4: 18.47, 9: 27.88}


def chi_square(counts, probabilities):
    expected = probabilities * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, 'a class of probability 0 was drawn'
    return float(((counts[keep] - expected[keep])**2 / expected[keep]).sum())


def test_defaults():
    hes = parse_hes_options({'gt_size': 128})
    assert hes == {key: default for key, (default, _) in HES_OPTIONS.items()}
    assert hes['hes_num_classes'] == 10 and hes['hes_delta'] == 0.9 and hes['hes_switch_ratio'] == 0.7


@pytest.mark.parametrize('opt, key', [
    ({'hes_num_class': 10}, 'hes_num_class'),
    ({'hes_num_classes': 1}, 'hes_num_classes'),
    ({'hes_num_classes': 2.5}, 'hes_num_classes'),
    ({'hes_num_classes': True}, 'hes_num_classes'),
    ({'hes_delta': 0}, 'hes_delta'),
    ({'hes_delta': 1.5}, 'hes_delta'),
    ({'hes_delta': '0.9'}, 'hes_delta'),
    ({'hes_enabled': 'yes'}, 'hes_enabled'),
    ({'hes_stride': 0}, 'hes_stride'),
    ({'hes_switch_ratio': 1.2}, 'hes_switch_ratio'),
    ({'hes_switch_iter': -1}, 'hes_switch_iter'),
    ({'hes_switch_iter': 5, 'hes_switch_ratio': 0.5}, 'hes_switch_iter'),
    ({'hes_index_path': 3}, 'hes_index_path'),
])
def test_bad_options_name_the_key(opt, key):
    with pytest.raises(ValueError, match=key):
        parse_hes_options(opt)


def test_unknown_option_lists_the_allowed_ones():
    with pytest.raises(ValueError, match='hes_num_classes'):
        parse_hes_options({'hes_classes': 4})


def test_switch_iteration():
    hes = parse_hes_options({})
    assert switch_iteration(hes, 1000) == 700
    assert switch_iteration(hes, 0) is None
    assert switch_iteration(parse_hes_options({'hes_switch_iter': 12}), 0) == 12
    assert switch_iteration(parse_hes_options({'hes_switch_ratio': 0.0}), 0) == 0


def test_lq_patch_size():
    assert lq_patch_size(128, 4) == 32
    with pytest.raises(ValueError, match='multiple of scale'):
        lq_patch_size(130, 4)


def test_thresholds_are_quantiles_and_classes_equal():
    scores = np.random.default_rng(0).permutation(100).astype(np.float32)
    thresholds = quantile_thresholds(scores, 10)
    assert thresholds == [10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert list(class_histogram(scores, thresholds, 10)) == [10] * 10
    assert difficulty_classes(np.array([-1.0, 9.99, 10.0, 95.0]), thresholds).tolist() == [0, 0, 1, 9]
    as_tensor = difficulty_classes(torch.tensor([-1.0, 9.99, 10.0, 95.0]), thresholds)
    assert as_tensor.tolist() == [0, 0, 1, 9]


def test_eq8_equal_classes_tilt_by_delta():
    probabilities = class_probabilities([50] * 10, 0.9)
    assert probabilities.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(probabilities[1:] / probabilities[:-1], 1 / 0.9)
    np.testing.assert_allclose(class_probabilities([50] * 10, 1.0), 0.1)


def test_eq8_formula_and_empty_classes():
    sizes = np.array([10, 0, 40, 50])
    delta = 0.8
    probabilities = class_probabilities(sizes, delta)
    inv_sum = 1 / 10 + 1 / 40 + 1 / 50
    raw = np.array([inv_sum / (10 * delta), 0, inv_sum / (40 * delta**3), inv_sum / (50 * delta**4)])
    np.testing.assert_allclose(probabilities, raw / raw.sum())
    assert probabilities[1] == 0


# Eq. 8 by hand for class sizes (300, 120, 0, 60, 20) and delta 0.7: 1 / (N_k 0.7^k), normalised
EQ8_BY_HAND = np.array([0.012252, 0.043755, 0.0, 0.178593, 0.7654])


def test_eq8_is_inversely_proportional_to_class_size():
    """Protects Eq. 8's 1 / N_k: rare classes are drawn more, by exactly the ratio of the class sizes."""
    np.testing.assert_allclose(class_probabilities([300, 120, 0, 60, 20], 0.7), EQ8_BY_HAND, atol=1e-6)
    np.testing.assert_allclose(class_probabilities([10, 0, 40, 50], 0.8), [0.561404, 0, 0.219298, 0.219298],
                               atol=1e-6)


def test_drawn_class_frequencies_match_eq8():
    sizes = [300, 120, 0, 60, 20]
    members, start = [], 0
    for size in sizes:
        members.append(np.arange(start, start + size))
        start += size
    drawer = ClassLevelDrawer(members, class_probabilities(sizes, 0.7), seed=1, shard=0, num_shards=1)
    draws = [drawer.draw() for _ in range(20000)]
    counts = np.bincount([cls for cls, _ in draws], minlength=len(sizes))
    assert chi_square(counts, EQ8_BY_HAND) < CHI2_999[4]
    for cls, candidate in draws[:500]:
        assert candidate in members[cls]
    # deliberately wrong probabilities are detected by the same bound
    assert chi_square(counts, class_probabilities(sizes, 0.9)) > CHI2_999[4]


def test_drawer_is_without_replacement_within_a_class_and_deterministic():
    members = [np.arange(0, 7), np.arange(7, 20)]
    probabilities = np.array([1.0, 0.0])
    drawer = ClassLevelDrawer(members, probabilities, seed=3, shard=0, num_shards=1)
    first = [drawer.draw()[1] for _ in range(7)]
    assert sorted(first) == list(range(7))
    again = ClassLevelDrawer(members, probabilities, seed=3, shard=0, num_shards=1)
    assert [again.draw()[1] for _ in range(7)] == first
    other = ClassLevelDrawer(members, probabilities, seed=4, shard=0, num_shards=1)
    assert [other.draw()[1] for _ in range(7)] != first


def test_shards_hold_disjoint_candidates():
    members = [np.arange(0, 40), np.arange(40, 100)]
    probabilities = class_probabilities([40, 60], 0.9)
    seen = []
    for shard in range(4):
        drawer = ClassLevelDrawer(members, probabilities, seed=0, shard=shard, num_shards=4)
        seen.append({drawer.draw()[1] for _ in range(200)})
    for a in range(4):
        for b in range(a + 1, 4):
            assert not seen[a] & seen[b]
    assert set().union(*seen) == set(range(100))


# ---------------------------------------------------------------------------------------------- option messages

ALLOWED_KEYS = ("['hes_delta', 'hes_enabled', 'hes_index_path', 'hes_num_classes', 'hes_stride', 'hes_switch_iter', "
                "'hes_switch_ratio']")


@pytest.mark.parametrize('opt, message', [
    ({'hes_classes': 4}, f"Unknown HES option 'hes_classes'; allowed: {ALLOWED_KEYS}."),
    ({'hes_enabled': 'yes'}, "HES option 'hes_enabled' must be true or false, got 'yes'."),
    ({'hes_num_classes': 1}, "HES option 'hes_num_classes' must be an integer >= 2, got 1."),
    ({'hes_num_classes': True}, "HES option 'hes_num_classes' must be an integer >= 2, got True."),
    ({'hes_delta': 0}, "HES option 'hes_delta' must be a number in (0, 1], got 0."),
    ({'hes_delta': 1.0000001}, "HES option 'hes_delta' must be a number in (0, 1], got 1.0000001."),
    ({'hes_delta': True}, "HES option 'hes_delta' must be a number in (0, 1], got True."),
    ({'hes_stride': 0}, "HES option 'hes_stride' must be null or an integer >= 1, got 0."),
    ({'hes_stride': 2.0}, "HES option 'hes_stride' must be null or an integer >= 1, got 2.0."),
    ({'hes_switch_ratio': -0.1}, "HES option 'hes_switch_ratio' must be a number in [0, 1], got -0.1."),
    ({'hes_switch_ratio': 1.2}, "HES option 'hes_switch_ratio' must be a number in [0, 1], got 1.2."),
    ({'hes_switch_iter': -1}, "HES option 'hes_switch_iter' must be null or an integer >= 0, got -1."),
    ({'hes_switch_iter': 5, 'hes_switch_ratio': 0.7},
     "HES options 'hes_switch_iter' and 'hes_switch_ratio' exclude each other; set one."),
    ({'hes_index_path': 3}, "HES option 'hes_index_path' must be null or a path string, got 3."),
])
def test_bad_option_messages_name_the_key_the_allowed_values_and_the_value(opt, message):
    """Protects the user-facing text of every option error (key, what is allowed, the value given)."""
    with pytest.raises(ValueError) as info:
        parse_hes_options(opt)
    assert str(info.value) == message


@pytest.mark.parametrize('key, value, parsed', [
    ('hes_num_classes', 2, 2),
    ('hes_num_classes', np.int64(3), 3),
    ('hes_delta', 1, 1.0),
    ('hes_delta', np.float32(0.5), 0.5),
    ('hes_delta', 1e-9, 1e-9),
    ('hes_stride', 1, 1),
    ('hes_stride', np.int32(3), 3),
    ('hes_switch_ratio', 0, 0.0),
    ('hes_switch_ratio', 1, 1.0),
    ('hes_switch_iter', 0, 0),
    ('hes_switch_iter', np.int64(7), 7),
    ('hes_index_path', 'index.npz', 'index.npz'),
    ('hes_enabled', False, False),
    ('hes_enabled', np.bool_(True), True),
])
def test_option_bounds_are_inclusive_and_numpy_scalars_are_accepted(key, value, parsed):
    """Protects the boundaries of parse_hes_options: the documented closed ends are allowed."""
    hes = parse_hes_options({key: value})
    assert hes[key] == parsed
    if key in ('hes_delta', 'hes_switch_ratio'):
        assert type(hes[key]) is float


def test_lq_patch_size_accepts_scale_one_and_a_patch_of_one_pixel():
    assert lq_patch_size(8, 1) == 8
    assert lq_patch_size(4, 4) == 1
    assert lq_patch_size(np.int64(96), np.int32(3)) == 32


@pytest.mark.parametrize('gt_size, scale', [(128.0, 4), (128, 4.0), (8, 0), (8, -1), (2, 4), (0, 4), (True, 1)])
def test_lq_patch_size_refuses_non_integers_and_non_positive_scales(gt_size, scale):
    with pytest.raises(ValueError) as info:
        lq_patch_size(gt_size, scale)
    assert str(info.value) == f'gt_size ({gt_size!r}) must be a positive multiple of scale ({scale!r}).'


def test_switch_iteration_for_a_one_iteration_run_and_the_ratio_ends():
    assert switch_iteration(parse_hes_options({}), 1) == 1  # round(0.7)
    assert switch_iteration(parse_hes_options({}), -5) is None
    assert switch_iteration(parse_hes_options({}), None) is None
    assert switch_iteration(parse_hes_options({'hes_switch_ratio': 1}), 37) == 37
    assert switch_iteration(parse_hes_options({'hes_switch_ratio': 0.5}), 5) == 2  # round half to even


# ---------------------------------------------------------------------------------------------- Eq. 8 edge cases


@pytest.mark.parametrize('delta', [0, 0.0, -0.5, 1.5, 2])
def test_eq8_refuses_delta_outside_0_1(delta):
    with pytest.raises(ValueError) as info:
        class_probabilities([5, 5], delta)
    assert str(info.value) == f'delta must be in (0, 1], got {delta!r}.'


@pytest.mark.parametrize('sizes', [[0, 0, 0], [0]])
def test_eq8_refuses_all_empty_classes(sizes):
    with pytest.raises(ValueError) as info:
        class_probabilities(sizes, 0.9)
    assert str(info.value) == 'every class is empty.'


def test_eq8_single_candidate_classes_count():
    """A class of one candidate is not empty: it gets the largest weight."""
    np.testing.assert_allclose(class_probabilities([0, 1, 0], 0.9), [0, 1, 0])
    # delta 1: weights 1/N_k -> 1/1 and 1/2, normalised
    np.testing.assert_allclose(class_probabilities([1, 2], 1.0), [2 / 3, 1 / 3])
    # delta 0.5: 1/(1 * 0.5) = 2 and 1/(2 * 0.25) = 2
    np.testing.assert_allclose(class_probabilities([1, 2], 0.5), [0.5, 0.5])


def test_class_histogram_keeps_empty_top_classes():
    assert class_histogram(np.array([0.0, 1.0, 4.9]), [5.0, 10.0], 3).tolist() == [3, 0, 0]
    assert class_histogram(np.array([5.0, 12.0]), [5.0, 10.0, 20.0], 4).tolist() == [0, 1, 1, 0]


# ---------------------------------------------------------------------------------------------- drawer


def test_drawer_reshuffles_a_used_up_class_and_keeps_drawing_without_replacement():
    members = [np.arange(10, 17)]
    drawer = ClassLevelDrawer(members, np.array([1.0]), seed=0, shard=0, num_shards=1)
    rounds = [[drawer.draw() for _ in range(7)] for _ in range(4)]
    for draws in rounds:
        assert all(cls == 0 for cls, _ in draws)
        assert sorted(c for _, c in draws) == list(range(10, 17))
    assert len({tuple(c for _, c in draws) for draws in rounds}) > 1, 'every round in the same order'


def test_drawer_shard_with_an_empty_stripe_draws_from_the_whole_class():
    """A class with fewer candidates than shards: every shard still draws from it (the documented exception)."""
    members = [np.array([5, 6]), np.arange(100, 140)]
    probabilities = np.array([0.5, 0.5])
    for shard in range(4):
        drawer = ClassLevelDrawer(members, probabilities, seed=1, shard=shard, num_shards=4)
        draws = [drawer.draw() for _ in range(200)]
        small = {c for cls, c in draws if cls == 0}
        assert small == ({5, 6} if shard >= 2 else {[5, 6][shard]})
        assert {c for cls, c in draws if cls == 1} == set(range(100 + shard, 140, 4))


def test_drawer_seed_is_taken_modulo_2_to_the_64():
    members = [np.arange(50)]
    first = ClassLevelDrawer(members, np.array([1.0]), seed=-1, shard=0, num_shards=1)
    second = ClassLevelDrawer(members, np.array([1.0]), seed=(1 << 64) - 1, shard=0, num_shards=1)
    third = ClassLevelDrawer(members, np.array([1.0]), seed=(1 << 64) + 5, shard=0, num_shards=1)
    fourth = ClassLevelDrawer(members, np.array([1.0]), seed=5, shard=0, num_shards=1)
    assert [first.draw() for _ in range(20)] == [second.draw() for _ in range(20)]
    assert [third.draw() for _ in range(20)] == [fourth.draw() for _ in range(20)]


def test_drawer_never_draws_a_probability_0_class_when_the_probabilities_fall_short_of_1():
    """The rounding guard: a draw past the last non-zero class goes to the nearest non-zero class below it."""
    members = [np.arange(0, 5), np.arange(5, 10), np.arange(10, 15), np.arange(15, 20), np.arange(20, 25)]
    # sums to 0.5: the top-end shortfall (0.5) is exaggerated so that draws hit it
    probabilities = np.array([0.0, 0.2, 0.2, 0.1, 0.0])
    drawer = ClassLevelDrawer(members, probabilities, seed=2, shard=0, num_shards=1)
    draws = [drawer.draw() for _ in range(4000)]
    for cls, candidate in draws:
        assert candidate in members[cls]
    frequencies = np.bincount([cls for cls, _ in draws], minlength=5) / len(draws)
    # u in [0, .2): class 1, [.2, .4): class 2, [.4, 1): class 3 (its own .1 plus the shortfall)
    np.testing.assert_allclose(frequencies, [0, 0.2, 0.2, 0.6, 0], atol=0.03)
