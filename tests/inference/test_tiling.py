"""Tiling and blending of the engine: invariants over many geometries, and weights worked out by hand."""
import itertools

import numpy as np
import pytest
import torch

from wbsr_plugin.inference.tiling import stitch_patches
from wbsr_runtime.tile_geometry import blend_weights, patch_positions, tile_geometry

LENGTHS = [1, 2, 5, 8, 9, 16, 17, 31, 33, 64, 65, 100, 127, 270, 481]
PATCHES = [2, 4, 8, 16, 32, 64]
OVERLAPS = [0, 1, 2, 4, 7]


def check_positions(positions, length, patch, overlap):
    """Covering, overlapping by at least ``overlap``, and as few patches as any tiling could use."""
    assert positions[0] == 0 and positions[-1] + patch == max(length, patch)
    steps = np.diff(positions)
    assert (steps > 0).all(), positions
    assert (patch - steps >= overlap).all(), (positions, patch, overlap)
    n = len(positions)
    if n > 1:  # n - 1 patches with overlaps >= overlap reach at most (n - 1) p - (n - 2) o < length
        assert (n - 1) * patch - (n - 2) * overlap < length, (positions, patch, overlap)


@pytest.mark.parametrize('patch, overlap', [(p, o) for p in PATCHES for o in OVERLAPS if o < p])
def test_patch_positions_overlap_by_at_least_the_overlap(patch, overlap):
    """Protects the stride: neighbours must share at least ``overlap`` pixels, with the fewest patches."""
    for length in LENGTHS:
        positions = patch_positions(length, patch, overlap)
        if length <= patch:
            assert positions == [0]
        else:
            check_positions(positions, length, patch, overlap)


