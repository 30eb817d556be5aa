"""The patch difficulty used for both training (HES) and inference (gradient projection).

Operator (METHOD.md section 2 leaves it open; this is our decision):

* colour: luma Y = 0.299 R + 0.587 G + 0.114 B of the LR image, scaled to [0, 255]
  (single-channel images are used as they are);
* gradients: forward differences inside the patch, ``|Y[r, c+1] - Y[r, c]|`` (horizontal)
  and ``|Y[r+1, c] - Y[r, c]|`` (vertical); no padding, so a patch's score depends on its
  own pixels only, wherever it lies in the image;
* gradient vector: (mean, std) of the horizontal magnitudes and (mean, std) of the vertical
  ones (population std);
* scalar difficulty: the sum of the four components (the L1 norm of the vector). A flat patch
  scores 0; a ramp rising by ``s`` per pixel scores ``s``.

All patches of an image are scored in one vectorised pass with summed-area tables, so the cost
is linear in the number of pixels whatever the number and overlap of the patches.
"""
import numpy as np
import torch

from wbsr_plugin.utils.device_tensors import to_device
from wbsr_runtime.difficulty import LUMA_WEIGHTS_RGB
from wbsr_runtime.difficulty import quantile_thresholds as numpy_quantile_thresholds


def rgb_to_luma(img):
    """Luma in [0, 255] of an RGB tensor (..., 3, H, W) or a single-channel (..., 1, H, W) in [0, 1]."""
    if img.shape[-3] == 1:
        return img[..., 0, :, :] * 255.
    if img.shape[-3] != 3:
        raise ValueError(f'expected 1 or 3 channels, got shape {tuple(img.shape)}')
    red, green, blue = LUMA_WEIGHTS_RGB
    return (img[..., 0, :, :] * red + img[..., 1, :, :] * green + img[..., 2, :, :] * blue) * 255.


def bgr_image_to_luma(img):
    """Luma in [0, 255] (float64 tensor, H x W) of a BasicSR/OpenCV image: HWC BGR or HW, float in [0, 1]."""
    array = np.asarray(img, dtype=np.float64)
    if array.ndim == 3 and array.shape[2] == 3:
        red, green, blue = LUMA_WEIGHTS_RGB
        luma = (array[..., 2] * red + array[..., 1] * green + array[..., 0] * blue) * 255.
    elif array.ndim == 3 and array.shape[2] == 1:
        luma = array[..., 0] * 255.
    elif array.ndim == 2:
        luma = array * 255.
    else:
        raise ValueError(f'expected an H x W or H x W x 1/3 image, got shape {array.shape}')
    return torch.from_numpy(np.ascontiguousarray(luma))


def grid_positions(length, patch_size, stride):
    """Top-left offsets of patches along one axis: every ``stride``, plus one flush with the end."""
    if length < patch_size:
        raise ValueError(f'image side {length} is smaller than the patch size {patch_size}')
    positions = list(range(0, length - patch_size + 1, stride))
    if positions[-1] != length - patch_size:
        positions.append(length - patch_size)
    return positions


def _window_sums(values, tops, lefts, height, width):
    """Sums of ``values`` (..., H, W) over the windows [top, top+height) x [left, left+width)."""
    table = torch.nn.functional.pad(values.cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    t = to_device(tops, values.device, torch.long).view(-1, 1)
    l = to_device(lefts, values.device, torch.long).view(1, -1)
    b, r = t + height, l + width
    return table[..., b, r] - table[..., t, r] - table[..., b, l] + table[..., t, l]


def _mean_std(magnitude, tops, lefts, height, width):
    """Mean and population std of ``magnitude`` over each window."""
    count = height * width
    # one window given on the host (tiny images): its sums directly, no summed-area table (offsets on the device
    # keep the table: reading them would wait for the device)
    if not torch.is_tensor(tops) and len(tops) == 1 and len(lefts) == 1:
        rows, cols = magnitude.shape[-2:]
        if not (0 <= tops[0] <= rows - height and 0 <= lefts[0] <= cols - width):
            raise IndexError(f'window at ({tops[0]}, {lefts[0]}) of {height}x{width} lies outside {rows}x{cols}')
        window = magnitude[..., tops[0]:tops[0] + height, lefts[0]:lefts[0] + width]
        mean = (window.sum((-2, -1)) / count)[..., None, None]
        mean_sq = ((window * window).sum((-2, -1)) / count)[..., None, None]
    else:
        mean = _window_sums(magnitude, tops, lefts, height, width) / count
        mean_sq = _window_sums(magnitude * magnitude, tops, lefts, height, width) / count
    return mean, (mean_sq - mean * mean).clamp_min(0).sqrt()


def gradient_vectors(luma, patch_size, tops, lefts):
    """Gradient vectors of the patches whose top-left corners are ``tops`` x ``lefts``.

    Args:
        luma (Tensor): Luma in [0, 255], shape (..., H, W).
        patch_size (int): Patch side in LR pixels (at least 2).
        tops (Sequence[int]): Row offsets of the patches.
        lefts (Sequence[int]): Column offsets of the patches.

    Returns:
        Tensor: Shape (..., len(tops), len(lefts), 4): mean and std of the horizontal
        gradient magnitude, then mean and std of the vertical one.
    """
    if patch_size < 2:
        raise ValueError(f'patch_size must be at least 2, got {patch_size}')
    luma = luma.double()
    grad_x = (luma[..., :, 1:] - luma[..., :, :-1]).abs()
    grad_y = (luma[..., 1:, :] - luma[..., :-1, :]).abs()
    mean_x, std_x = _mean_std(grad_x, tops, lefts, patch_size, patch_size - 1)
    mean_y, std_y = _mean_std(grad_y, tops, lefts, patch_size - 1, patch_size)
    return torch.stack([mean_x, std_x, mean_y, std_y], dim=-1)


def difficulty_from_vectors(vectors):
    """The scalar difficulty: the L1 norm of the gradient vector."""
    return vectors.sum(dim=-1)


def patch_difficulty(luma, patch_size, tops, lefts):
    """Scalar difficulty of every patch on the grid ``tops`` x ``lefts``; shape (..., len(tops), len(lefts))."""
    return difficulty_from_vectors(gradient_vectors(luma, patch_size, tops, lefts))


def patch_detail(luma, patch_size, tops, lefts):
    """Detail of every patch on the grid ``tops`` x ``lefts`` of ``luma`` (..., H, W): the mean squared 4-neighbour
    Laplacian over the patch's pixels whose neighbours lie in the patch (float64, (..., len(tops), len(lefts)));
    the same as :func:`wbsr_runtime.difficulty.patch_detail`."""
    if patch_size < 3:
        raise ValueError(f'patch detail needs patches of at least 3 pixels, got {patch_size}')
    luma = luma.double()
    centre = luma[..., 1:-1, 1:-1]
    laplacian = (4 * centre - luma[..., :-2, 1:-1] - luma[..., 2:, 1:-1] - luma[..., 1:-1, :-2]
                 - luma[..., 1:-1, 2:])
    inner = patch_size - 2
    return _window_sums(laplacian * laplacian, tops, lefts, inner, inner) / (inner * inner)


def _check_num_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}.')


