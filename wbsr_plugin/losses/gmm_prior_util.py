"""The target space of BDLoss and the 1-D Gaussian mixture prior fitted on it.

``target_lowpass`` defines the space that BDLoss balances (see ``bd_loss.py``): the value of
an element of ``y`` is its high-frequency residual ``y - L(y)``, where ``L`` area-downsamples
the target by the SR scale and upsamples it back bilinearly. ``fit_gmm_prior`` reads HR
training images (an image folder or a BasicSR LMDB folder), samples residual values from
them and fits ``p_train`` with EM; ``save_gmm_prior`` / ``load_gmm_prior`` store it as a dict
of plain tensors that ``torch.load(..., weights_only=True)`` reads.
"""
import functools
import math
import os
from os import path as osp

import cv2
import numpy as np
import torch
from torch.nn import functional as F

from wbsr_plugin.data.paired_reading import lmdb_meta_shapes
from wbsr_plugin.data.prepare_util import input_images, read_image_file
from wbsr_plugin.utils.checkpoint_files import atomic_torch_save, load_checkpoint_file
from wbsr_plugin.utils.progress import progress_bar

PRIOR_FORMAT_VERSION = 1
SPACES = ('residual', 'pixel')
_PRIOR_TENSOR_KEYS = ('weights', 'means', 'variances')


def check_space(space):
    if space not in SPACES:
        raise ValueError(f'space must be one of {list(SPACES)}, got {space!r}.')
    return space


def check_scale(scale):
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f'scale must be a positive integer, got {scale!r}.')
    return scale


# Largest side for which ``lowpass`` runs as matrix products (faster than pooling and interpolation,
# backward included, while the side is small against the cost per pixel, which grows with it).
LOWPASS_MATMUL_MAX_SIDE = 512


@functools.lru_cache(maxsize=32)
def _lowpass_matrices(size, scale, device, dtype):
    """``(pool, up)``: area-downsampling (ceil(size/scale), size) and bilinear upsampling back.

    ``pool`` averages the valid elements of each window (as ``avg_pool2d(ceil_mode=True)``);
    ``up`` interpolates as ``interpolate(mode='bilinear', align_corners=False)`` to ``size``.
    """
    low = math.ceil(size / scale)
    pool = torch.zeros(low, size, dtype=torch.float64)
    for i in range(low):
        start, end = i * scale, min((i + 1) * scale, size)
        pool[i, start:end] = 1 / (end - start)
    source = ((torch.arange(size, dtype=torch.float64) + 0.5) * (low / size) - 0.5).clamp(min=0)
    lower = source.floor().long().clamp(max=low - 1)
    upper = (lower + 1).clamp(max=low - 1)
    weight = source - lower
    up = torch.zeros(size, low, dtype=torch.float64)
    rows = torch.arange(size)
    up.index_put_((rows, lower), 1 - weight, accumulate=True)
    up.index_put_((rows, upper), weight, accumulate=True)
    return pool.to(device=device, dtype=dtype), up.to(device=device, dtype=dtype)


def lowpass(img, scale, space='residual'):
    """The fixed linear low-pass ``L`` of a batch (N, C, H, W), differentiable.

    ``space='residual'``: area-downsample by ``scale`` and upsample back bilinearly, i.e. the
    smooth image an x``scale`` SR network can read off its LR input. ``space='pixel'``: zeros,
    so values are plain intensities. Patches up to ``LOWPASS_MATMUL_MAX_SIDE`` run it as four
    matrix products (separable, the same operator to rounding), larger images as
    ``avg_pool2d`` + ``interpolate``.
    """
    check_space(space)
    if space == 'pixel' or scale == 1:
        return torch.zeros_like(img)
    height, width = img.shape[-2:]
    if max(height, width) <= LOWPASS_MATMUL_MAX_SIDE and img.dtype in (torch.float32, torch.float64):
        pool_h, up_h = _lowpass_matrices(height, scale, img.device, img.dtype)
        pool_w, up_w = _lowpass_matrices(width, scale, img.device, img.dtype)
        with torch.autocast(img.device.type, enabled=False):  # in the image's precision, as pooling is
            return up_h @ (pool_h @ img @ pool_w.t()) @ up_w.t()
    low = F.avg_pool2d(img, scale, ceil_mode=True)
    return F.interpolate(low, size=img.shape[-2:], mode='bilinear', align_corners=False)


