"""Expected error of every subnet on every difficulty class: what a budget spends its FLOPs on.

With a budget and this table, the engine moves patches to bigger subnets by error saved per FLOP
(:func:`~wbsr_plugin.inference.projection.calibrated_levels`) instead of by cost alone (Eq. 16).
``DynamicSRModel`` measures it on training patches whenever it saves a checkpoint and stores it as
the checkpoint's ``'class_errors'``: row k is class k + 1, column m subnet m (cost order), each entry
the mean squared error of that subnet's luma (:data:`~wbsr_runtime.class_errors.ERROR_CHANNEL`; BT.601, in [0, 1])
on that class's patches: the expected loss is stated in Y-PSNR, as BasicSR's ``test_y_channel`` measures it.
"""

import numpy as np
import torch

from wbsr_plugin.data.difficulty import patch_detail, patch_difficulty, rgb_to_luma
from wbsr_plugin.data.paired_reading import PairReader, list_pairs
from wbsr_runtime.class_errors import ERROR_CHANNEL, ClassErrors
from wbsr_runtime.difficulty import LUMA_WEIGHTS_RGB
from wbsr_runtime.tile_geometry import DEFAULT_OVERLAP, DEFAULT_TRIM, blend_weights

from .projection import classify

DEFAULT_CALIBRATION_PATCHES = 256
# patches per calibration image at least, where there are enough: an image's correlation needs several
# (:func:`~wbsr_runtime.class_errors.correlation_bound`)
PATCHES_PER_IMAGE = 8


