"""Reference checks of the patch difficulty: hand values and plain-numpy loops, independent of the vectorised code.

Protects the luma operator (BT.601 weights, channel order, x255, single-channel inputs), the summed-area-table
gradient vectors against a loop over patches, the grid of stride p // 2, Eq. 7's quantile thresholds (numpy and
torch), the class of a score on a threshold, the threshold table per patch size and its log-linear interpolation.
"""
import numpy as np
import pytest
import torch

from wbsr_plugin.data.difficulty import (
    bgr_image_to_luma,
    difficulty_classes,
    gradient_vectors,
    grid_difficulty,
    grid_positions,
    quantile_threshold_tensor,
    quantile_thresholds,
    rgb_to_luma,
    threshold_table,
)
from wbsr_runtime.class_thresholds import thresholds_at


def naive_vector(luma, size, top, left):
    """(mean, population std) of |dx| then of |dy| inside one patch, by plain numpy."""
    patch = np.asarray(luma, dtype=np.float64)[top:top + size, left:left + size]
    grad_x = np.abs(np.diff(patch, axis=1))
    grad_y = np.abs(np.diff(patch, axis=0))
    return [grad_x.mean(), grad_x.std(), grad_y.mean(), grad_y.std()]


def test_rgb_luma_uses_bt601_weights_in_rgb_order_times_255():
    rgb = torch.zeros(2, 3, 1, 2, dtype=torch.float64)
    rgb[0, :, 0, 0] = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)  # 255 * (0.0598 + 0.2348 + 0.0684) = 92.565
    rgb[1, :, 0, 1] = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64)  # 255 * (0.1495 + 0 + 0.114) = 67.1925
    rgb[1, :, 0, 0] = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)  # green alone: 255 * 0.587 = 149.685
    expected = torch.tensor([[[92.565, 0.0]], [[149.685, 67.1925]]], dtype=torch.float64)
    torch.testing.assert_close(rgb_to_luma(rgb), expected, rtol=0, atol=1e-9)


def test_single_channel_luma_is_the_channel_times_255():
    gray = torch.tensor([0.2, 0.5, 1.0]).view(1, 1, 1, 3).repeat(2, 1, 2, 1)
    luma = rgb_to_luma(gray)
    assert luma.shape == (2, 2, 3)
    torch.testing.assert_close(luma, torch.tensor([51.0, 127.5, 255.0]).expand(2, 2, 3))


@pytest.mark.parametrize('channels', [2, 4])
def test_rgb_luma_refuses_other_channel_counts(channels):
    with pytest.raises(ValueError, match=rf'expected 1 or 3 channels, got shape \(1, {channels}, 4, 5\)'):
        rgb_to_luma(torch.zeros(1, channels, 4, 5))


def test_bgr_image_luma_reads_channels_in_bgr_order():
    bgr = np.zeros((1, 3, 3), np.float32)  # float32 in, float64 out
    bgr[0, 0] = [0.6, 0.4, 0.2]  # R 0.2, G 0.4, B 0.6 -> 92.565
    bgr[0, 1] = [1.0, 0.0, 0.5]  # R 0.5, G 0, B 1 -> 67.1925
    bgr[0, 2] = [0.0, 1.0, 0.0]  # green alone -> 149.685
    luma = bgr_image_to_luma(bgr)
    assert luma.dtype == torch.float64 and luma.shape == (1, 3)
    np.testing.assert_allclose(luma.numpy(), [[92.565, 67.1925, 149.685]], rtol=1e-6)


def test_bgr_image_luma_of_single_channel_images():
    gray = np.array([[0.2, 0.5], [1.0, 0.0]], np.float32)
    for image in (gray, gray[..., None]):  # H x W and H x W x 1 alike
        luma = bgr_image_to_luma(image)
        assert luma.dtype == torch.float64 and luma.shape == (2, 2)
        np.testing.assert_allclose(luma.numpy(), [[51.0, 127.5], [255.0, 0.0]], rtol=1e-6)


@pytest.mark.parametrize('shape', [(4, 5, 2), (4, 5, 4), (1, 4, 5, 3), (5,)])
def test_bgr_image_luma_refuses_other_shapes(shape):
    with pytest.raises(ValueError, match=rf'expected an H x W or H x W x 1/3 image, got shape \({shape[0]},'):
        bgr_image_to_luma(np.zeros(shape))


