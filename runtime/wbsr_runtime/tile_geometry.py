"""Tiling and blending geometry: where the patches of an LR image lie, and the weights that blend their SR outputs.

1. The LR image is covered by square patches of at most ``patch_size`` LR pixels (shrunk to
   the smallest size that needs no more patches); neighbours overlap by at least ``overlap``
   pixels (positions are spread evenly, so the last patch is not squeezed against the border).
2. Outputs are blended with windows that form a partition of unity: inside an overlap, each
   patch's weight is zero over the ``trim`` pixels next to its own edge (where its zero
   padding distorts it) and ramps linearly to one across the rest. The output is exactly
   ``scale`` times the input size for any input size.
"""
import math

import numpy as np

DEFAULT_PATCH_SIZE = 64
DEFAULT_OVERLAP = 4
DEFAULT_TRIM = 1


def patch_positions(length, patch_size, overlap):
    """Offsets of the fewest patches covering ``[0, length)`` with overlaps of at least ``overlap``."""
    if length <= patch_size:
        return [0]
    stride = patch_size - overlap
    count = math.ceil((length - patch_size) / stride) + 1
    return [round(i * (length - patch_size) / (count - 1)) for i in range(count)]


def fitted_patch_size(h, w, patch_size, overlap):
    """The smallest square patch, at most ``patch_size``, that covers the image with as few patches.

    A grid of ``patch_size`` patches rarely fits an image exactly; shrinking the patch to fit
    spends fewer FLOPs on overlaps without adding patches.
    """
    sides = []
    for length in (h, w):
        if length <= patch_size:
            sides.append(length)
        else:
            count = math.ceil((length - overlap) / (patch_size - overlap))
            sides.append(math.ceil((length - overlap) / count) + overlap)
    return min(max(sides), h, w)


def blend_weights(positions, length, patch_size, scale, trim):
    """1-D blending weights (len(positions), patch_size * scale) that sum to one along the axis.

    Near an edge shared with a neighbour, a patch's weight is 0 over ``trim`` LR pixels and then
    ramps to 1 across the rest of the overlap; edges on the image border keep weight 1.
    """
    out_len = patch_size * scale
    coords = np.arange(out_len, dtype=np.float64) + 0.5
    raw = []
    for i, pos in enumerate(positions):
        left = coords if pos > 0 else np.full_like(coords, math.inf)
        right = out_len - coords if pos + patch_size < length else np.full_like(coords, math.inf)
        distance = np.minimum(left, right)
        neighbours = [positions[j] for j in (i - 1, i + 1) if 0 <= j < len(positions)]
        ramp = max((min(patch_size - abs(pos - n) for n in neighbours) if neighbours else 0) - 2 * trim, 1) * scale
        raw.append(np.clip((distance - trim * scale) / ramp, 0, 1))
    total = np.zeros(length * scale, dtype=np.float64)
    for pos, weight in zip(positions, raw):
        total[pos * scale:(pos + patch_size) * scale] += weight
    if (total <= 0).any():
        raise ValueError(f'overlap too small for trim={trim}: some pixels get no weight.')
    return np.stack([weight / total[pos * scale:(pos + patch_size) * scale] for pos, weight in zip(positions, raw)])


def tile_geometry(h, w, patch_size, overlap, trim):
    """``(patch, tops, lefts, trim)`` of an h x w LR image: the fitted patch side, the patch offsets
    along each axis and the blending trim, lowered for small patches."""
    patch = fitted_patch_size(h, w, patch_size, overlap)
    overlap = min(overlap, patch // 2)
    trim = min(trim, max(0, (overlap - 1) // 2))
    return patch, patch_positions(h, patch, overlap), patch_positions(w, patch, overlap), trim


def stitch(outputs, lq_size, patch, tops, lefts, scale, row_weights, col_weights):
    """Blend SR patches (N, c, p*s, p*s) in grid order into the SR image (c, h*s, w*s), float32 numpy arrays.

    Each patch is weighted by its row's and its column's blend weights (float32, :func:`blend_weights`) and added
    into place, one patch at a time: every add stays within one patch's memory.
    """
    (h, w), p, s = lq_size, patch, scale
    sr = np.zeros((outputs.shape[1], h * s, w * s), dtype=np.float32)
    n = 0
    for i, top in enumerate(tops):
        for j, left in enumerate(lefts):
            window = row_weights[i][:, None] * col_weights[j][None, :]
            sr[:, top * s:(top + p) * s, left * s:(left + p) * s] += outputs[n] * window
            n += 1
    return sr
