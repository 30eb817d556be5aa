"""Expected error of every subnet on every difficulty class: what a budget spends its FLOPs on.

With a budget and this table, the engine moves patches to bigger subnets by error saved per FLOP
(:func:`~wbsr_plugin.inference.projection.calibrated_levels`) instead of by cost alone (Eq. 16).
``DynamicSRModel`` measures it on training patches whenever it saves a checkpoint and stores it as
the checkpoint's ``'class_errors'``: row k is class k + 1, column m subnet m (cost order), each entry
the mean squared error (RGB in [0, 1]) of that subnet on that class's patches.
"""

import numpy as np
import torch

from wbsr_plugin.data.difficulty import patch_difficulty, rgb_to_luma
from wbsr_plugin.data.paired_reading import PairReader, list_pairs

from .projection import classify

DEFAULT_CALIBRATION_PATCHES = 256


def sample_patch_pairs(images, patch_size, scale, num_patches, seed=0):
    """Aligned random LR/HR patches, spread evenly over image pairs.

    Args:
        images (Sequence[Callable[[], tuple[np.ndarray, np.ndarray]]]): One loader per pair, returning
            ``(lq, gt)`` as H x W x 3 BGR float32 in [0, 1] (BasicSR's ``imfrombytes``); called once each.
        patch_size (int): LR patch side; lowered to the smallest LR side met.
        scale (int): Upscale factor.
        num_patches (int): Patches in all.
        seed (int): Seed of the positions and of the images chosen. Default: 0.

    Returns:
        tuple[Tensor, Tensor]: LR (n, 3, p, p) and HR (n, 3, p * scale, p * scale) RGB uint8 patches.
    """
    if not images or num_patches < 1:
        raise ValueError(f'calibration needs at least one LR/HR image pair and one patch, got {len(images)} pair(s) '
                         f'and {num_patches} patch(es).')
    rng = np.random.default_rng(seed)
    # every image gets the same share (the first ones one more), read in order, at most once
    shares = np.full(min(len(images), num_patches), num_patches // min(len(images), num_patches))
    shares[:num_patches - shares.sum()] += 1
    chosen = np.sort(rng.choice(len(images), size=len(shares), replace=False))
    lq_patches, gt_patches = [], []
    for index, share in zip(chosen, shares):
        lq, gt = images[index]()
        p = min(patch_size, *lq.shape[:2])
        if p < 2:
            raise ValueError(f'calibration image {index} is {lq.shape[0]}x{lq.shape[1]} (LR); at least 2x2 is needed.')
        if gt.shape[:2] != (lq.shape[0] * scale, lq.shape[1] * scale):
            raise ValueError(f'calibration pair {index}: GT is {gt.shape[0]}x{gt.shape[1]}, not scale={scale} times '
                             f'LR {lq.shape[0]}x{lq.shape[1]}.')
        for _ in range(share):
            top, left = (int(rng.integers(side - p + 1)) for side in lq.shape[:2])
            lq_patches.append(lq[top:top + p, left:left + p])
            gt_patches.append(gt[top * scale:(top + p) * scale, left * scale:(left + p) * scale])
    p = min(patch.shape[0] for patch in lq_patches)  # one size for all (the smallest image's)

    def stack(patches, side):
        batch = np.stack([patch[:side, :side, ::-1] for patch in patches])
        return torch.from_numpy((batch * 255.).round().clip(0, 255).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()

    return stack(lq_patches, p), stack(gt_patches, p * scale)


def dataset_patch_pairs(dataset_opt, patch_size, scale, num_patches, seed=0):
    """:func:`sample_patch_pairs` of a paired dataset's images (``PairedImageDataset`` options: disk or LMDB)."""
    paths = list_pairs(dataset_opt)
    reader = PairReader(dataset_opt)

    def loader(pair):
        return lambda: tuple(reader.decode(reader.get(pair[f'{role}_path'], role), pair[f'{role}_path'], role)
                             for role in ('lq', 'gt'))

    return sample_patch_pairs([loader(pair) for pair in paths], patch_size, scale, num_patches, seed)


def fill_empty_classes(sums, counts):
    """Per-class means of ``sums / counts`` (K x M); a class without patches takes its nearest class's."""
    filled = [k for k, count in enumerate(counts) if count > 0]
    if not filled:
        raise ValueError('no calibration patch fell into any class.')
    rows = []
    for k, count in enumerate(counts):
        source = k if count > 0 else min(filled, key=lambda f: (abs(f - k), f))
        rows.append([s / counts[source] for s in sums[source]])
    return rows


def class_error_table(net, lq, gt, thresholds, *, border=None, batch_size=16):
    """Mean squared error of every subnet on the calibration patches of every class.

    Args:
        net (SupernetMixin): The supernet (run in eval mode, without gradients; its mode is
            restored).
        lq (Tensor): LR patches (n, 3, p, p), uint8 or float in [0, 1], RGB.
        gt (Tensor): HR patches (n, 3, p * scale, p * scale), same type.
        thresholds (ClassThresholds): Class thresholds (those of ``p`` are used).
        border (int | None): HR pixels left out at each patch edge (the engine blends patch edges
            away). Default: None (``2 * scale``, at most a quarter of the patch).
        batch_size (int): Patches per forward call. Default: 16.

    Returns:
        list[list[float]]: K x M mean squared errors (RGB in [0, 1]).
    """
    device = next(net.parameters()).device
    dtype = next(net.parameters()).dtype
    p, scale = lq.shape[-1], net.upscale
    thresholds = thresholds.at(p)
    num_classes, num_subnets = len(thresholds) + 1, len(net.subnets)
    if border is None:
        border = min(2 * scale, p * scale // 4)

    def inner(t):
        return t[..., border:t.shape[-2] - border, border:t.shape[-1] - border]

    def to_float(x):
        x = x.to(device)
        return x.to(dtype) / 255. if x.dtype == torch.uint8 else x.to(dtype)

    sums = torch.zeros(num_classes, num_subnets, dtype=torch.float64, device=device)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for start in range(0, lq.shape[0], batch_size):
                x, y = to_float(lq[start:start + batch_size]), to_float(gt[start:start + batch_size])
                difficulty = patch_difficulty(rgb_to_luma(x.float()), p, [0], [0]).view(-1)
                classes = classify(difficulty, thresholds) - 1
                counts.index_add_(0, classes, torch.ones_like(difficulty, dtype=torch.float64))
                y = inner(y).float()
                for m in range(num_subnets):
                    out = inner(net(x, subnet=m).clamp(0, 1)).float()
                    errors = (out - y).pow(2).mean(dim=(1, 2, 3)).double()
                    sums[:, m].index_add_(0, classes, errors)
    finally:
        net.train(was_training)
    return fill_empty_classes(sums.tolist(), counts.tolist())

