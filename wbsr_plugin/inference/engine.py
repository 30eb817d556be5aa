"""Dynamic inference of a WBSR supernet: tile, project, run each subnet batched, blend.

1. The LR image is covered by square patches of at most ``patch_size`` LR pixels (shrunk to
   the smallest size that needs no more patches); neighbours overlap by at least ``overlap``
   pixels (positions are spread evenly, so the last patch is not squeezed against the border).
2. Every patch's difficulty comes from :func:`wbsr_plugin.data.difficulty.patch_difficulty`
   in one vectorised pass; the projection (:mod:`.projection`) turns it into a subnet.
3. Each subnet used runs once per chunk of its patches, through a stand-alone copy of its
   weights (``extract_subnet``: contiguous tensors run at the speed their FLOPs promise).
4. Outputs are blended with windows that form a partition of unity: inside an overlap, each
   patch's weight is zero over the ``trim`` pixels next to its own edge (where its zero
   padding distorts it) and ramps linearly to one across the rest. The output is exactly
   ``scale`` times the input size for any input size.
"""
import math
import time
from dataclasses import dataclass, field

import torch

from wbsr_plugin.archs.supernet_util import REFERENCE_LQ_SIZE, SupernetMixin
from wbsr_plugin.data.difficulty import patch_difficulty, quantile_thresholds, rgb_to_luma
from .projection import (DEFAULT_NUM_CLASSES, budget_subnets, check_thresholds, class_to_subnet, classify,
                         cost_target_subnets)

DEFAULT_PATCH_SIZE = 64
DEFAULT_OVERLAP = 4
DEFAULT_TRIM = 1
DEFAULT_MAX_BATCH_PIXELS = 64 * 64 * 8


@dataclass
class InferencePlan:
    """Where the patches lie and which subnet serves each.

    Attributes:
        lq_size (tuple[int, int]): LR height and width.
        patch_size (int): Patch side actually used (smaller than asked for small images).
        tops (list[int]): Row offsets of the patch grid.
        lefts (list[int]): Column offsets of the patch grid.
        difficulty (Tensor): Scalar difficulty, shape (len(tops), len(lefts)).
        classes (Tensor | None): Class 1..K per patch (None for a fixed subnet).
        subnets (Tensor): Subnet index per patch, shape (len(tops), len(lefts)).
        thresholds (list[float] | None): Thresholds used.
        threshold_source (str): 'model', 'image-quantiles' or 'none'.
        trim (int): Blending trim actually used (smaller for small patches).
        alpha (float | None): Operating point chosen for a budget.
    """
    lq_size: tuple
    patch_size: int
    tops: list
    lefts: list
    difficulty: torch.Tensor
    classes: torch.Tensor
    subnets: torch.Tensor
    thresholds: list
    threshold_source: str
    trim: int
    alpha: float = None


@dataclass
class InferenceReport:
    """What one image cost.

    Attributes:
        lq_size (tuple[int, int]): LR height and width.
        sr_size (tuple[int, int]): Output height and width.
        num_patches (int): Patches run.
        histogram (list[int]): Patches per subnet, in cost order.
        flops (int): FLOPs spent on all patches (overlaps counted every time they run).
        full_flops (int): FLOPs of the full network on the whole image.
        time_s (float): Wall-clock seconds of :meth:`DynamicInferenceEngine.run`.
        plan (InferencePlan): The tiling and projection.
        subnet_names (list[str]): 'w{width}d{depth}' per subnet, in cost order.
    """
    lq_size: tuple
    sr_size: tuple
    num_patches: int
    histogram: list
    flops: int
    full_flops: int
    time_s: float
    plan: InferencePlan = field(repr=False)
    subnet_names: list = field(repr=False)

    @property
    def gflops(self):
        return self.flops / 1e9

    @property
    def flops_ratio(self):
        """FLOPs spent / FLOPs of the full network on the whole image."""
        return self.flops / self.full_flops

    @property
    def gflops_per_reference_patch(self):
        """Average GFLOPs per 32x32 LR patch of the image (the paper's unit)."""
        h, w = self.lq_size
        return self.gflops * REFERENCE_LQ_SIZE**2 / (h * w)

    def summary(self):
        """One line: size, subnet histogram, FLOPs and time."""
        hist = ' '.join(f'{name}:{n}' for name, n in zip(self.subnet_names, self.histogram) if n)
        (h, w), (sh, sw) = self.lq_size, self.sr_size
        return (f'{w}x{h} -> {sw}x{sh} | {self.num_patches} patches [{hist}] | {self.gflops:.1f} GFLOPs '
                f'({100 * self.flops_ratio:.1f}% of full) | {self.time_s:.2f} s')


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
    coords = torch.arange(out_len, dtype=torch.float64) + 0.5
    raw = []
    for i, pos in enumerate(positions):
        left = coords if pos > 0 else torch.full_like(coords, math.inf)
        right = out_len - coords if pos + patch_size < length else torch.full_like(coords, math.inf)
        distance = torch.minimum(left, right)
        neighbours = [positions[j] for j in (i - 1, i + 1) if 0 <= j < len(positions)]
        ramp = max((min(patch_size - abs(pos - n) for n in neighbours) if neighbours else 0) - 2 * trim, 1) * scale
        raw.append(((distance - trim * scale) / ramp).clamp(0, 1))
    raw = torch.stack(raw)
    total = torch.zeros(length * scale, dtype=torch.float64)
    for pos, weight in zip(positions, raw):
        total[pos * scale:(pos + patch_size) * scale] += weight
    if (total <= 0).any():
        raise ValueError(f'overlap too small for trim={trim}: some pixels get no weight.')
    return torch.stack([weight / total[pos * scale:(pos + patch_size) * scale] for pos, weight in zip(positions, raw)])


