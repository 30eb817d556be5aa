"""Dynamic inference without torch: :class:`DynamicModel` runs an export of ``wbsr-export --dynamic``.

The plan is the torch engine's (:class:`~.planner.Planner` on numpy arrays: the same tiling, difficulty,
thresholds, levels and planning targets), the subnets run in ONNX Runtime or OpenVINO (:mod:`.sessions`), and
the patches are blended with the same weights (:mod:`.tile_geometry`). Planning by FLOPs (Eq. 15, Eq. 16, FLOPs
budgets, quality targets, one subnet) gives the torch engine's plan. Planning by time (``plan_by='time'``, latency
budgets) follows the same rules (:mod:`.time_rules`, :mod:`.plan_targets`) with a cost table of this machine, this
runtime and this thread count, measured by the torch engine and carried by the export; the runtime measures none.
"""
import time
from dataclasses import dataclass

import numpy as np

from .class_thresholds import DEFAULT_NUM_CLASSES, ClassThresholds
from .cost_table import this_cpu, usable_cpus
from .manifest import Manifest
from .plan_targets import plan_strategy
from .planner import Planner
from .planning_target import PlanningTargetError, checkpoint_policy
from .report import InferenceReport
from .sessions import check_session_runtime, onnxruntime_runner, openvino_runner
from .tile_geometry import DEFAULT_TRIM, blend_weights, stitch
from .time_rules import PlanTimer

DEFAULT_MAX_BATCH_PIXELS = 64 * 64 * 8  # LR pixels per call on a CPU: larger batches ran no faster (docs/inference.md)


@dataclass(frozen=True)
class SubnetRef:
    """What a planning target needs of a subnet: its index and name."""
    index: int
    name: str


