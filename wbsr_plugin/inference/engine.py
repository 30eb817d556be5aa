"""Dynamic inference of a WBSR supernet: tile, project, run each subnet batched, blend.

The engine validates its options once and runs an image through the three parts it is made of:
the plan (:mod:`.planning`: tiling, difficulty, classes, subnets), the subnets (:mod:`.subnet_cache`:
stand-alone copies of their weights, batched, on CUDA optionally as graphs) and the blending
(:mod:`.tiling`); then it reports what the image cost.
"""
import math
import time
from os import path as osp

import torch

from wbsr_plugin.archs.supernet_util import SupernetMixin, supernet_types
from wbsr_runtime.class_thresholds import DEFAULT_NUM_CLASSES, ClassThresholds, check_class_errors
from wbsr_runtime.cost_table import CostTable
from wbsr_runtime.plan_targets import plan_strategy
from wbsr_runtime.planning_target import NEEDS_CLASS_ERRORS, PlanningTarget
from wbsr_runtime.report import InferenceReport
from wbsr_runtime.tile_geometry import DEFAULT_OVERLAP, DEFAULT_PATCH_SIZE, DEFAULT_TRIM
from wbsr_runtime.time_rules import PlanTimer

from .cost_model import cache_dir
from .planning import Planner
from .runtimes import TORCH_FP32, CompiledSubnets, check_runtime, torch_threads_beside
from .subnet_cache import SubnetCache, available_cuda_memory
from .tiling import BlendGeometry, extract_patches, run_in_tiles

# CUDA kernels index a tensor with 32-bit integers: a larger whole image runs in tiles (tiling.run_in_tiles)
MAX_TENSOR_ELEMENTS = 2**31 - 1