def tile_geometry(h, w, patch_size, overlap, trim):
    """``(patch, tops, lefts, trim)`` of an h x w LR image: the fitted patch side, the patch offsets
    along each axis and the blending trim, lowered for small patches."""
    patch = fitted_patch_size(h, w, patch_size, overlap)
    overlap = min(overlap, patch // 2)
    trim = min(trim, max(0, (overlap - 1) // 2))
    return patch, patch_positions(h, patch, overlap), patch_positions(w, patch, overlap), trim


def stitch_patches(outputs, lq_size, patch, tops, lefts, trim, scale):
    """Blend SR patches (N, c, p*s, p*s) in grid order into the SR image (1, c, h*s, w*s)."""
    (h, w), p, s = lq_size, patch, scale
    wy = blend_weights(tops, h, p, s, trim).to(device=outputs.device, dtype=torch.float32)
    wx = blend_weights(lefts, w, p, s, trim).to(device=outputs.device, dtype=torch.float32)
    sr = torch.zeros(outputs.shape[1], h * s, w * s, device=outputs.device, dtype=torch.float32)
    n = 0
    for i, top in enumerate(tops):
        for j, left in enumerate(lefts):
            window = wy[i].view(-1, 1) * wx[j].view(1, -1)
            sr[:, top * s:(top + p) * s, left * s:(left + p) * s] += outputs[n].float() * window
            n += 1
    return sr.unsqueeze(0)


class DynamicInferenceEngine:
    """Gradient-projection dynamic inference of a WBSR supernet (WBSR Sec. 4.2).

    Paper: Rethinking Imbalance in Image Super-Resolution for Efficient Inference (NeurIPS 2024).
    At most one of ``budget``, ``target_gflops`` and ``subnet`` may be set; with none, Eq. 15
    maps each class to a subnet.

    Args:
        net (WBSRResNet | WBSRRCAN): The supernet. Its weights may change between calls (training):
            the extracted subnets are rebuilt when a parameter changes, or on :meth:`refresh`.
        thresholds (list[float] | None): K - 1 class thresholds on the scalar difficulty (from the
            checkpoint). None: per-image quantiles of the patch difficulties. Default: None.
        patch_size (int): Largest patch side in LR pixels (see :func:`fitted_patch_size`). Default: 64.
        overlap (int): Least overlap of neighbouring patches in LR pixels. Default: 4.
        trim (int): LR pixels next to a patch edge inside an overlap that get no weight; lowered
            to ``(overlap - 1) // 2`` when the overlap is smaller than ``2 * trim + 1``. Default: 1.
        num_classes (int): K; with ``thresholds`` it must equal ``len(thresholds) + 1``. Default: 10.
        budget (float | None): Target fraction in (0, 1] of the FLOPs of the full network on the
            whole image, met per image. Default: None.
        target_gflops (float | None): C_t of Eq. 16 in GFLOPs per 32x32 LR patch. Default: None.
        alpha (float): alpha of Eq. 16 (with ``target_gflops``). Default: 1.
        subnet (int | None): Run every patch through this subnet index. Default: None.
        max_batch_pixels (int): LR pixels per forward call (bounds memory). Default: 32768.
        channels_last (bool): Run the subnets in channels-last memory format (1.3x faster on CPU here,
            docs/inference.md). Default: True.
    """

    def __init__(self,
                 net,
                 *,
                 thresholds=None,
                 patch_size=DEFAULT_PATCH_SIZE,
                 overlap=DEFAULT_OVERLAP,
                 trim=DEFAULT_TRIM,
                 num_classes=DEFAULT_NUM_CLASSES,
                 budget=None,
                 target_gflops=None,
                 alpha=1.,
                 subnet=None,
                 max_batch_pixels=DEFAULT_MAX_BATCH_PIXELS,
                 channels_last=True):
        if not isinstance(net, SupernetMixin):
            raise TypeError(f'net must be a WBSR supernet (WBSRResNet or WBSRRCAN), got {type(net).__name__}.')
        if not isinstance(patch_size, int) or patch_size < 2:
            raise ValueError(f'patch_size must be an integer >= 2, got {patch_size!r}.')
        if not isinstance(overlap, int) or not 0 <= overlap < patch_size:
            raise ValueError(f'overlap must be an integer in [0, patch_size), got {overlap!r}.')
        if not isinstance(trim, int) or trim < 0:
            raise ValueError(f'trim must be an integer >= 0, got {trim!r}.')
        if sum(option is not None for option in (budget, target_gflops, subnet)) > 1:
            raise ValueError('set at most one of budget, target_gflops and subnet.')
        if budget is not None and not (isinstance(budget, (int, float)) and 0 < budget <= 1):
            raise ValueError(f'budget must be a fraction of the full FLOPs in (0, 1], got {budget!r}.')
        if target_gflops is not None and not target_gflops > 0:
            raise ValueError(f'target_gflops must be positive, got {target_gflops!r}.')
        if not alpha > 0:
            raise ValueError(f'alpha must be positive, got {alpha!r}.')
        if subnet is not None:
            subnet = net.get_subnet(subnet).index
        if thresholds is not None:
            thresholds = check_thresholds(thresholds)
            if len(thresholds) + 1 != num_classes:
                raise ValueError(f'{len(thresholds)} thresholds define {len(thresholds) + 1} classes, '
                                 f'but num_classes={num_classes}.')
        if not isinstance(max_batch_pixels, int) or max_batch_pixels < 1:
            raise ValueError(f'max_batch_pixels must be a positive integer, got {max_batch_pixels!r}.')
        self.net = net
        self.thresholds = thresholds
        self.patch_size = patch_size
        self.overlap = overlap
        self.trim = trim
        self.num_classes = num_classes
        self.budget = budget
        self.target_gflops = target_gflops
        self.alpha = alpha
        self.subnet = subnet
        self.max_batch_pixels = max_batch_pixels
        self.channels_last = channels_last
        self.scale = net.upscale
        self.subnet_names = [f'w{s.width}d{s.depth}' for s in net.subnets]
        self._cache = {}
        self._fingerprint = None

    # ----------------------------------------------------------------------------------------
    def refresh(self):
        """Forget the extracted subnets (they are rebuilt from the supernet on the next run)."""
        self._cache.clear()
        self._fingerprint = None

    def _weights_fingerprint(self):
        params = list(self.net.parameters())
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)

    def subnet_module(self, index):
        """The stand-alone network of subnet ``index`` (cached until the supernet's weights change)."""
        fingerprint = self._weights_fingerprint()
        if fingerprint != self._fingerprint:
            self._cache.clear()
            self._fingerprint = fingerprint
        if index not in self._cache:
            with torch.inference_mode(False), torch.no_grad():
                module = self.net.extract_subnet(index)
            for p in module.parameters():
                p.requires_grad_(False)
            if self.channels_last:
                module = module.to(memory_format=torch.channels_last)
            self._cache[index] = module
        return self._cache[index]

    # ----------------------------------------------------------------------------------------
    def plan(self, lq):
        """Tile ``lq`` (1, c, h, w) and choose the subnet of every patch."""
        if lq.dim() != 4 or lq.shape[0] != 1:
            raise ValueError(f'expected an LR tensor of shape (1, c, h, w), got {tuple(lq.shape)}.')
        h, w = lq.shape[-2:]
        patch, tops, lefts, trim = tile_geometry(h, w, self.patch_size, self.overlap, self.trim)
        if patch >= 2:
            difficulty = patch_difficulty(rgb_to_luma(lq[0].detach().float().cpu()), patch, tops, lefts)
        else:
            difficulty = torch.zeros(len(tops), len(lefts), dtype=torch.float64)
        num_subnets = len(self.net.subnets)
        thresholds, source, classes, alpha = None, 'none', None, None
        if self.subnet is not None:
            subnets = torch.full(difficulty.shape, self.subnet, dtype=torch.long)
        else:
            if self.thresholds is not None:
                thresholds, source = self.thresholds, 'model'
            else:
                thresholds, source = quantile_thresholds(difficulty, self.num_classes), 'image-quantiles'
            classes = classify(difficulty, thresholds)
            if self.budget is not None:
                costs = [self.net.flops(patch, patch, subnet=s) for s in self.net.subnets]
                allowed = self.budget * self.net.flops(h, w)
                subnets, alpha = budget_subnets(classes.flatten(), difficulty.flatten(), costs, allowed,
                                                self.num_classes)
                subnets = subnets.view(difficulty.shape)
            elif self.target_gflops is not None:
                costs = [s.flops / 1e9 for s in self.net.subnets]
                subnets = cost_target_subnets(classes, costs, self.target_gflops, self.alpha, self.num_classes)
            else:
                subnets = class_to_subnet(classes, self.num_classes, num_subnets)
        return InferencePlan((h, w), patch, tops, lefts, difficulty, classes, subnets, thresholds, source, trim, alpha)

    def extract_patches(self, lq, plan, indices):
        """Patches number ``indices`` (row-major over the grid) of ``lq``, shape (n, c, p, p)."""
        p = plan.patch_size
        offsets = torch.arange(p, device=lq.device)
        tops = torch.as_tensor(plan.tops, device=lq.device)
        lefts = torch.as_tensor(plan.lefts, device=lq.device)
        rows = (tops[indices // len(plan.lefts)].unsqueeze(1) + offsets)  # (n, p)
        cols = (lefts[indices % len(plan.lefts)].unsqueeze(1) + offsets)
        return lq[0][:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3).contiguous()

    def run_patches(self, lq, plan):
        """Run every subnet used once per chunk; returns SR patches (N, c, p*s, p*s) in grid order."""
        flat = plan.subnets.flatten().to(lq.device)
        p, s = plan.patch_size, self.scale
        module_ref = self.subnet_module(int(flat[0]))
        param = next(module_ref.parameters())
        outputs = torch.empty(flat.numel(), lq.shape[1], p * s, p * s, device=param.device, dtype=param.dtype)
        chunk = max(1, self.max_batch_pixels // (p * p))
        for index in flat.unique().tolist():
            module = self.subnet_module(index)
            members = (flat == index).nonzero().flatten()
            for start in range(0, members.numel(), chunk):
                ids = members[start:start + chunk]
                batch = self.extract_patches(lq, plan, ids).to(device=param.device, dtype=param.dtype)
                if self.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                outputs[ids.to(param.device)] = module(batch)
        return outputs

    def stitch(self, outputs, plan):
        """Blend SR patches (N, c, p*s, p*s) in grid order into the SR image (1, c, h*s, w*s)."""
        return stitch_patches(outputs, plan.lq_size, plan.patch_size, plan.tops, plan.lefts, plan.trim, self.scale)

    def flops(self, plan):
        """FLOPs spent by ``plan`` (every patch counted in full, overlaps included)."""
        counts = torch.bincount(plan.subnets.flatten(), minlength=len(self.net.subnets)).tolist()
        return sum(n * self.net.flops(plan.patch_size, plan.patch_size, subnet=i) for i, n in enumerate(counts) if n)

    def run(self, lq):
        """Super-resolve one image.

        Args:
            lq (Tensor): LR image (1, c, h, w) in [0, 1], any size.

        Returns:
            tuple[Tensor, InferenceReport]: SR image (1, c, h * scale, w * scale) in float32 on
            the supernet's device (not clamped), and the cost report.
        """
        start = time.perf_counter()
        with torch.inference_mode():
            lq = lq.to(device=next(self.net.parameters()).device, dtype=torch.float32)
            h, w = lq.shape[-2:]
            padded = lq
            if min(h, w) < 2:  # the difficulty needs 2 pixels; pad tiny images and crop the output
                padded = torch.nn.functional.pad(lq, (0, max(0, 2 - w), 0, max(0, 2 - h)), mode='replicate')
            plan = self.plan(padded)
            sr = self.stitch(self.run_patches(padded, plan), plan)[..., :h * self.scale, :w * self.scale]
            if sr.device.type == 'cuda':
                torch.cuda.synchronize(sr.device)
        elapsed = time.perf_counter() - start
        histogram = torch.bincount(plan.subnets.flatten(), minlength=len(self.net.subnets)).tolist()
        report = InferenceReport((h, w), tuple(sr.shape[-2:]), plan.subnets.numel(), histogram, self.flops(plan),
                                 self.net.flops(h, w), elapsed, plan, self.subnet_names)
        return sr, report

    def __call__(self, lq):
        return self.run(lq)[0]