def test_gradient_vectors_of_a_batch_match_a_loop_over_patches():
    # a batch of two non-square images; patches flush with the last row and the last column included
    rng = np.random.default_rng(3)
    lumas = rng.uniform(0, 255, size=(2, 19, 23))
    lumas[1] = np.cumsum(rng.normal(size=(19, 23)), axis=0) * 7
    size, tops, lefts = 5, [0, 3, 14], [0, 7, 11, 18]
    vectors = gradient_vectors(torch.from_numpy(lumas), size, tops, lefts).numpy()
    expected = np.array([[[naive_vector(img, size, t, l) for l in lefts] for t in tops] for img in lumas])
    assert vectors.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(vectors, expected, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize('tops,lefts', [([0], [9]), ([9], [0])])
def test_patches_beyond_the_image_are_refused_not_scored_on_padding(tops, lefts):
    # a 4-pixel patch at offset 9 of a 12-pixel side sticks out by one pixel
    with pytest.raises(IndexError):
        gradient_vectors(torch.rand(12, 12, dtype=torch.float64) * 255, 4, tops, lefts)


def test_patch_size_below_two_is_refused():
    with pytest.raises(ValueError, match='patch_size must be at least 2, got 1'):
        gradient_vectors(torch.zeros(6, 6), 1, [0], [0])


def test_grid_positions_when_the_patch_just_fits():
    assert grid_positions(8, 8, 4) == [0]
    assert grid_positions(9, 8, 1) == [0, 1]
    assert grid_positions(13, 8, 2) == [0, 2, 4, 5]


@pytest.mark.parametrize('size,tops,lefts', [
    (4, [0, 2, 4, 6, 8, 9], [0, 2, 4, 6]),  # stride 2 on a 13 x 10 image
    (3, list(range(11)), list(range(8))),  # stride max(1, 3 // 2) = 1
    (6, [0, 3, 6, 7], [0, 3, 4]),  # stride 3
])
def test_grid_difficulty_scores_a_grid_of_stride_half_the_patch(size, tops, lefts):
    luma = np.random.default_rng(size).uniform(0, 255, size=(13, 10))
    scores = grid_difficulty(torch.from_numpy(luma), size).numpy()
    expected = [sum(naive_vector(luma, size, t, l)) for t in tops for l in lefts]  # row-major
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize('num_classes', [0, -2, True, 2.0, '3', None])
def test_num_classes_must_be_a_positive_integer(num_classes):
    for scores in ([1.0, 2.0, 3.0], torch.tensor([1.0, 2.0, 3.0])):
        with pytest.raises(ValueError, match=rf'num_classes must be a positive integer, got {num_classes!r}'):
            quantile_thresholds(scores, num_classes)
        with pytest.raises(ValueError, match='num_classes must be a positive integer'):
            quantile_threshold_tensor(torch.as_tensor(scores), num_classes)


def test_one_class_needs_no_threshold():
    assert quantile_thresholds([3.0, 1.0, 2.0], 1) == []
    assert quantile_thresholds(torch.tensor([3.0, 1.0]), np.int64(1)) == []
    empty = quantile_threshold_tensor(torch.tensor([3.0, 1.0]), 1)
    assert empty.shape == (0,) and empty.dtype == torch.float64


def test_quantile_thresholds_hand_values():
    # sorted: [1, 2, 3, 5, 7, 8, 9]; N = 7 is divisible by neither K
    scores = [7.0, 1.0, 5.0, 3.0, 9.0, 2.0, 8.0]
    assert quantile_thresholds(scores, 3) == [3.0, 7.0]  # s[7 // 3 = 2], s[14 // 3 = 4]
    assert quantile_thresholds(scores, 4) == [2.0, 5.0, 8.0]  # s[1], s[3], s[5]
    assert quantile_thresholds(np.array(scores).reshape(7, 1), 7) == [2.0, 3.0, 5.0, 7.0, 8.0, 9.0]
    tensor = torch.tensor(scores, dtype=torch.float32)
    assert quantile_thresholds(tensor, 4) == [2.0, 5.0, 8.0]
    assert quantile_thresholds(tensor.view(7, 1).requires_grad_(), 3) == [3.0, 7.0]
    thresholds = quantile_threshold_tensor(tensor, 4)
    assert thresholds.dtype == torch.float64 and thresholds.tolist() == [2.0, 5.0, 8.0]
    assert quantile_thresholds([4.5], 3) == [4.5, 4.5]  # a single score is every threshold


def test_quantile_thresholds_of_no_scores_are_refused():
    for scores in ([], np.zeros((0, 3)), torch.zeros(0)):
        with pytest.raises(ValueError, match=r'^cannot compute thresholds of an empty set of scores\.$'):
            quantile_thresholds(scores, 2)
    with pytest.raises(ValueError, match=r'^cannot compute thresholds of an empty set of scores\.$'):
        quantile_threshold_tensor(torch.zeros(0), 2)


def test_a_score_equal_to_a_threshold_goes_up_in_numpy_and_torch():
    thresholds = [0.1, 2.0]  # 0.1 is not a float32 number: the comparison must be done in the scores' dtype
    scores = [0.0999, 0.1, 1.0, 2.0, 2.5]
    expected = [0, 1, 1, 2, 2]
    assert difficulty_classes(np.array(scores), thresholds).tolist() == expected
    assert difficulty_classes(scores, np.array(thresholds)).tolist() == expected
    for dtype in (torch.float64, torch.float32):
        classes = difficulty_classes(torch.tensor(scores, dtype=dtype), thresholds)
        assert classes.dtype == torch.int64 and classes.tolist() == expected


def _naive_grid_scores(luma, size):
    h, w = luma.shape
    stride = max(1, size // 2)
    return [sum(naive_vector(luma, size, t, l)) for t in grid_positions(h, size, stride)
            for l in grid_positions(w, size, stride)]


@pytest.mark.parametrize('second', [(40, 20), (20, 40)])
def test_threshold_table_leaves_out_sizes_larger_than_the_smallest_side(second):
    rng = np.random.default_rng(5)
    big, small = rng.uniform(0, 255, size=(40, 40)), rng.uniform(0, 255, size=second)
    for order in ((big, small), (small, big)):
        table = threshold_table((torch.from_numpy(x) for x in order), 4, patch_sizes=(16, 24, 32))
        assert list(table) == [16]
        # 16 patches of the 40 x 40 image (offsets 0, 8, 16, 24) and 2 x 4 of the other: N = 24, s[6], s[12], s[18]
        scores = np.sort(_naive_grid_scores(big, 16) + _naive_grid_scores(small, 16))
        assert len(scores) == 24
        np.testing.assert_allclose(table[16], scores[[6, 12, 18]], rtol=1e-9)


def test_threshold_table_keeps_a_patch_size_equal_to_the_smallest_side():
    luma = np.random.default_rng(6).uniform(0, 255, size=(32, 48))
    table = threshold_table([torch.from_numpy(luma)], 2, patch_sizes=(16, 32, 64))
    assert sorted(table) == [16, 32]
    # 32 x 32 patches at column offsets 0, 16: the threshold is the larger of the two scores
    expected = max(sum(naive_vector(luma, 32, 0, 0)), sum(naive_vector(luma, 32, 0, 16)))
    assert table[32] == pytest.approx([expected], rel=1e-9)


def test_threshold_table_errors_name_the_cause():
    with pytest.raises(ValueError, match=r'^cannot compute thresholds without images\.$'):
        threshold_table([], 4)
    with pytest.raises(ValueError, match=r'every image side is smaller than the smallest patch size 16\.'):
        threshold_table([torch.zeros(15, 40)], 4, patch_sizes=(32, 16))


def test_thresholds_at_interpolates_linearly_in_log_patch_size():
    table = {64: [3.0, 30.0], 16: [1.0, 10.0], 128: [5.0, 40.0]}
    assert thresholds_at(table, 32) == pytest.approx([2.0, 20.0])  # log2 32 is halfway between 4 and 6
    assert thresholds_at(table, 90.50966799187809) == pytest.approx([4.0, 35.0])  # 2 ** 6.5
    for size, expected in ((8, [1.0, 10.0]), (16, [1.0, 10.0]), (64, [3.0, 30.0]), (128, [5.0, 40.0]),
                           (512, [5.0, 40.0])):
        assert thresholds_at(table, size) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_difficulty_stays_on_the_device_of_the_luma():
    luma = torch.from_numpy(np.random.default_rng(7).uniform(0, 255, size=(20, 24)))
    on_device = luma.to(torch.device('cuda'))
    vectors = gradient_vectors(on_device, 6, [0, 14], [0, 9, 18])
    assert vectors.is_cuda
    torch.testing.assert_close(vectors.cpu(), gradient_vectors(luma, 6, [0, 14], [0, 9, 18]))
    scores = grid_difficulty(on_device, 8)
    thresholds = quantile_threshold_tensor(scores, 3)
    assert thresholds.is_cuda and thresholds.tolist() == quantile_thresholds(scores.cpu().numpy(), 3)
    classes = difficulty_classes(scores, thresholds.tolist())
    assert classes.is_cuda
    assert classes.tolist() == difficulty_classes(scores.cpu().numpy(), thresholds.tolist()).tolist()