class DynamicModel:
    """A dynamic export, loaded: plan, run the subnets, blend.

    Build it with :meth:`load`. Its planning target and tiling are fixed at construction.

    Args:
        manifest (Manifest): The export.
        runners (list[Callable]): Per subnet, ``run(batch) -> SR batch`` on float32 arrays.
        target (PlanningTarget | None): What the plans aim at; None: the checkpoint's default (a quality target
            with class errors, else Eq. 15), as ``infer``.
        patch_size, overlap (int | None): The tiling; None: the checkpoint's patch size, the default overlap.
        plan_by (str | None): How the default target plans: 'flops' (None) or 'time'.
        cost_table (CostTable | None): Measured costs of this machine in this runtime; a target that plans by time
            needs it. Default: None.
    """

    def __init__(self, manifest, runners, *, target=None, patch_size=None, overlap=None, plan_by=None,
                 cost_table=None):
        self.manifest = manifest
        self.runners = runners
        self.runtime = None  # what runs the subnets, as :meth:`load` describes it
        self.scale = manifest.scale
        self.subnet_names = [s.name for s in manifest.subnets]
        meta = manifest.wbsr
        self.thresholds = ClassThresholds.from_meta(meta, len(manifest.subnets)) if meta else None
        self.policy = checkpoint_policy(meta, target=target, patch_size=patch_size, overlap=overlap, plan_by=plan_by)
        self.target = self.policy.target.bound(self)
        if self.target.by_time and cost_table is None:
            raise PlanningTargetError(f'{self.target} plans by time, which needs a cost table of this machine in this '
                                      'runtime: measure it with the torch engine (infer --runtime R --plan-by time) '
                                      'and export again, or plan by FLOPs')
        num_classes = (self.thresholds.num_classes if self.thresholds is not None
                       else meta.get('num_classes', DEFAULT_NUM_CLASSES))
        trim = int(manifest.planning.get('trim', DEFAULT_TRIM))
        self.max_batch_pixels = int(manifest.planning.get('max_batch_pixels', DEFAULT_MAX_BATCH_PIXELS))
        target = self.target
        self.planner = Planner([s.flops / 1e9 for s in manifest.subnets], manifest.flops,
                               thresholds=self.thresholds, num_classes=num_classes,
                               patch_size=self.policy.patch_size, overlap=self.policy.overlap, trim=trim,
                               budget=target.budget, target_gflops=target.target_gflops, alpha=target.alpha,
                               subnet=target.subnet,
                               class_errors=None if self.thresholds is None else self.thresholds.class_error_lists(),
                               class_spreads=None if self.thresholds is None else self.thresholds.class_spread_lists(),
                               class_detail=None if self.thresholds is None else self.thresholds.class_detail_list(),
                               class_tiling=None if self.thresholds is None else self.thresholds.class_tiling_list(),
                               subnet_correlation=(None if self.thresholds is None
                                                   else self.thresholds.subnet_correlation_list()),
                               whole_image_fallback=True)
        self._weights = {}
        self.timer = None if cost_table is None else PlanTimer(cost_table, self.batch_sizes)
        self._strategy = plan_strategy(self.planner, self.timer, self.target, manifest.flops)

    def batch_sizes(self, side):
        """Patches per subnet call at LR patch side ``side``, for every subnet."""
        return [max(1, self.max_batch_pixels // (side * side))] * len(self.runners)

    @property
    def subnets(self):
        """The subnets as planning targets see them (index and name)."""
        return [SubnetRef(s.index, s.name) for s in self.manifest.subnets]

    @classmethod
    def load(cls, folder, *, runtime='onnxruntime', precision='fp32', threads=None, **policy):
        """Load an export folder and compile its subnets.

        Args:
            folder (str): What ``wbsr-export --dynamic`` wrote.
            runtime (str): 'onnxruntime' or 'openvino'. precision (str): 'fp32' or 'bf16' (OpenVINO).
            threads (int | None): CPU threads per subnet; None: every CPU this process may use.
            policy: ``target``, ``patch_size``, ``overlap``, ``plan_by`` (see the class).
        """
        manifest = Manifest.read(folder)
        check_session_runtime(runtime, precision)
        threads = threads or usable_cpus()
        cost_table = manifest.cost_table(f'{runtime} {precision}', this_cpu(threads))
        if runtime == 'onnxruntime':
            runners = [onnxruntime_runner(manifest.subnet_path(m), threads) for m in range(len(manifest.subnets))]
        else:
            import openvino as ov
            core = ov.Core()
            runners = [openvino_runner(core, manifest.subnet_path(m), precision, threads)
                       for m in range(len(manifest.subnets))]
        model = cls(manifest, runners, cost_table=cost_table, **policy)
        model.runtime = f'{runtime} {precision}, {threads} threads'
        return model

    def plan(self, lq):
        """The plan of ``lq`` (1, c, h, w) float32, as the torch engine plans it (:func:`.plan_strategy`)."""
        return self._strategy(lq)

    def _blend(self, plan):
        key = (plan.lq_size, plan.patch_size, tuple(plan.tops), tuple(plan.lefts), plan.trim)
        if key not in self._weights:
            if len(self._weights) >= 32:
                self._weights.clear()
            (h, w), p, s = plan.lq_size, plan.patch_size, self.scale
            self._weights[key] = (blend_weights(plan.tops, h, p, s, plan.trim).astype(np.float32),
                                  blend_weights(plan.lefts, w, p, s, plan.trim).astype(np.float32))
        return self._weights[key]

    def run_patches(self, lq, plan):
        """Every used subnet on all its patches, batched; SR patches (N, c, p*s, p*s) in grid order."""
        p, s = plan.patch_size, self.scale
        rows = np.add.outer(np.asarray(plan.tops), np.arange(p))
        cols = np.add.outer(np.asarray(plan.lefts), np.arange(p))
        patches = lq[0][:, rows[:, None, :, None], cols[None, :, None, :]]  # (c, R, C, p, p)
        patches = patches.transpose(1, 2, 0, 3, 4).reshape(-1, lq.shape[1], p, p)
        outputs = np.empty((patches.shape[0], lq.shape[1], p * s, p * s), dtype=np.float32)
        order = np.argsort(np.asarray(plan.subnets).reshape(-1), kind='stable')
        chunk, start = self.batch_sizes(p)[0], 0
        for index, count in enumerate(plan.histogram):
            members, start = order[start:start + count], start + count
            for first in range(0, count, chunk):
                ids = members[first:first + chunk]
                outputs[ids] = self.runners[index](patches if ids.size == patches.shape[0] else patches[ids])
        return outputs

    def stitch(self, outputs, plan):
        """Blend SR patches (N, c, p*s, p*s) in grid order into the SR image (1, c, h*s, w*s)."""
        row_weights, col_weights = self._blend(plan)
        return stitch(outputs, plan.lq_size, plan.patch_size, plan.tops, plan.lefts, self.scale, row_weights,
                      col_weights)[None]

    def run(self, lq):
        """Super-resolve one image.

        Args:
            lq (np.ndarray): LR image in [0, 1]: (1, c, h, w), (c, h, w) or an H x W x c array (RGB).

        Returns:
            tuple[np.ndarray, InferenceReport]: SR image (1, c, h * scale, w * scale) float32, not clamped, and the
            report.
        """
        start = time.perf_counter()
        lq = as_batch(lq, self.manifest.in_channels)
        h, w = lq.shape[-2:]
        padded = lq
        if min(h, w) < 2:  # the difficulty needs 2 pixels: pad for planning, run the subnet on the image
            padded = np.pad(lq, ((0, 0), (0, 0), (0, max(0, 2 - h)), (0, max(0, 2 - w))), mode='edge')
        plan = self.plan(padded)
        whole = plan.whole_image_subnet
        if whole is None and (padded is not lq or plan.patch_size == h == w):
            whole = int(np.max(plan.subnets))
        if whole is not None:
            sr = np.asarray(self.runners[whole](lq), dtype=np.float32)
        else:
            sr = self.stitch(self.run_patches(lq, plan), plan)
        histogram = list(plan.histogram) if whole is None else [int(i == whole) for i in range(len(self.runners))]
        flops = plan.tiled_flops if whole is None else self.manifest.flops(h, w, whole)
        report = InferenceReport((h, w), tuple(sr.shape[-2:]), sum(histogram), histogram, flops,
                                 self.manifest.flops(h, w, len(self.runners) - 1), time.perf_counter() - start,
                                 plan, self.subnet_names)
        return sr, report

    def __call__(self, lq):
        return self.run(lq)[0]


def as_batch(lq, channels):
    """``lq`` as a (1, c, h, w) float32 array: from (1, c, h, w), (c, h, w) or H x W x c."""
    lq = np.asarray(lq, dtype=np.float32)
    if lq.ndim == 3 and lq.shape[0] != channels and lq.shape[2] == channels:
        lq = lq.transpose(2, 0, 1)
    if lq.ndim == 3:
        lq = lq[None]
    if lq.ndim != 4 or lq.shape[:2] != (1, channels):
        raise ValueError(f'expected an LR image (1, {channels}, h, w), ({channels}, h, w) or (h, w, {channels}), '
                         f'got shape {lq.shape}')
    return np.ascontiguousarray(lq)