def target_lowpass(target, scale, space='residual'):
    """``lowpass`` of a target batch; no gradient flows through it."""
    return lowpass(target.detach(), scale, space)


class _LmdbImages:
    """Images of a BasicSR LMDB folder (``data.mdb`` + ``meta_info.txt``), keys in meta-info order."""

    def __init__(self, folder):
        import lmdb

        self.keys = list(lmdb_meta_shapes(folder))
        if not self.keys:
            raise ValueError(f"'{osp.join(folder, 'meta_info.txt')}' lists no keys.")
        self.folder = folder
        self.env = lmdb.open(folder, readonly=True, lock=False, readahead=False, meminit=False)

    def read(self, key):
        with self.env.begin(write=False) as txn:
            buf = txn.get(key.encode('ascii'))
        if buf is None:
            raise ValueError(f"key '{key}' of meta_info.txt is missing from the LMDB '{self.folder}'.")
        img = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise ValueError(f"cannot decode key '{key}' of the LMDB '{self.folder}'.")
        return img


def image_source(hr_paths_or_folder):
    """``(names, read)``: the HR images of a folder, a BasicSR LMDB folder or a list of paths."""
    if isinstance(hr_paths_or_folder, (str, os.PathLike)):
        folder = os.fspath(hr_paths_or_folder)
        if folder.endswith('.lmdb') or osp.isfile(osp.join(folder, 'data.mdb')):
            if not osp.isfile(osp.join(folder, 'meta_info.txt')):
                raise ValueError(f"LMDB folder '{folder}' has no meta_info.txt.")
            lmdb_images = _LmdbImages(folder)
            return lmdb_images.keys, lmdb_images.read
        if osp.isdir(folder):
            return [osp.join(folder, name) for name in input_images(folder)], read_image_file
        raise ValueError(f"'{folder}' is neither an image folder nor a BasicSR LMDB folder.")
    paths = [os.fspath(p) for p in hr_paths_or_folder]
    if not paths:
        raise ValueError('the list of HR images is empty.')
    return paths, read_image_file


def image_to_tensor(img):
    """A cv2 image (H, W[, C], uint8/uint16/float) as a float64 tensor (1, C, H, W) in [0, 1]."""
    if img.dtype == np.uint8:
        array = img.astype(np.float64) / 255.
    elif img.dtype == np.uint16:
        array = img.astype(np.float64) / 65535.
    else:
        array = img.astype(np.float64)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] == 4:
        array = array[..., :3]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def residual_values(img, scale, space='residual'):
    """All values ``y - L(y)`` of one HR image (cropped to a multiple of ``scale``), flattened."""
    target = image_to_tensor(img)
    height, width = target.shape[-2:]
    target = target[..., :height - height % scale, :width - width % scale]
    if target.numel() == 0:
        raise ValueError(f'image of size {height}x{width} is smaller than the scale {scale}.')
    return (target - target_lowpass(target, scale, space)).flatten()