class DynamicInferenceEngine:
    """Gradient-projection dynamic inference of a WBSR supernet (WBSR Sec. 4.2).

    Paper: Rethinking Imbalance in Image Super-Resolution for Efficient Inference (NeurIPS 2024).
    The planning target (:class:`~.planning_target.PlanningTarget`) is fixed at construction, and so is the
    method that plans for it; by default Eq. 15 maps each class to a subnet. The plan stays on the input's
    device; the only host transfer is the class histogram (K numbers). Each used subnet runs on all its patches
    in as few calls as ``max_batch_pixels`` allows.

    Never more than the plain network: when the tiled plan would cost more FLOPs than the full
    network on the whole image (with ``budget``: more than the budget), the whole image runs through
    one subnet instead: the full network, the best subnet within the budget, or ``subnet``.

    Args:
        net (SupernetMixin): The supernet. Its weights may change between calls (training):
            the extracted subnets are rebuilt when a parameter changes or is replaced, or on :meth:`refresh`
            (needed after a module of the supernet was replaced). See ``watch_weights``.
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
        target (PlanningTarget | None): What the plans aim at (:mod:`.planning_target`: Eq. 15, Eq. 16, a FLOPs
            or latency budget, a quality target, one subnet). Default: None (Eq. 15, or the shorthand below).
        budget, budget_unit, max_loss, target_gflops, alpha, subnet: Shorthand for ``target``, validated by
            :meth:`PlanningTarget.from_options <.planning_target.PlanningTarget.from_options>` (``budget=0.6`` is
            ``target=PlanningTarget.flops_budget(0.6)``). A latency budget needs ``cost_table``, a quality target
            class errors. Default: None.
        max_batch_pixels (int | None): LR pixels per forward call. None: 32768 on CPU; on CUDA, sized
            from the free memory. Default: None.
        channels_last (bool): Run the subnets in channels-last memory format (faster on CPU;
            docs/inference.md). Default: True.
        whole_image_fallback (bool): Run the whole image when tiling would cost more (see above);
            False always tiles (to measure tiling itself). Default: True.
        cuda_graphs (bool): On CUDA, replay each subnet's forward as a CUDA graph (one launch instead
            of one per layer; batches padded to a bucket size, :mod:`.cuda_graphs`). Ignored on other devices.
            Default: False.
        pad_batches (bool): Pad every eager batch to a bucket size (at most 1/8 more patches), so that a GPU sees a
            few batch shapes instead of a new one per image (each new shape costs cuDNN a configuration). Outputs
            are unchanged. Default: False.
        pad_widths (int | None): Zero-pad every subnet's width to a multiple of this (8: what fp16 tensor cores
            want; widths 36 and 52 become 40 and 56). Outputs are unchanged up to rounding, FLOPs are reported
            unpadded. Default: None.
        class_errors (list[list[float]] | None): Expected error of each class (rows) through each subnet
            (columns), as checkpoints store it (``inference/calibration.py``); replaces those of a
            ``ClassThresholds``. With ``budget``, patches move
            to bigger subnets by error saved per FLOP (:func:`~.projection.calibrated_levels`) instead of
            by Eq. 16, and the whole image runs through one subnet when that is expected to do better
            than the tiled plan (small images, where overlaps eat the budget). Default: None.
        cost_table (CostTable | None): Measured costs on this device (:mod:`.cost_model`), of this runtime: plans
            are then chosen by predicted time, never slower than the plain network in the same runtime
            (:mod:`.time_rules`). None: by FLOPs only, the same plan on every machine. Default: None.
        runtime (Runtime | None): What runs the subnets (:mod:`.runtimes`: torch, OpenVINO or ONNX Runtime, fp32
            or bf16; CPU only unless torch fp32). The plan is the same in every runtime. Default: None (torch fp32).
        watch_weights (bool): Check before every image whether a parameter of ``net`` changed (it reads every
            parameter's address and version: 0.1 ms for SRResNet, 0.3-1.7 ms for RCAN's 1600 parameters). False
            for weights that stay as loaded (the command-line tools); :meth:`refresh` then picks up a change.
            Default: True.
    """

    def __init__(self,
                 net,
                 *,
                 thresholds=None,
                 patch_size=DEFAULT_PATCH_SIZE,
                 overlap=DEFAULT_OVERLAP,
                 trim=DEFAULT_TRIM,
                 num_classes=None,
                 target=None,
                 budget=None,
                 budget_unit=None,
                 max_loss=None,
                 target_gflops=None,
                 alpha=None,
                 subnet=None,
                 max_batch_pixels=None,
                 channels_last=True,
                 whole_image_fallback=True,
                 cuda_graphs=False,
                 pad_batches=False,
                 pad_widths=None,
                 class_errors=None,
                 cost_table=None,
                 runtime=None,
                 watch_weights=True):
        if not isinstance(net, SupernetMixin):
            raise TypeError(f'net must be a WBSR supernet (one of {supernet_types()}), got {type(net).__name__}.')
        if not isinstance(patch_size, int) or patch_size < 2:
            raise ValueError(f'patch_size must be an integer >= 2, got {patch_size!r}.')
        if not isinstance(overlap, int) or not 0 <= overlap < patch_size:
            raise ValueError(f'overlap must be an integer in [0, patch_size), got {overlap!r}.')
        if not isinstance(trim, int) or trim < 0:
            raise ValueError(f'trim must be an integer >= 0, got {trim!r}.')
        loose = PlanningTarget.from_options(budget=budget, budget_unit=budget_unit, max_loss=max_loss,
                                            target_gflops=target_gflops, alpha=alpha, subnet=subnet)
        if target is not None and loose is not None:
            raise ValueError('give the planning target either as target= or as its options (budget=, ...), not both.')
        if target is not None and not isinstance(target, PlanningTarget):
            raise TypeError(f'target must be a PlanningTarget, got {type(target).__name__}.')
        target = (target or loose or PlanningTarget.eq15()).bound(net)
        if target.by_time and cost_table is None:
            raise ValueError(f'{target} plans by time: it needs a cost_table (this device\'s measured costs, '
                             'inference/cost_model.py).')
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
        if target.needs_class_errors and class_errors is None:
            raise ValueError(NEEDS_CLASS_ERRORS)
        if max_batch_pixels is not None and (not isinstance(max_batch_pixels, int) or max_batch_pixels < 1):
            raise ValueError(f'max_batch_pixels must be a positive integer or None, got {max_batch_pixels!r}.')
        self.net = net
        self.thresholds = thresholds
        self.patch_size = patch_size
        self.overlap = overlap
        self.trim = trim
        self.num_classes = num_classes
        self.target = target
        self.max_batch_pixels = max_batch_pixels
        self.channels_last = channels_last
        self.whole_image_fallback = whole_image_fallback
        self.cuda_graphs = cuda_graphs
        self.class_errors = class_errors
        if cost_table is not None and not isinstance(cost_table, CostTable):
            raise TypeError(f'cost_table must be a CostTable or None, got {type(cost_table).__name__}.')
        if cost_table is not None and cost_table.num_subnets != len(net.subnets):
            raise ValueError(f'cost_table holds {cost_table.num_subnets} subnets, the network '
                             f'{len(net.subnets)}: it was measured for another network.')
        if cost_table is not None and cost_table.runtime != str(runtime or TORCH_FP32):
            raise ValueError(f'cost_table was measured for runtime {cost_table.runtime}, the engine runs '
                             f'{runtime or TORCH_FP32}.')
        self.cost_table = cost_table
        self.timer = None if cost_table is None else PlanTimer(cost_table, self._batch_sizes, self._memory_limit)
        self.scale = net.upscale
        self.subnet_names = [s.name for s in net.subnets]
        if pad_widths is not None and (isinstance(pad_widths, bool) or not isinstance(pad_widths, int)
                                       or pad_widths < 1):
            raise ValueError(f'pad_widths must be a positive integer or None, got {pad_widths!r}.')
        self.runtime = TORCH_FP32 if runtime is None else runtime
        compiler = None
        if not self.runtime.is_default:
            check_runtime(self.runtime, next(net.parameters()).device)
            compiler = CompiledSubnets(self.runtime, osp.join(cache_dir(), 'runtimes'))
        self.subnets = SubnetCache(net, channels_last=channels_last, cuda_graphs=cuda_graphs,
                                   max_batch_pixels=max_batch_pixels, pad_batches=pad_batches, pad_widths=pad_widths,
                                   compiler=compiler)
        self.planner = Planner(net, self.subnets.flops, thresholds=thresholds, num_classes=num_classes,
                               patch_size=patch_size, overlap=overlap, trim=trim,
                               budget=target.budget, target_gflops=target.target_gflops, alpha=target.alpha,
                               subnet=target.subnet, class_errors=class_errors,
                               class_spreads=thresholds.class_spread_lists() if thresholds is not None else None,
                               class_detail=thresholds.class_detail_list() if thresholds is not None else None,
                               class_tiling=thresholds.class_tiling_list() if thresholds is not None else None,
                               subnet_correlation=(thresholds.subnet_correlation_list() if thresholds is not None
                                                   else None),
                               whole_image_fallback=whole_image_fallback)
        self._strategy = plan_strategy(self.planner, self.timer, self.target, self.subnets.flops)
        self._geometry_cache = {}
        self._batch_size_cache = {}
        self.max_tensor_elements = MAX_TENSOR_ELEMENTS
        self.watch_weights = watch_weights

    def refresh(self):
        """Forget the extracted subnets (they are rebuilt from the supernet on the next run)."""
        self.subnets.refresh()

    def blend_geometry(self, plan, device):
        """The cached :class:`BlendGeometry` of ``plan``'s tiling on ``device``."""
        key = (plan.lq_size, plan.patch_size, tuple(plan.tops), tuple(plan.lefts), plan.trim, device)
        if key not in self._geometry_cache:
            if len(self._geometry_cache) >= 32:
                self._geometry_cache.clear()
            self._geometry_cache[key] = BlendGeometry(plan.lq_size, plan.patch_size, plan.tops, plan.lefts, plan.trim,
                                                      self.scale, device)
        return self._geometry_cache[key]

    def _batch_sizes(self, patch):
        """Patches per forward call of every subnet at LR patch side ``patch`` (fixed once seen)."""
        param = next(self.net.parameters())
        key = (patch, param.dtype, param.device)
        if key not in self._batch_size_cache:
            self._batch_size_cache[key] = [self.subnets.batch_size(m, patch, param)
                                           for m in range(len(self.net.subnets))]
        return self._batch_size_cache[key]

    def _memory_limit(self):
        """Bytes a forward may take now: on CUDA the free memory and the allocator's reusable cache; else None."""
        device = next(self.net.parameters()).device
        return available_cuda_memory(device) if device.type == 'cuda' else None

    def plan(self, lq):
        """Tile ``lq`` (1, c, h, w) and choose the subnet of every patch (on ``lq``'s device): by FLOPs; with a
        cost table, the plan predicted fastest of those :mod:`.time_rules` allows; with a latency budget or a
        quality target, the plan :mod:`.plan_targets` searches."""
        return self._strategy(lq)

    def patch_batches(self, lq, plan):
        """The forward calls of ``plan``: ``[(runner, patch indices, batch), ...]`` (each used subnet on all its
        patches, in as few calls as the batch size allows) and the empty output tensor (N, c, p*s, p*s)."""
        p, s = plan.patch_size, self.scale
        used = [i for i, n in enumerate(plan.histogram) if n]
        param = next(self.subnets.module(used[0]).parameters())
        patches = extract_patches(lq, plan.patch_size, plan.tops, plan.lefts).to(dtype=param.dtype)
        outputs = torch.empty(patches.shape[0], lq.shape[1], p * s, p * s, device=param.device, dtype=param.dtype)
        order = plan.subnets.flatten().argsort(stable=True)
        batches, start = [], 0
        for index, count in enumerate(plan.histogram):
            if not count:
                continue
            members = order[start:start + count]
            start += count
            chunk = self.subnets.batch_size(index, p, param)
            runner = self.subnets.runner(index)
            for first in range(0, count, chunk):
                ids = members[first:first + chunk]
                batch = patches if ids.numel() == patches.shape[0] else patches[ids]  # one subnet: no gather
                if self.channels_last and self.subnets.runs_torch:
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
        """Subnet ``index`` on the whole image; returns the SR image (1, c, h*s, w*s) in float32. An image whose
        largest tensor would exceed ``max_tensor_elements`` runs in overlapping tiles, blended."""
        module = self.subnets.module(index)
        param = next(module.parameters())
        x = lq.to(dtype=param.dtype)
        per_pixel = self.subnets.elements_per_pixel(index)
        if x.shape[-2] * x.shape[-1] * per_pixel > self.max_tensor_elements:
            side = math.isqrt(self.max_tensor_elements // per_pixel)  # tiles as large as the limit allows
            return run_in_tiles(module, x, side, self.scale, self.channels_last)
        if not self.subnets.runs_torch or self.runtime.precision != 'fp32':
            return self.subnets.runner(index)(x).float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return module(x).float()

    def stitch(self, outputs, plan):
        """Blend SR patches (N, c, p*s, p*s) in grid order into the SR image (1, c, h*s, w*s)."""
        return self.blend_geometry(plan, outputs.device).stitch(outputs)

    def flops(self, plan):
        """FLOPs spent by ``plan``: the whole image through its subnet, or every patch counted in full."""
        if plan.whole_image_subnet is not None:
            return self.subnets.flops(*plan.lq_size, plan.whole_image_subnet)
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
        if self.watch_weights:
            self.subnets.drop_stale()
        h, w = lq.shape[-2:]
        with torch.inference_mode():
            with torch_threads_beside(self.runtime, lq.shape[1] * h * w * self.scale**2):
                lq = lq.to(device=next(self.net.parameters()).device, dtype=torch.float32)
                padded = lq
                if min(h, w) < 2:  # the difficulty needs 2 pixels; pad tiny images and crop the output
                    padded = torch.nn.functional.pad(lq, (0, max(0, 2 - w), 0, max(0, 2 - h)), mode='replicate')
                plan = self.plan(padded)
                whole = plan.whole_image_subnet
                if whole is None and (padded is not lq or plan.patch_size == h == w):  # tiny, or one patch: whole
                    whole = max(i for i, n in enumerate(plan.histogram) if n)  # (padded: the largest chosen)
                sr = self.run_whole(lq, whole) if whole is not None else self.run_patches(lq, plan)
            if whole is None:  # after the runtime's last call: with torch's threads (8x faster at 4K on 2 cores)
                sr = self.stitch(sr, plan)
            if sr.device.type == 'cuda':
                torch.cuda.synchronize(sr.device)
        elapsed = time.perf_counter() - start
        histogram = list(plan.histogram) if whole is None else [int(i == whole) for i in range(len(self.net.subnets))]
        flops = plan.tiled_flops if whole is None else self.subnets.flops(h, w, whole)
        report = InferenceReport((h, w), tuple(sr.shape[-2:]), sum(histogram), histogram, flops,
                                 self.subnets.flops(h, w, len(self.net.subnets) - 1), elapsed, plan,
                                 self.subnet_names)
        return sr, report

    def __call__(self, lq):
        return self.run(lq)[0]
