"""What one image cost: the report of both engines (torch's and the torch-free one)."""
from dataclasses import dataclass, field

from .planner import InferencePlan


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
        time_s (float): Wall-clock seconds of the engine's ``run``.
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

    def summary(self):
        """One line: size, subnet histogram (or the whole-image subnet), FLOPs and time."""
        (h, w), (sh, sw) = self.lq_size, self.sr_size
        if self.whole_image:
            what = f'whole image through {self.subnet_names[self.plan.whole_image_subnet]}'
            if self.plan.tiled_flops is not None:
                what += f' (tiled plan: {100 * self.plan.tiled_flops / self.full_flops:.1f}% of full)'
        else:
            hist = ' '.join(f'{name}:{n}' for name, n in zip(self.subnet_names, self.histogram) if n)
            what = f'{self.num_patches} patches [{hist}]'
        line = (f'{w}x{h} -> {sw}x{sh} | {what} | {self.gflops:.1f} GFLOPs '
                f'({100 * self.flops_ratio:.1f}% of full) | {self.time_s:.2f} s')
        return line if self.plan.reason is None else f'{line} | {self.plan.reason}'