def fit_gmm_1d(values, num_components=8, counts=None, num_iters=500, tol=1e-9, min_variance=1e-6):
    """Fit a 1-D Gaussian mixture to ``values`` (optionally weighted by ``counts``) with EM in float64.

    Means start at evenly spaced quantiles, so a sharp peak gets several components of
    different widths (a scale mixture), which is what a heavy-tailed residual density needs.

    Returns:
        dict: ``weights``, ``means``, ``variances`` (float64 tensors of shape (K,), sorted by mean)
        and the final mean log-likelihood ``log_likelihood`` (float).
    """
    if isinstance(num_components, bool) or not isinstance(num_components, int) or num_components < 1:
        raise ValueError(f'num_components must be a positive integer, got {num_components!r}.')
    if not min_variance > 0:
        raise ValueError(f'min_variance must be positive, got {min_variance!r}.')
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    counts = torch.ones_like(x) if counts is None else torch.as_tensor(counts, dtype=torch.float64).flatten()
    if counts.shape != x.shape or (counts < 0).any():
        raise ValueError('counts must be non-negative and match values.')
    keep = torch.isfinite(x) & (counts > 0)
    x, counts = x[keep], counts[keep]
    if x.numel() == 0:
        raise ValueError('no finite values to fit a prior on.')
    total = counts.sum()
    order = torch.argsort(x)
    cumulative = torch.cumsum(counts[order], 0) / total
    levels = (torch.arange(num_components, dtype=torch.float64) + 0.5) / num_components
    means = x[order][torch.searchsorted(cumulative, levels).clamp(max=x.numel() - 1)]
    mean = (counts * x).sum() / total
    variances = torch.full((num_components, ), max(((counts * (x - mean)**2).sum() / total).item(), min_variance),
                           dtype=torch.float64)
    weights = torch.full((num_components, ), 1. / num_components, dtype=torch.float64)
    previous = -math.inf
    log_likelihood = -math.inf
    for _ in range(num_iters):
        log_joint = (weights.log() - 0.5 * torch.log(2 * math.pi * variances) - 0.5 *
                     (x[:, None] - means)**2 / variances)
        log_norm = torch.logsumexp(log_joint, dim=1, keepdim=True)
        log_likelihood = ((counts * log_norm[:, 0]).sum() / total).item()
        resp = torch.exp(log_joint - log_norm) * counts[:, None]
        component_counts = resp.sum(0).clamp(min=1e-12)
        weights = (component_counts / total).clamp(min=1e-12)
        weights = weights / weights.sum()
        means = (resp * x[:, None]).sum(0) / component_counts
        variances = ((resp * (x[:, None] - means)**2).sum(0) / component_counts).clamp(min=min_variance)
        if abs(log_likelihood - previous) < tol * max(1., abs(log_likelihood)):
            break
        previous = log_likelihood
    order = torch.argsort(means)
    return {
        'weights': weights[order],
        'means': means[order],
        'variances': variances[order],
        'log_likelihood': float(log_likelihood)
    }


