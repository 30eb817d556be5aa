"""HES building blocks: options, thresholds, classes and the Eq. 8 class probabilities."""
import numpy as np
import pytest
import torch

from wbsr_plugin.data.difficulty import difficulty_classes, quantile_thresholds
from wbsr_plugin.data.hes import (HES_OPTIONS, ClassLevelDrawer, class_histogram, class_probabilities, lq_patch_size,
                                  parse_hes_options, switch_iteration)

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
