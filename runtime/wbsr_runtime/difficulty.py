"""The patch difficulty in numpy: the same operator as the torch engine's (``wbsr_plugin.data.difficulty``).

Luma ``Y = 0.299 R + 0.587 G + 0.114 B`` in [0, 255] (computed in float32, as the engine does); forward differences
inside each patch; the mean and population std of the horizontal and vertical magnitudes, summed. All patches
of an image are scored at once from summed-area tables in float64.

The patch detail (:func:`patch_detail`) is the mean squared 4-neighbour Laplacian of the luma over a patch's pixels
whose neighbours lie in the patch: the energy of the LR's finest scale. The difficulty classes do not see it (a
smooth ramp and fine texture can share their gradient statistics); the quality target uses it to tell an image
cleaner than its classes (:mod:`.expected_quality`).
"""
import numpy as np

LUMA_WEIGHTS_RGB = (0.299, 0.587, 0.114)


def rgb_to_luma(img):
    """Luma in [0, 255] (float32) of a (3, H, W) RGB or (1, H, W) image in [0, 1] (float32)."""
    if img.shape[0] == 1:
        return img[0] * np.float32(255.)
    red, green, blue = (np.float32(v) for v in LUMA_WEIGHTS_RGB)
    return (img[0] * red + img[1] * green + img[2] * blue) * np.float32(255.)


def _window_sums(values, tops, lefts, height, width):
    table = np.pad(values.cumsum(-1).cumsum(-2), ((1, 0), (1, 0)))
    t = np.asarray(tops, dtype=np.int64).reshape(-1, 1)
    l = np.asarray(lefts, dtype=np.int64).reshape(1, -1)
    b, r = t + height, l + width
    return table[b, r] - table[t, r] - table[b, l] + table[t, l]


def _mean_std(magnitude, tops, lefts, height, width):
    count = height * width
    if len(tops) == 1 and len(lefts) == 1:  # one window (tiny images): its sums directly, no summed-area table
        rows, cols = magnitude.shape[-2:]
        if not (0 <= tops[0] <= rows - height and 0 <= lefts[0] <= cols - width):
            raise IndexError(f'window at ({tops[0]}, {lefts[0]}) of {height}x{width} lies outside {rows}x{cols}')
        window = magnitude[tops[0]:tops[0] + height, lefts[0]:lefts[0] + width]
        mean = np.full((1, 1), window.sum() / count)
        mean_sq = np.full((1, 1), (window * window).sum() / count)
    else:
        mean = _window_sums(magnitude, tops, lefts, height, width) / count
        mean_sq = _window_sums(magnitude * magnitude, tops, lefts, height, width) / count
    return mean, np.sqrt(np.maximum(mean_sq - mean * mean, 0))


def patch_difficulty(luma, patch_size, tops, lefts):
    """Scalar difficulty (float64, (len(tops), len(lefts))) of the patches of side ``patch_size`` (>= 2) whose
    top-left corners are ``tops`` x ``lefts`` on ``luma`` (H, W)."""
    luma = luma.astype(np.float64)
    grad_x = np.abs(luma[:, 1:] - luma[:, :-1])
    grad_y = np.abs(luma[1:, :] - luma[:-1, :])
    mean_x, std_x = _mean_std(grad_x, tops, lefts, patch_size, patch_size - 1)
    mean_y, std_y = _mean_std(grad_y, tops, lefts, patch_size - 1, patch_size)
    return np.stack([mean_x, std_x, mean_y, std_y], axis=-1).sum(-1)


def laplacian(luma):
    """4-neighbour Laplacian (float64, (H - 2, W - 2)) of the pixels of ``luma`` (H, W) whose neighbours lie inside."""
    luma = np.asarray(luma, dtype=np.float64)
    centre = luma[1:-1, 1:-1]
    return 4 * centre - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:]


def patch_detail(luma, patch_size, tops, lefts):
    """Detail (float64, (len(tops), len(lefts))): the mean squared Laplacian of ``luma`` (H, W) over the pixels of
    each patch of side ``patch_size`` (>= 3) whose 4 neighbours lie in the patch."""
    if patch_size < 3:
        raise ValueError(f'patch detail needs patches of at least 3 pixels, got {patch_size}')
    energy = laplacian(luma) ** 2
    inner = patch_size - 2
    return _window_sums(energy, tops, lefts, inner, inner) / (inner * inner)


def quantile_thresholds(scores, num_classes):
    """``t_k = s[floor(k N / K)]``, k = 1..K-1, on the sorted scores ``s`` (Eq. 7), as a list."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if ordered.size == 0:
        raise ValueError('cannot compute thresholds of an empty set of scores.')
    return [float(ordered[k * ordered.size // num_classes]) for k in range(1, num_classes)]