def fit_gmm_prior(hr_paths_or_folder,
                  scale,
                  num_components=8,
                  max_pixels=None,
                  space='residual',
                  num_bins=1 << 14,
                  num_iters=500,
                  min_variance=1e-6,
                  seed=0,
                  progress=False):
    """Fit BDLoss's GMM prior ``p_train`` on the values of HR training images.

    The values of all images are accumulated into a fine histogram (``num_bins`` bins over the
    range of the space, [-1, 1] for residuals and [0, 1] for pixels; bin width 1.2e-4 by default,
    far below ``min_variance``), and EM runs on the weighted bin centres: the fit costs one pass
    over the pixels plus a few seconds, whatever the size of the training set.

    Args:
        hr_paths_or_folder (str | list[str]): An image folder (searched recursively), a BasicSR
            LMDB folder (``data.mdb`` + ``meta_info.txt``) or a list of image paths.
        scale (int): SR scale; sets the low-pass of the residual space.
        num_components (int): Mixture components K. Default: 8.
        max_pixels (int | None): If set, values sampled in total, spread evenly over the images;
            None uses every value. Default: None.
        space (str): 'residual' (``y - L(y)``) or 'pixel' (plain values). Default: 'residual'.
        num_bins (int): Histogram bins. Default: 16384.
        num_iters (int): Maximum EM iterations. Default: 500.
        min_variance (float): Floor on component variances. Default: 1e-6.
        seed (int): Seed of the value sampling (with ``max_pixels``). Default: 0.
        progress (bool): Show a tqdm progress bar over the images. Default: False.

    Returns:
        dict: The prior, ready for ``save_gmm_prior``.
    """
    check_scale(scale)
    check_space(space)
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, int)
                                   or max_pixels < 1):
        raise ValueError(f'max_pixels must be None or a positive integer, got {max_pixels!r}.')
    names, read = image_source(hr_paths_or_folder)
    per_image = None if max_pixels is None else max(1, math.ceil(max_pixels / len(names)))
    low, high = (-1., 1.) if space == 'residual' else (0., 1.)
    generator = torch.Generator().manual_seed(seed)
    histogram = torch.zeros(num_bins, dtype=torch.float64)
    iterator = progress_bar(names, desc='reading HR images', unit='img') if progress else names
    for name in iterator:
        values = residual_values(read(name), scale, space)
        if per_image is not None and values.numel() > per_image:
            values = values[torch.randperm(values.numel(), generator=generator)[:per_image]]
        histogram += torch.histc(values.clamp(low, high), bins=num_bins, min=low, max=high)
    width = (high - low) / num_bins
    centres = low + width * (torch.arange(num_bins, dtype=torch.float64) + 0.5)
    gmm = fit_gmm_1d(centres, num_components, counts=histogram, num_iters=num_iters, min_variance=min_variance)
    gmm.update({
        'format_version': PRIOR_FORMAT_VERSION,
        'scale': scale,
        'space': space,
        'num_images': len(names),
        'num_values': int(histogram.sum().item()),
    })
    return gmm


def check_gmm_prior(prior, where='prior'):
    """Validate a prior dict; returns it with float64 tensors."""
    if not isinstance(prior, dict):
        raise ValueError(f'{where} is not a BDLoss prior (a {type(prior).__name__}, not a dict).')
    missing = [key for key in (*_PRIOR_TENSOR_KEYS, 'scale', 'space') if key not in prior]
    if len(missing) == len(_PRIOR_TENSOR_KEYS) + 2:
        raise ValueError(f'{where} is not a BDLoss prior (it has none of {missing}); fit one with '
                         '`python -m wbsr_plugin.fit_prior -i HR_DIR -o PRIOR.pth -s SCALE`.')
    if missing:
        raise ValueError(f'{where}: missing keys {missing}.')
    checked = dict(prior)
    for key in _PRIOR_TENSOR_KEYS:
        checked[key] = torch.as_tensor(prior[key], dtype=torch.float64).flatten()
    sizes = {checked[key].numel() for key in _PRIOR_TENSOR_KEYS}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f'{where}: weights, means and variances must be non-empty and of equal length.')
    if not all(torch.isfinite(checked[key]).all() for key in _PRIOR_TENSOR_KEYS):
        raise ValueError(f'{where}: non-finite values.')
    if (checked['weights'] <= 0).any() or (checked['variances'] <= 0).any():
        raise ValueError(f'{where}: weights and variances must be positive.')
    checked['weights'] = checked['weights'] / checked['weights'].sum()
    check_scale(prior['scale'])
    check_space(prior['space'])
    return checked


def save_gmm_prior(prior, path):
    """Write a prior with ``torch.save`` atomically (temporary file in the same folder, then ``os.replace``)."""
    atomic_torch_save(check_gmm_prior(prior), path)


def load_gmm_prior(path):
    """Read a prior written by ``save_gmm_prior`` (on the CPU, ``weights_only=True``)."""
    path = os.fspath(path)
    if not osp.isfile(path):
        raise ValueError(f"GMM prior file '{path}' does not exist; fit one with "
                         '`python -m wbsr_plugin.fit_prior -i HR_DIR -o PRIOR.pth -s SCALE`.')
    return check_gmm_prior(load_checkpoint_file(path), where=f"prior '{path}'")