def test_tile_geometry_invariants():
    for h, w, patch_size, overlap, trim in itertools.product([2, 9, 24, 37, 70, 130], [3, 16, 45, 81, 200],
                                                             [8, 16, 64], [0, 2, 4, 6], [0, 1, 2]):
        if overlap >= patch_size:
            continue
        patch, tops, lefts, used_trim = tile_geometry(h, w, patch_size, overlap, trim)
        used_overlap = min(overlap, patch // 2)
        assert patch <= min(patch_size, h, w)
        for positions, length in ((tops, h), (lefts, w)):
            check_positions(positions, length, patch, used_overlap)
            if patch_size <= min(h, w):  # the fitted patch needs no more patches than the largest one would
                assert len(positions) <= len(patch_positions(length, patch_size, overlap))
        assert used_trim <= trim and (used_trim == 0 or 2 * used_trim + 1 <= used_overlap)


@pytest.mark.parametrize('length, patch, overlap, scale, trim', [(33, 16, 4, 2, 1), (100, 32, 6, 4, 2),
                                                                 (17, 9, 2, 3, 0), (64, 64, 4, 2, 1),
                                                                 (45, 16, 4, 1, 1)])
def test_blend_weights_are_a_partition_of_unity(length, patch, overlap, scale, trim):
    positions = patch_positions(length, patch, overlap)
    weights = blend_weights(positions, length, patch, scale, trim)
    assert weights.shape == (len(positions), patch * scale)
    assert weights.min() >= 0 and weights.max() <= 1
    total = np.zeros(length * scale)
    for pos, weight in zip(positions, weights):
        total[pos * scale:(pos + patch) * scale] += weight
    np.testing.assert_allclose(total, 1, rtol=0, atol=1e-12)
    for i, pos in enumerate(positions):
        if i > 0:  # next to an edge shared with a neighbour: no weight over the trim
            assert (weights[i, :trim * scale] == 0).all()
        else:  # on the image border: full weight
            assert weights[i, 0] == 1
        if i < len(positions) - 1:
            assert (weights[i, (patch - trim) * scale:] == 0).all()
        else:
            assert weights[i, -1] == 1


def test_blend_weights_by_hand():
    # length 12, patches of 8 at 0 and 4 (overlap 4), trim 1: inside the overlap (pixels 4..7) the
    # first patch gets 1, 3/4, 1/4, 0 and the second 0, 1/4, 3/4, 1; elsewhere the covering patch gets 1
    weights = blend_weights([0, 4], 12, 8, 1, 1)
    np.testing.assert_allclose(weights[0], [1, 1, 1, 1, 1, 0.75, 0.25, 0])
    np.testing.assert_allclose(weights[1], [0, 0.25, 0.75, 1, 1, 1, 1, 1])
    # at x2 the same ramp over twice the pixels: distance (x + 0.5) past the trim of 2, over a ramp of 4
    weights = blend_weights([0, 4], 12, 8, 2, 1)
    np.testing.assert_allclose(weights[1, :8], [0, 0, 0.125, 0.375, 0.625, 0.875, 1, 1])
    np.testing.assert_allclose(weights[0, 8:], [1, 1, 0.875, 0.625, 0.375, 0.125, 0, 0])


@pytest.mark.parametrize('vectorised', [False, True])
def test_stitch_of_constant_patches_by_hand(vectorised):
    # a 2 x 2 grid of 8 x 8 patches on a 12 x 12 image, scale 1, patch values 1, 2 (top) and 3, 4 (bottom)
    outputs = torch.tensor([1., 2., 3., 4.]).view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()
    sr = stitch_patches(outputs, (12, 12), 8, [0, 4], [0, 4], 1, 1, vectorised=vectorised)[0, 0].numpy()
    ramp = np.array([1, 1, 1, 1, 1, 0.75, 0.25, 0, 0, 0, 0, 0])  # first patch's weight along an axis
    top, left = ramp[:, None], ramp[None, :]
    expected = top * left * 1 + top * (1 - left) * 2 + (1 - top) * left * 3 + (1 - top) * (1 - left) * 4
    np.testing.assert_allclose(sr, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('size, scale, patch, overlap', [((37, 81), 4, 16, 4), ((65, 17), 2, 16, 6), ((9, 9), 3, 8, 2),
                                                         ((270, 480), 4, 64, 4)])
def test_stitch_of_crops_of_one_image_returns_that_image(size, scale, patch, overlap):
    """Patches that agree on their overlaps blend back into exactly the image they were cut from."""
    p, tops, lefts, trim = tile_geometry(*size, patch, overlap, 1)
    image = torch.rand(3, size[0] * scale, size[1] * scale)
    crops = torch.stack([image[:, t * scale:(t + p) * scale, l * scale:(l + p) * scale] for t in tops for l in lefts])
    for vectorised in (False, True):
        sr = stitch_patches(crops, size, p, tops, lefts, trim, scale, vectorised=vectorised)
        assert sr.shape == (1, 3, size[0] * scale, size[1] * scale)
        torch.testing.assert_close(sr[0], image, rtol=0, atol=2e-6)
    half = stitch_patches(crops.half(), size, p, tops, lefts, trim, scale, vectorised=True)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half[0], image, rtol=0, atol=2e-3)


def test_blend_weights_by_hand_at_a_shift_of_one_pixel():
    # length 5, patches of 4 at 0 and 1 (patch_positions(5, 4, 3)), trim 0: the overlap is 3 pixels wide and the
    # ramps run over it, pixel centres at 0.5, 1.5, 2.5 of 3: the patch at 1 is not on the image border
    weights = blend_weights([0, 1], 5, 4, 1, 0)
    np.testing.assert_allclose(weights, [[1, 5 / 6, 1 / 2, 1 / 6], [1 / 6, 1 / 2, 5 / 6, 1]], rtol=0, atol=1e-12)


def test_blend_weights_by_hand_with_uneven_overlaps():
    # length 22, patches of 8 at 0, 5, 9, 14 (patch_positions(22, 8, 3)): overlaps 3, 4, 3; trim 1. Every ramp
    # spans the patch's smallest overlap less both trims, 3 - 2 = 1 pixel: raw weights 0 on the trim pixel, 0.5 on
    # the next, then 1. Inside the 4-pixel overlap (pixels 9..12) the patch at 5 has raw 1, 1, 0.5, 0 and the
    # patch at 9 has 0, 0.5, 1, 1: normalised, 1, 2/3, 1/3, 0 and their complements.
    weights = blend_weights([0, 5, 9, 14], 22, 8, 1, 1)
    np.testing.assert_allclose(weights, [[1, 1, 1, 1, 1, 1, 1 / 2, 0],
                                         [0, 1 / 2, 1, 1, 1, 2 / 3, 1 / 3, 0],
                                         [0, 1 / 3, 2 / 3, 1, 1, 1, 1 / 2, 0],
                                         [0, 1 / 2, 1, 1, 1, 1, 1, 1]], rtol=0, atol=1e-12)


def test_blend_weights_refuse_a_trim_that_leaves_pixels_without_weight():
    # overlap 4, trim 3: pixels 5 and 6 lie in the trim of both patches
    with pytest.raises(ValueError, match=r'^overlap too small for trim=3: some pixels get no weight\.$'):
        blend_weights([0, 4], 12, 8, 1, 3)


@pytest.mark.parametrize('overlap, trim, used_trim', [(3, 1, 1), (2, 1, 0), (5, 5, 2), (6, 5, 2), (7, 2, 2)])
def test_tile_geometry_lowers_the_trim_to_fit_the_overlap(overlap, trim, used_trim):
    """Protects the trim rule: at most (overlap - 1) // 2, so that every overlap keeps a pixel of weight."""
    assert tile_geometry(40, 40, 16, overlap, trim)[3] == used_trim


def test_per_patch_stitch_of_half_patches_is_float32():
    outputs = torch.tensor([1., 2., 3., 4.]).view(4, 1, 1, 1).expand(4, 1, 8, 8).half()
    sr = stitch_patches(outputs, (12, 12), 8, [0, 4], [0, 4], 1, 1, vectorised=False)
    full = stitch_patches(outputs.float(), (12, 12), 8, [0, 4], [0, 4], 1, 1, vectorised=False)
    assert sr.dtype == torch.float32 and torch.equal(sr, full)
