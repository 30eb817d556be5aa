"""The patch difficulty shared by HES (training) and gradient projection (inference)."""
import numpy as np
import pytest
import torch

from wbsr_plugin.data.difficulty import (
    bgr_image_to_luma,
    gradient_vectors,
    grid_positions,
    patch_difficulty,
    rgb_to_luma,
)


def naive_difficulty(luma, size, top, left):
    patch = luma[top:top + size, left:left + size].astype(np.float64)
    grad_x = np.abs(np.diff(patch, axis=1))
    grad_y = np.abs(np.diff(patch, axis=0))
    return grad_x.mean() + grad_x.std() + grad_y.mean() + grad_y.std()


def test_flat_patch_scores_zero():
    luma = torch.full((20, 20), 137.0)
    scores = patch_difficulty(luma, 8, [0, 6, 12], [0, 12])
    assert scores.shape == (3, 2)
    assert torch.count_nonzero(scores) == 0


@pytest.mark.parametrize('step', [0.5, 3.0, 10.0])
def test_ramp_scores_its_slope(step):
    # a horizontal ramp: |dx| = step everywhere, dy = 0, no spread -> difficulty = step
    luma = torch.arange(32, dtype=torch.float64).repeat(32, 1) * step
    vectors = gradient_vectors(luma, 8, [0, 10], [0, 5, 24])
    assert torch.allclose(vectors[..., 0], torch.full((2, 3), step, dtype=torch.float64))
    assert torch.allclose(vectors[..., 1:], torch.zeros(2, 3, 3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(patch_difficulty(luma, 8, [0], [0]), torch.tensor([[step]], dtype=torch.float64))


def test_checkerboard_known_value():
    # alternating 0/255 columns: |dx| = 255 everywhere (mean 255, std 0), dy = 0
    luma = torch.zeros(8, 8, dtype=torch.float64)
    luma[:, 1::2] = 255
    assert patch_difficulty(luma, 8, [0], [0]).item() == pytest.approx(255.0)


def test_vectorised_equals_naive_loop():
    rng = np.random.default_rng(0)
    luma = rng.uniform(0, 255, size=(37, 45))
    luma[:, :20] = np.cumsum(rng.normal(size=(37, 20)), axis=1)  # smoother part
    size, stride = 8, 3
    tops, lefts = grid_positions(37, size, stride), grid_positions(45, size, stride)
    scores = patch_difficulty(torch.from_numpy(luma), size, tops, lefts).numpy()
    expected = np.array([[naive_difficulty(luma, size, t, l) for l in lefts] for t in tops])
    assert scores.shape == (len(tops), len(lefts))
    np.testing.assert_allclose(scores, expected, rtol=1e-9, atol=1e-8)


def test_grid_positions_cover_the_border():
    assert grid_positions(24, 8, 4) == [0, 4, 8, 12, 16]
    assert grid_positions(23, 8, 4) == [0, 4, 8, 12, 15]
    with pytest.raises(ValueError, match='smaller than the patch size'):
        grid_positions(7, 8, 4)


def test_luma_of_bgr_image_uses_rgb_weights():
    img = np.zeros((4, 4, 3), np.float32)
    img[..., 0] = 1.0  # blue in BGR order
    assert bgr_image_to_luma(img)[0, 0].item() == pytest.approx(0.114 * 255, rel=1e-6)
    gray = np.full((4, 4), 0.5)
    assert bgr_image_to_luma(gray)[0, 0].item() == pytest.approx(127.5)
    rgb = torch.zeros(1, 3, 2, 2)
    rgb[:, 0] = 1.0  # red in RGB order
    assert rgb_to_luma(rgb)[0, 0, 0].item() == pytest.approx(0.299 * 255, rel=1e-6)