def quantile_thresholds(scores, num_classes):
    """Class thresholds ``t_k = s[floor(k N / K)]``, k = 1..K-1, on the sorted scores ``s`` (Eq. 7).

    Used on the training candidates (HES) and, for checkpoints without stored thresholds, on the
    patches of the image being processed (inference).

    Args:
        scores (array-like | Tensor): Scalar difficulties of N >= 1 patches.
        num_classes (int): K >= 1.

    Returns:
        list[float]: K - 1 non-decreasing thresholds.
    """
    _check_num_classes(num_classes)
    if torch.is_tensor(scores):
        return quantile_threshold_tensor(scores, num_classes).tolist()
    return numpy_quantile_thresholds(scores, num_classes)


def quantile_threshold_tensor(scores, num_classes):
    """:func:`quantile_thresholds` of a tensor, as a float64 tensor on its device (no host transfer)."""
    _check_num_classes(num_classes)
    ordered = scores.detach().flatten().double().sort().values
    if ordered.numel() == 0:
        raise ValueError('cannot compute thresholds of an empty set of scores.')
    positions = [k * ordered.numel() // num_classes for k in range(1, num_classes)]
    return ordered[to_device(positions, ordered.device, torch.long)]


def difficulty_classes(scores, thresholds):
    """Class in 0..K-1 of every score: the number of thresholds at or below it (numpy or torch)."""
    if torch.is_tensor(scores):
        bounds = to_device(thresholds, scores.device, scores.dtype)
        return torch.bucketize(scores, bounds, right=True)
    return np.searchsorted(np.asarray(thresholds, dtype=np.float64), np.asarray(scores, dtype=np.float64),
                           side='right')


# LR patch sides at which a checkpoint stores class thresholds (the engine interpolates between them).
THRESHOLD_PATCH_SIZES = (16, 24, 32, 48, 64, 96, 128)


def default_stride(patch_size, stride=None):
    """``stride``, or half the patch side when None: the grid of candidate patches (HES) and thresholds."""
    return max(1, patch_size // 2) if stride is None else stride


def grid_difficulty(luma, patch_size):
    """Difficulties (flattened) of the patches of one image on a grid of stride ``patch_size // 2``."""
    h, w = luma.shape[-2:]
    stride = default_stride(patch_size)
    return patch_difficulty(luma, patch_size, grid_positions(h, patch_size, stride),
                            grid_positions(w, patch_size, stride)).flatten()


def threshold_table(lumas, num_classes, patch_sizes=THRESHOLD_PATCH_SIZES):
    """Class thresholds (Eq. 7) of the same images at several patch sizes.

    The difficulty's mean and std are taken per patch, so its distribution narrows as patches grow
    (on sun_hays80 x4 the first threshold is 9.5 at 32 pixels and 18.1 at 64): thresholds hold only
    at the patch size they were computed on. Every image is scored on a grid of stride ``p // 2`` for
    every size ``p``; sizes larger than the smallest image side are left out.

    Args:
        lumas (Iterable[Tensor]): Luma images (H, W) in [0, 255], each visited once.
        num_classes (int): K.
        patch_sizes (Sequence[int]): LR patch sides. Default: :data:`THRESHOLD_PATCH_SIZES`.

    Returns:
        dict[int, list[float]]: K - 1 thresholds per patch side.
    """
    scores = {int(p): [] for p in patch_sizes}
    smallest = None
    for luma in lumas:
        h, w = luma.shape[-2:]
        smallest = min(h, w) if smallest is None else min(smallest, h, w)
        for p, found in scores.items():
            if p <= min(h, w):
                found.append(grid_difficulty(luma, p))
    if smallest is None:
        raise ValueError('cannot compute thresholds without images.')
    table = {p: quantile_thresholds(torch.cat(found), num_classes) for p, found in scores.items()
             if found and p <= smallest}
    if not table:
        raise ValueError(f'every image side is smaller than the smallest patch size {min(scores)}.')
    return table