def sample_patch_pairs(images, patch_size, scale, num_patches, seed=0, with_images=False, context=0,
                       per_image=PATCHES_PER_IMAGE):
    """Aligned random LR/HR patches, spread evenly over image pairs (at most ``num_patches / per_image`` of them,
    chosen at random).

    Args:
        images (Sequence[Callable[[], tuple[np.ndarray, np.ndarray]]]): One loader per pair, returning
            ``(lq, gt)`` as H x W x 3 BGR float32 in [0, 1] (BasicSR's ``imfrombytes``); called once each.
        patch_size (int): LR patch side; lowered to the smallest LR side met.
        scale (int): Upscale factor.
        num_patches (int): Patches in all.
        seed (int): Seed of the positions and of the images chosen. Default: 0.
        with_images (bool): Also return the index of every patch's image pair. Default: False.
        context (int): LR pixels of the image kept around every LR patch (lowered to what the smallest image
            holds): the LR crops are ``p + 2 * context`` wide, the patch in their middle. Default: 0.
        per_image (int): Patches per image at least, where ``num_patches`` allows. Default:
            :data:`PATCHES_PER_IMAGE`.

    Returns:
        tuple[Tensor, Tensor]: LR (n, 3, p + 2c, p + 2c) and HR (n, 3, p * scale, p * scale) RGB uint8 patches (and,
        with ``with_images``, an (n,) array of image indices).
    """
    if not images or num_patches < 1:
        raise ValueError(f'calibration needs at least one LR/HR image pair and one patch, got {len(images)} pair(s) '
                         f'and {num_patches} patch(es).')
    rng = np.random.default_rng(seed)
    # every image gets the same share (the first ones one more), read in order, at most once
    count = min(len(images), max(num_patches // max(per_image, 1), 1))
    shares = np.full(count, num_patches // count)
    shares[:num_patches - shares.sum()] += 1
    chosen = np.sort(rng.choice(len(images), size=len(shares), replace=False))
    lq_crops, gt_patches, sources = [], [], []
    for index, share in zip(chosen, shares):
        lq, gt = images[index]()
        p = min(patch_size, *lq.shape[:2])
        c = max(min(context, (min(lq.shape[:2]) - p) // 2), 0)
        if p < 2:
            raise ValueError(f'calibration image {index} is {lq.shape[0]}x{lq.shape[1]} (LR); at least 2x2 is needed.')
        if gt.shape[:2] != (lq.shape[0] * scale, lq.shape[1] * scale):
            raise ValueError(f'calibration pair {index}: GT is {gt.shape[0]}x{gt.shape[1]}, not scale={scale} times '
                             f'LR {lq.shape[0]}x{lq.shape[1]}.')
        for _ in range(share):
            top, left = (c + int(rng.integers(side - p - 2 * c + 1)) for side in lq.shape[:2])
            lq_crops.append((lq[top - c:top + p + c, left - c:left + p + c], c))
            gt_patches.append(gt[top * scale:(top + p) * scale, left * scale:(left + p) * scale])
            sources.append(int(index))
    # one size for all (the smallest image's), the patch in the middle of its context
    p = min(patch.shape[0] for patch in gt_patches) // scale
    c = min(c for _, c in lq_crops)
    lq_crops = [crop[own - c:own + p + c, own - c:own + p + c] for crop, own in lq_crops]

    def stack(patches, side):
        batch = np.stack([patch[:side, :side, ::-1] for patch in patches])
        return torch.from_numpy((batch * 255.).round().clip(0, 255).astype(np.uint8)).permute(0, 3, 1, 2).contiguous()

    pairs = stack(lq_crops, p + 2 * c), stack(gt_patches, p * scale)
    return (*pairs, np.array(sources)) if with_images else pairs


def dataset_patch_pairs(dataset_opt, patch_size, scale, num_patches, seed=0, with_images=False, context=0):
    """:func:`sample_patch_pairs` of a paired dataset's images (``PairedImageDataset`` options: disk or LMDB)."""
    paths = list_pairs(dataset_opt)
    reader = PairReader(dataset_opt)

    def loader(pair):
        return lambda: tuple(reader.decode(reader.get(pair[f'{role}_path'], role), pair[f'{role}_path'], role)
                             for role in ('lq', 'gt'))

    return sample_patch_pairs([loader(pair) for pair in paths], patch_size, scale, num_patches, seed, with_images,
                              context)


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


def blend_profile(patch_size, scale, overlap=DEFAULT_OVERLAP, trim=DEFAULT_TRIM):
    """(p * scale, p * scale) weights of an HR patch in the engine's blend, for a patch with neighbours on every
    side (:func:`wbsr_runtime.tile_geometry.blend_weights`): what each of its pixels contributes to the stitched
    image."""
    overlap = min(overlap, patch_size - 1)
    trim = min(trim, max(overlap // 2 - 1, 0))
    step = patch_size - overlap
    row = blend_weights([0, step, 2 * step], 2 * step + patch_size, patch_size, scale, trim)[1]
    row = torch.from_numpy(row).float()
    return row[:, None] * row[None, :]


def patch_errors(net, lq, gt, thresholds, *, border=None, overlap=DEFAULT_OVERLAP, trim=DEFAULT_TRIM, batch_size=16,
                 progress=None):
    """The class and every subnet's squared error of every calibration patch, and the full network's with context.

    A patch's error is that of its luma (BT.601, in [0, 1]; the loss is stated in Y-PSNR: a colourful photo's
    chroma errors, which the smaller subnets barely add to, would otherwise shrink every ratio to the full
    network's), each pixel weighted as the engine blends it (:func:`blend_profile`): the stitched image's error is at
    most the weighted sum of its patches' errors (squared error is convex), so class errors measured so hold for
    the engine's output, seams included. LR crops wider than their HR patch (``context`` of
    :func:`sample_patch_pairs`) also give the full network's error on the patch when it sees the pixels around it,
    as on a whole image: what tiling costs (the engine's loss is measured against the full network on the whole
    image).

    Args:
        net (SupernetMixin): The supernet (run in eval mode, without gradients; its mode is
            restored).
        lq (Tensor): LR patches (n, 3, p, p), or crops (n, 3, p + 2c, p + 2c) with the patch in the middle; uint8 or
            float in [0, 1], RGB.
        gt (Tensor): HR patches (n, 3, p * scale, p * scale), same type.
        thresholds (ClassThresholds): Class thresholds (those of ``p`` are used).
        border (int | None): HR pixels left out at each patch edge, all others weighted alike, instead of the
            blend's weights. Default: None (the blend's weights).
        overlap, trim (int): The engine's tiling (LR pixels). Default: the engine's defaults.
        batch_size (int): Patches per forward call. Default: 16.
        progress (Callable[[int, int], None] | None): Called with (patches done, patches) after each batch.

    Returns:
        tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]: (n,) classes 1..K, (n, M) mean squared errors
        (luma in [0, 1]), (n,) the full network's with context (None without), and (n, M) every subnet's mean
        squared deviation from the full network's output with context (without: alone).
    """
    device = next(net.parameters()).device
    dtype = next(net.parameters()).dtype
    scale = net.upscale
    p = gt.shape[-1] // scale
    context = (lq.shape[-1] - p) // 2
    if (context < 0 or lq.shape[-1] != p + 2 * context or lq.shape[-2] != lq.shape[-1] or gt.shape[-2] != gt.shape[-1]
            or gt.shape[-1] % scale or len(lq) != len(gt)):
        raise ValueError(f'{len(lq)} LR crops of {tuple(lq.shape[-2:])} do not hold {len(gt)} HR patches of '
                         f'{tuple(gt.shape[-2:])} (x{scale}) in their middle.')
    thresholds = thresholds.at(p)
    if border is None:
        weights = blend_profile(p, scale, overlap, trim).to(device)
    else:
        weights = torch.zeros(p * scale, p * scale, device=device)
        weights[border:p * scale - border, border:p * scale - border] = 1
    weights = weights / weights.sum()

    def to_float(x):
        x = x.to(device)
        return x.to(dtype) / 255. if x.dtype == torch.uint8 else x.to(dtype)

    channels = gt.shape[1]
    luma = (torch.tensor(LUMA_WEIGHTS_RGB) if channels == 3 else torch.full((channels,), 1 / channels)).to(device)

    def weighted_error(sr, y):
        return (((sr.clamp(0, 1).float() - y) * luma.view(1, -1, 1, 1)).sum(1).pow(2) * weights).sum(dim=(1, 2))

    classes, errors, in_context, deviations = [], [], [], []
    was_training = net.training
    full = len(net.subnets) - 1
    net.eval()
    try:
        with torch.no_grad():
            for start in range(0, lq.shape[0], batch_size):
                crop, y = to_float(lq[start:start + batch_size]), to_float(gt[start:start + batch_size]).float()
                x = crop[..., context:context + p, context:context + p]
                difficulty = patch_difficulty(rgb_to_luma(x.float()), p, [0], [0]).view(-1)
                classes.append(classify(difficulty, thresholds).cpu())
                outputs = [net(x, subnet=m) for m in range(len(net.subnets))]  # clamped where compared
                errors.append(torch.stack([weighted_error(out, y) for out in outputs], 1).double().cpu())
                reference = outputs[-1].clamp(0, 1).float()
                if context:
                    inner = slice(context * scale, (context + p) * scale)
                    reference = net(crop, subnet=full)[..., inner, inner].clamp(0, 1).float()
                    in_context.append(weighted_error(reference, y).double().cpu())
                deviations.append(torch.stack([weighted_error(out, reference) for out in outputs], 1).double().cpu())
                if progress is not None:
                    progress(min(start + batch_size, lq.shape[0]), lq.shape[0])
    finally:
        net.train(was_training)
    return (torch.cat(classes).numpy(), torch.cat(errors).numpy(),
            torch.cat(in_context).numpy() if context else None, torch.cat(deviations).numpy())


def measure_class_errors(net, lq, gt, thresholds, image_ids=None, source=None, **kwargs):
    """:class:`~.class_errors.ClassErrors` of calibration patches (:func:`patch_errors`; ``image_ids``: the image
    of every patch, None: one image each); ``source`` says what was calibrated on."""
    classes, errors, in_context, deviation = patch_errors(net, lq, gt, thresholds, **kwargs)
    ids = np.arange(len(classes)) if image_ids is None else np.asarray(image_ids)
    p = gt.shape[-1] // net.upscale
    context = (lq.shape[-1] - p) // 2
    source = {'patch_size': p, 'patches': int(len(classes)), 'context': context, 'channel': ERROR_CHANNEL,
              'weights': 'blend' if kwargs.get('border') is None else f"border {kwargs['border']}", **(source or {})}
    detail = None
    if p >= 3:  # every LR patch's detail, as the engine measures it on an image's patches
        x = lq[..., context:context + p, context:context + p].cpu()
        x = x.float() / 255. if x.dtype == torch.uint8 else x.float()
        detail = patch_detail(rgb_to_luma(x), p, [0], [0]).reshape(-1).numpy()
    return ClassErrors.from_samples(classes, errors, ids, thresholds.num_classes, source, detail, in_context,
                                    deviation)


def class_error_table(net, lq, gt, thresholds, *, border=None, batch_size=16):
    """Mean squared error (luma in [0, 1]) of every subnet on the calibration patches of every class: K x M
    (:func:`patch_errors`; a class without patches takes its nearest class's)."""
    classes, errors, _, _ = patch_errors(net, lq, gt, thresholds, border=border, batch_size=batch_size)
    num_classes, num_subnets = thresholds.num_classes, errors.shape[1]
    sums = np.zeros((num_classes, num_subnets))
    np.add.at(sums, classes - 1, errors)
    return fill_empty_classes(sums.tolist(), np.bincount(classes - 1, minlength=num_classes).tolist())
