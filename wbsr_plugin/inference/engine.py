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

from wbsr_plugin.archs.supernet_util import REFERENCE_LQ_SIZE, SupernetMixin, supernet_types
from wbsr_plugin.data.difficulty import patch_difficulty, quantile_threshold_tensor, rgb_to_luma

from .class_thresholds import DEFAULT_NUM_CLASSES, ClassThresholds, check_class_errors
from .cuda_graphs import GraphedSubnet
from .projection import (
    apply_levels,
    budget_levels,
    calibrated_levels,
    class_subnet_table,
    classify,
)

DEFAULT_PATCH_SIZE = 64
DEFAULT_OVERLAP = 4
DEFAULT_TRIM = 1
DEFAULT_MAX_BATCH_PIXELS = 64 * 64 * 8  # CPU: larger batches ran no faster (docs/inference.md)
# CUDA batch sizing: bytes per patch ~ factor x width x (patch x scale)^2 x element size, within a share of free memory
CUDA_ACTIVATION_FACTOR = 6
CUDA_MEMORY_SHARE = 0.5


@dataclass
class InferencePlan:
    """Where the patches lie, which subnet serves each, and whether the whole image runs instead.

    Attributes:
        lq_size (tuple[int, int]): LR height and width.
        patch_size (int): Patch side actually used (smaller than asked for small images).
        tops (list[int]): Row offsets of the patch grid.
        lefts (list[int]): Column offsets of the patch grid.
        difficulty (Tensor): Scalar difficulty, shape (len(tops), len(lefts)), on the input's device.
        classes (Tensor | None): Class 1..K per patch (None for a fixed subnet).
        subnets (Tensor): Subnet index per patch, shape (len(tops), len(lefts)).
        thresholds (list[float] | None): Thresholds used (at ``patch_size``).
        threshold_source (str): 'model', 'model-by-patch-size', 'image-quantiles' or 'none'.
        trim (int): Blending trim actually used (smaller for small patches).
        alpha (float | None): Operating point chosen for a budget.
        histogram (list[int]): Patches per subnet of the tiled plan, in cost order.
        tiled_flops (int): FLOPs the tiled plan costs (overlaps counted every time they run).
        whole_image_subnet (int | None): When set, the tiled plan would cost more than allowed (the full
            network on the whole image, or the budget), or is expected to do worse (``class_errors``), and
            the whole image runs through this subnet.
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
    histogram: list = None
    tiled_flops: int = None
    whole_image_subnet: int = None


@dataclass
class InferenceReport:
    """What one image cost.

    Attributes:
        lq_size (tuple[int, int]): LR height and width.
        sr_size (tuple[int, int]): Output height and width.
        num_patches (int): Patches run (1 when the whole image ran).
        histogram (list[int]): Patches per subnet, in cost order.
        flops (int): FLOPs spent (overlaps counted every time they run).
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
    def whole_image(self):
        """True when the whole image ran through one subnet instead of the tiled plan."""
        return self.plan.whole_image_subnet is not None

    @property
    def gflops_per_reference_patch(self):
        """Average GFLOPs per 32x32 LR patch of the image (the paper's unit)."""
        h, w = self.lq_size
        return self.gflops * REFERENCE_LQ_SIZE**2 / (h * w)

    def summary(self):
        """One line: size, subnet histogram (or the whole-image subnet), FLOPs and time."""
        (h, w), (sh, sw) = self.lq_size, self.sr_size
        if self.whole_image:
            tiled = 100 * self.plan.tiled_flops / self.full_flops
            what = (f'whole image through {self.subnet_names[self.plan.whole_image_subnet]} '
                    f'(tiled plan: {tiled:.1f}% of full)')
        else:
            hist = ' '.join(f'{name}:{n}' for name, n in zip(self.subnet_names, self.histogram) if n)
            what = f'{self.num_patches} patches [{hist}]'
        return (f'{w}x{h} -> {sw}x{sh} | {what} | {self.gflops:.1f} GFLOPs '
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


class BlendGeometry:
    """Blending weights and output indices of one tiling, built once and reused (see :func:`stitch_patches`).

    Args:
        lq_size (tuple[int, int]): LR height and width.
        patch (int): Patch side in LR pixels.
        tops (Sequence[int]): Row offsets of the patch grid.
        lefts (Sequence[int]): Column offsets of the patch grid.
        trim (int): Blending trim in LR pixels.
        scale (int): Upscale factor.
        device (torch.device): Where the SR patches live.
    """

    def __init__(self, lq_size, patch, tops, lefts, trim, scale, device):
        (h, w), p, s = lq_size, patch, scale
        self.lq_size, self.patch, self.scale = (h, w), p, s
        self.tops, self.lefts = list(tops), list(lefts)
        self.row_weights = blend_weights(self.tops, h, p, s, trim).to(device=device, dtype=torch.float32)
        self.col_weights = blend_weights(self.lefts, w, p, s, trim).to(device=device, dtype=torch.float32)
        offsets = torch.arange(p * s, device=device)
        self.row_index = (torch.as_tensor(self.tops, device=device).view(-1, 1) * s + offsets).flatten()
        self.col_index = (torch.as_tensor(self.lefts, device=device).view(-1, 1) * s + offsets).flatten()

    def stitch_vectorised(self, outputs):
        """Weight all patches at once, then add them into place with two ``index_add_`` (few kernel launches)."""
        (h, w), ps, s = self.lq_size, self.patch * self.scale, self.scale
        rows, cols, c = len(self.tops), len(self.lefts), outputs.shape[1]
        weighted = (outputs.float().view(rows, cols, c, ps, ps) * self.row_weights.view(rows, 1, 1, ps, 1) *
                    self.col_weights.view(1, cols, 1, 1, ps))
        columns = outputs.new_zeros((cols, c, h * s, ps), dtype=torch.float32)
        columns.index_add_(2, self.row_index, weighted.permute(1, 2, 0, 3, 4).reshape(cols, c, rows * ps, ps))
        sr = outputs.new_zeros((c, h * s, w * s), dtype=torch.float32)
        sr.index_add_(2, self.col_index, columns.permute(1, 2, 0, 3).reshape(c, h * s, cols * ps))
        return sr.unsqueeze(0)

    def stitch_per_patch(self, outputs):
        """Add the patches one by one (on CPU the fastest: every add stays within one patch's memory)."""
        (h, w), p, s = self.lq_size, self.patch, self.scale
        sr = outputs.new_zeros((outputs.shape[1], h * s, w * s), dtype=torch.float32)
        n = 0
        for i, top in enumerate(self.tops):
            for j, left in enumerate(self.lefts):
                window = self.row_weights[i].view(-1, 1) * self.col_weights[j].view(1, -1)
                sr[:, top * s:(top + p) * s, left * s:(left + p) * s] += outputs[n].float() * window
                n += 1
        return sr.unsqueeze(0)

    def stitch(self, outputs, vectorised=None):
        """Blend SR patches (N, c, p*s, p*s) in grid order into the SR image (1, c, h*s, w*s).

        ``vectorised`` None picks by device: per patch on CPU, vectorised elsewhere (measured,
        docs/inference.md).
        """
        if vectorised is None:
            vectorised = outputs.device.type != 'cpu'
        return self.stitch_vectorised(outputs) if vectorised else self.stitch_per_patch(outputs)


def stitch_patches(outputs, lq_size, patch, tops, lefts, trim, scale, vectorised=None):
    """Blend SR patches (N, c, p*s, p*s) in grid order into the SR image (1, c, h*s, w*s)."""
    geometry = BlendGeometry(lq_size, patch, tops, lefts, trim, scale, outputs.device)
    return geometry.stitch(outputs, vectorised)


class DynamicInferenceEngine:
    """Gradient-projection dynamic inference of a WBSR supernet (WBSR Sec. 4.2).

    Paper: Rethinking Imbalance in Image Super-Resolution for Efficient Inference (NeurIPS 2024).
    At most one of ``budget``, ``target_gflops`` and ``subnet`` may be set; with none, Eq. 15
    maps each class to a subnet. The plan stays on the input's device; the only host transfer is
    the class histogram (K numbers). Each used subnet runs on all its patches in as few calls as
    ``max_batch_pixels`` allows.

    Never more than the plain network: when the tiled plan would cost more FLOPs than the full
    network on the whole image (with ``budget``: more than the budget), the whole image runs through
    one subnet instead: the full network, the best subnet within the budget, or ``subnet``.

    Args:
        net (SupernetMixin): The supernet. Its weights may change between calls (training):
            the extracted subnets are rebuilt when a parameter changes, or on :meth:`refresh`.
        thresholds (list[float] | dict[int, list[float]] | ClassThresholds | None): K - 1 class
            thresholds on the scalar difficulty, or a table of them per LR patch side (checkpoints store
            one; the thresholds of the patch size in use are interpolated), or their value
            (:class:`~.class_thresholds.ClassThresholds`, with class errors if it holds them). None:
            per-image quantiles of the patch difficulties. Default: None.
        patch_size (int): Largest patch side in LR pixels (see :func:`fitted_patch_size`). Default: 64.
        overlap (int): Least overlap of neighbouring patches in LR pixels. Default: 4.
        trim (int): LR pixels next to a patch edge inside an overlap that get no weight; lowered
            to ``(overlap - 1) // 2`` when the overlap is smaller than ``2 * trim + 1``. Default: 1.
        num_classes (int | None): K; with ``thresholds`` it must equal their count + 1. Default: None (the
            thresholds' count + 1, or 10 without thresholds).
        budget (float | None): Target fraction in (0, 1] of the FLOPs of the full network on the
            whole image, met per image. Default: None.
        target_gflops (float | None): C_t of Eq. 16 in GFLOPs per 32x32 LR patch. Default: None.
        alpha (float): alpha of Eq. 16 (with ``target_gflops``). Default: 1.
        subnet (int | None): Run every patch through this subnet index. Default: None.
        max_batch_pixels (int | None): LR pixels per forward call. None: 32768 on CPU; on CUDA, sized
            from the free memory. Default: None.
        channels_last (bool): Run the subnets in channels-last memory format (1.3x faster on CPU here,
            docs/inference.md). Default: True.
        whole_image_fallback (bool): Run the whole image when tiling would cost more (see above);
            False always tiles (to measure tiling itself). Default: True.
        cuda_graphs (bool): On CUDA, replay each subnet's forward as a CUDA graph (one launch instead
            of one per layer; batch sizes bucketed to powers of two). Ignored on other devices.
            Default: False.
        class_errors (list[list[float]] | None): Expected error of each class (rows) through each subnet
            (columns), as checkpoints store it (``inference/calibration.py``); replaces those of a
            ``ClassThresholds``. With ``budget``, patches move
            to bigger subnets by error saved per FLOP (:func:`~.projection.calibrated_levels`) instead of
            by Eq. 16, and the whole image runs through one subnet when that is expected to do better
            than the tiled plan (small images, where overlaps eat the budget). Default: None.
    """

    def __init__(self,
                 net,
                 *,
                 thresholds=None,
                 patch_size=DEFAULT_PATCH_SIZE,
                 overlap=DEFAULT_OVERLAP,
                 trim=DEFAULT_TRIM,
                 num_classes=None,
                 budget=None,
                 target_gflops=None,
                 alpha=1.,
                 subnet=None,
                 max_batch_pixels=None,
                 channels_last=True,
                 whole_image_fallback=True,
                 cuda_graphs=False,
                 class_errors=None):
        if not isinstance(net, SupernetMixin):
            raise TypeError(f'net must be a WBSR supernet (one of {supernet_types()}), got {type(net).__name__}.')
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
        thresholds = ClassThresholds.of(thresholds, class_errors=class_errors, num_classes=num_classes,
                                        num_subnets=len(net.subnets))
        if thresholds is not None:
            num_classes = thresholds.num_classes
        num_classes = DEFAULT_NUM_CLASSES if num_classes is None else num_classes
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}.')
        if thresholds is not None:
            class_errors = thresholds.class_error_lists()
        elif class_errors is not None:
            class_errors = check_class_errors(class_errors, num_classes, len(net.subnets))
        if max_batch_pixels is not None and (not isinstance(max_batch_pixels, int) or max_batch_pixels < 1):
            raise ValueError(f'max_batch_pixels must be a positive integer or None, got {max_batch_pixels!r}.')
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
        self.whole_image_fallback = whole_image_fallback
        self.cuda_graphs = cuda_graphs
        self.class_errors = class_errors
        self.scale = net.upscale
        self.subnet_names = [s.name for s in net.subnets]
        self._cache = {}
        self._graphs = {}
        self._graph_pool = None
        self._cuda_batch = {}
        self._fingerprint = None
        self._flops_cache = {}
        self._geometry_cache = {}
        num_subnets = len(net.subnets)
        if target_gflops is not None:
            self._class_table = class_subnet_table(num_classes, num_subnets, [s.flops / 1e9 for s in net.subnets],
                                                   target_gflops, alpha)
        else:
            self._class_table = class_subnet_table(num_classes, num_subnets)

    # ----------------------------------------------------------------------------------------
    def refresh(self):
        """Forget the extracted subnets (they are rebuilt from the supernet on the next run)."""
        self._cache.clear()
        self._graphs.clear()
        self._fingerprint = None

    def _weights_fingerprint(self):
        params = list(self.net.parameters())
        return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)

    def drop_stale_subnets(self):
        """Forget the extracted subnets if a parameter of the supernet changed since they were made
        (checked once per :meth:`run`)."""
        fingerprint = self._weights_fingerprint()
        if fingerprint != self._fingerprint:
            self.refresh()
            self._fingerprint = fingerprint

    def subnet_module(self, index):
        """The stand-alone network of subnet ``index`` (cached; see :meth:`drop_stale_subnets`)."""
        if index not in self._cache:
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, also when called from run()
                module = self.net.extract_subnet(index)
                if self.channels_last:
                    module = module.to(memory_format=torch.channels_last)
            for p in module.parameters():
                p.requires_grad_(False)
            self._cache[index] = module
        return self._cache[index]

    def subnet_runner(self, index, chunk):
        """What runs subnet ``index`` on a batch: its module, or its CUDA graphs (``cuda_graphs``)."""
        module = self.subnet_module(index)
        if not self.cuda_graphs or next(module.parameters()).device.type != 'cuda':
            return module
        key = (index, chunk)
        if key not in self._graphs:
            if self._graph_pool is None:
                self._graph_pool = torch.cuda.graph_pool_handle()
            self._graphs[key] = GraphedSubnet(module, self._graph_pool, chunk)
        return self._graphs[key]

    def subnet_flops(self, h, w, subnet):
        """FLOPs of subnet ``subnet`` on an h x w LR input (cached)."""
        key = (h, w, subnet)
        if key not in self._flops_cache:
            self._flops_cache[key] = self.net.flops(h, w, subnet=subnet)
        return self._flops_cache[key]

    def blend_geometry(self, plan, device):
        """The cached :class:`BlendGeometry` of ``plan``'s tiling on ``device``."""
        key = (plan.lq_size, plan.patch_size, tuple(plan.tops), tuple(plan.lefts), plan.trim, device)
        if key not in self._geometry_cache:
            if len(self._geometry_cache) >= 32:
                self._geometry_cache.clear()
            self._geometry_cache[key] = BlendGeometry(plan.lq_size, plan.patch_size, plan.tops, plan.lefts, plan.trim,
                                                      self.scale, device)
        return self._geometry_cache[key]

    # ----------------------------------------------------------------------------------------
    def _thresholds_for(self, patch):
        return self.thresholds.at(patch), self.thresholds.source

    def plan(self, lq):
        """Tile ``lq`` (1, c, h, w) and choose the subnet of every patch (on ``lq``'s device)."""
        if lq.dim() != 4 or lq.shape[0] != 1:
            raise ValueError(f'expected an LR tensor of shape (1, c, h, w), got {tuple(lq.shape)}.')
        h, w = lq.shape[-2:]
        device = lq.device
        patch, tops, lefts, trim = tile_geometry(h, w, self.patch_size, self.overlap, self.trim)
        if patch >= 2:
            difficulty = patch_difficulty(rgb_to_luma(lq[0].detach().float()), patch, tops, lefts)
        else:
            difficulty = torch.zeros(len(tops), len(lefts), dtype=torch.float64, device=device)
        num_subnets = len(self.net.subnets)
        costs = [self.subnet_flops(patch, patch, s) for s in range(num_subnets)]
        full_flops = self.subnet_flops(h, w, num_subnets - 1)
        thresholds, source, classes, alpha = None, 'none', None, None
        if self.subnet is not None:
            subnets = torch.full(difficulty.shape, self.subnet, dtype=torch.long, device=device)
            histogram = [0] * num_subnets
            histogram[self.subnet] = difficulty.numel()
        else:
            if self.thresholds is not None:
                thresholds, source = self._thresholds_for(patch)
            else:
                thresholds, source = quantile_threshold_tensor(difficulty, self.num_classes), 'image-quantiles'
            classes = classify(difficulty, thresholds)
            class_counts = torch.bincount(classes.flatten(), minlength=self.num_classes + 1)[1:].tolist()
            if torch.is_tensor(thresholds):  # after the histogram's transfer, this waits for nothing
                thresholds = thresholds.tolist()
            steps = []
            if self.budget is not None:
                if self.class_errors is not None:
                    levels, steps, alpha = calibrated_levels(class_counts, costs, self.budget * full_flops,
                                                             self.class_errors)
                else:
                    levels, steps, alpha = budget_levels(class_counts, costs, self.budget * full_flops)
            else:
                levels = self._class_table
            subnets = apply_levels(classes, difficulty, levels, steps)
            histogram = [0] * num_subnets
            for level, count in zip(levels, class_counts):
                histogram[level] += count
            for _, source, target, count in steps:
                histogram[source] -= count
                histogram[target] += count
        tiled_flops = sum(n * cost for n, cost in zip(histogram, costs))
        whole = self._whole_image_subnet(h, w, tiled_flops, full_flops)
        if whole is None and self.budget is not None and self.class_errors is not None and classes is not None:
            whole = self._better_whole_image_subnet(h, w, class_counts, levels, steps, full_flops)
        return InferencePlan((h, w), patch, tops, lefts, difficulty, classes, subnets, thresholds, source, trim, alpha,
                             histogram, tiled_flops, whole)

    def _whole_image_subnet(self, h, w, tiled_flops, full_flops):
        """The subnet that runs the whole image when tiling costs more than allowed, else None."""
        if not self.whole_image_fallback:
            return None
        allowed = full_flops if self.budget is None else self.budget * full_flops
        if tiled_flops <= allowed:
            return None
        if self.subnet is not None:
            return self.subnet
        if self.budget is None:
            return len(self.net.subnets) - 1
        fitting = [s for s in range(len(self.net.subnets)) if self.subnet_flops(h, w, s) <= allowed]
        return fitting[-1] if fitting else 0

    def _better_whole_image_subnet(self, h, w, class_counts, levels, steps, full_flops):
        """The subnet within the budget whose expected error on the whole image (``class_errors`` over the
        patches) is below the tiled plan's, else None (small images: the tiling's overlaps eat the budget)."""
        errors = self.class_errors
        at_level = [{level: count} for level, count in zip(levels, class_counts)]
        for k, source, target, count in steps:
            at_level[k - 1][source] -= count
            at_level[k - 1][target] = at_level[k - 1].get(target, 0) + count
        tiled = sum(n * errors[k][m] for k, counts in enumerate(at_level) for m, n in counts.items())
        allowed = self.budget * full_flops
        best, best_error = None, tiled
        for m in range(len(self.net.subnets)):
            if self.subnet_flops(h, w, m) <= allowed:
                error = sum(n * row[m] for n, row in zip(class_counts, errors))
                if error < best_error:
                    best, best_error = m, error
        return best

    def extract_patches(self, lq, plan, indices=None):
        """Patches number ``indices`` (row-major over the grid; all when None) of ``lq``, shape (n, c, p, p)."""
        p = plan.patch_size
        offsets = torch.arange(p, device=lq.device)
        tops = torch.as_tensor(plan.tops, device=lq.device)
        lefts = torch.as_tensor(plan.lefts, device=lq.device)
        if indices is None:
            rows = (tops.unsqueeze(1) + offsets).repeat_interleave(len(plan.lefts), dim=0)
            cols = (lefts.unsqueeze(1) + offsets).repeat(len(plan.tops), 1)
        else:
            rows = (tops[indices // len(plan.lefts)].unsqueeze(1) + offsets)  # (n, p)
            cols = (lefts[indices % len(plan.lefts)].unsqueeze(1) + offsets)
        return lq[0][:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3).contiguous()

    def batch_patches(self, index, patch, param):
        """Patches of ``patch`` x ``patch`` LR pixels per forward call of subnet ``index``."""
        if self.max_batch_pixels is not None:
            return max(1, self.max_batch_pixels // (patch * patch))
        if param.device.type != 'cuda':
            return max(1, DEFAULT_MAX_BATCH_PIXELS // (patch * patch))
        key = (index, patch, param.dtype, param.device)
        if key not in self._cuda_batch:  # sized once, so batch shapes (and CUDA graphs) stay the same
            free, _ = torch.cuda.mem_get_info(param.device)
            # the largest activations live at the output resolution: a few tensors of width x (p s)^2
            spec = self.net.subnets[index]
            per_patch = CUDA_ACTIVATION_FACTOR * max(spec.width, 3) * (patch * self.scale)**2 * param.element_size()
            self._cuda_batch[key] = max(1, int(free * CUDA_MEMORY_SHARE) // per_patch)
        return self._cuda_batch[key]

    def patch_batches(self, lq, plan):
        """The forward calls of ``plan``: ``[(runner, patch indices, batch), ...]`` (each used subnet on all its
        patches, in as few calls as :meth:`batch_patches` allows) and the empty output tensor (N, c, p*s, p*s)."""
        p, s = plan.patch_size, self.scale
        used = [i for i, n in enumerate(plan.histogram) if n]
        param = next(self.subnet_module(used[0]).parameters())
        patches = self.extract_patches(lq, plan).to(dtype=param.dtype)
        outputs = torch.empty(patches.shape[0], lq.shape[1], p * s, p * s, device=param.device, dtype=param.dtype)
        order = plan.subnets.flatten().argsort(stable=True)
        batches, start = [], 0
        for index, count in enumerate(plan.histogram):
            if not count:
                continue
            members = order[start:start + count]
            start += count
            chunk = self.batch_patches(index, p, param)
            runner = self.subnet_runner(index, chunk)
            for first in range(0, count, chunk):
                ids = members[first:first + chunk]
                batch = patches if ids.numel() == patches.shape[0] else patches[ids]  # one subnet: no gather
                if self.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                batches.append((runner, ids, batch))
        return batches, outputs

    def run_patches(self, lq, plan):
        """Run every subnet used on all its patches (batched); returns SR patches (N, c, p*s, p*s) in grid order."""
        batches, outputs = self.patch_batches(lq, plan)
        for runner, ids, batch in batches:
            outputs[ids] = runner(batch)
        return outputs

    def run_whole(self, lq, index):
        """Subnet ``index`` on the whole image; returns the SR image (1, c, h*s, w*s) in float32."""
        module = self.subnet_module(index)
        param = next(module.parameters())
        x = lq.to(dtype=param.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return module(x).float()

    def stitch(self, outputs, plan):
        """Blend SR patches (N, c, p*s, p*s) in grid order into the SR image (1, c, h*s, w*s)."""
        return self.blend_geometry(plan, outputs.device).stitch(outputs)

    def flops(self, plan):
        """FLOPs spent by ``plan``: the whole image through its subnet, or every patch counted in full."""
        if plan.whole_image_subnet is not None:
            return self.subnet_flops(*plan.lq_size, plan.whole_image_subnet)
        return plan.tiled_flops

    def run(self, lq):
        """Super-resolve one image.

        Args:
            lq (Tensor): LR image (1, c, h, w) in [0, 1], any size.

        Returns:
            tuple[Tensor, InferenceReport]: SR image (1, c, h * scale, w * scale) in float32 on
            the supernet's device (not clamped), and the cost report.
        """
        start = time.perf_counter()
        self.drop_stale_subnets()
        with torch.inference_mode():
            lq = lq.to(device=next(self.net.parameters()).device, dtype=torch.float32)
            h, w = lq.shape[-2:]
            padded = lq
            if min(h, w) < 2:  # the difficulty needs 2 pixels; pad tiny images and crop the output
                padded = torch.nn.functional.pad(lq, (0, max(0, 2 - w), 0, max(0, 2 - h)), mode='replicate')
            plan = self.plan(padded)
            if plan.whole_image_subnet is not None:
                sr = self.run_whole(padded, plan.whole_image_subnet)
            else:
                sr = self.stitch(self.run_patches(padded, plan), plan)
            sr = sr[..., :h * self.scale, :w * self.scale]
            if sr.device.type == 'cuda':
                torch.cuda.synchronize(sr.device)
        elapsed = time.perf_counter() - start
        if plan.whole_image_subnet is not None:
            histogram = [int(i == plan.whole_image_subnet) for i in range(len(self.net.subnets))]
        else:
            histogram = list(plan.histogram)
        report = InferenceReport((h, w), tuple(sr.shape[-2:]), sum(histogram), histogram, self.flops(plan),
                                 self.subnet_flops(h, w, len(self.net.subnets) - 1), elapsed, plan,
                                 self.subnet_names)
        return sr, report

    def __call__(self, lq):
        return self.run(lq)[0]
