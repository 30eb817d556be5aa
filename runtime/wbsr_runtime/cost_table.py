"""A measured cost table (:class:`CostTable`) and what it predicts: the seconds of subnet calls, of the difficulty
analysis and of gathering and stitching patches, on one device in one runtime.

The torch engine measures tables (``wbsr_plugin.inference.cost_model``) and keeps them in the user's cache; an
``export --dynamic`` folder carries those of the machine it was made on, so that the torch-free runtime plans by
time there too (:func:`this_cpu`).
"""
import json
import os
import platform
from dataclasses import asdict, dataclass


def this_cpu(threads):
    """The CPU as cost tables name it: ``cpu:MODEL:N threads`` (the model from /proc/cpuinfo where readable)."""
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            model = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), model)
    except OSError:
        pass
    return f'cpu:{model}:{threads} threads'


def usable_cpus():
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def _interpolate(points, x):
    """Piecewise-linear through ``[(x, y), ...]`` (ascending x). Below the first point the first segment
    continues (down to 0); beyond the last, y grows in proportion to x at the last point's rate."""
    if x >= points[-1][0]:
        return points[-1][1] * x / points[-1][0]
    if len(points) == 1:
        return points[0][1] * x / points[0][0]
    i = max(1, next(k for k, (px, _) in enumerate(points) if px >= x))
    (x0, y0), (x1, y1) = points[i - 1], points[i]
    return max(0., y0 + (y1 - y0) * (x - x0) / (x1 - x0))


@dataclass(frozen=True)
class CostTable:
    """Seconds (and, on CUDA, peak bytes) of every subnet, in cost order, and of the engine's own work, on one
    device.

    Attributes:
        key (dict): What the table depends on (:func:`cost_key`).
        pixels (tuple[int]): LR pixels per call of the measurements, ascending.
        call_s (tuple[tuple[float]]): Per subnet and entry of ``pixels``: seconds of one call.
        analysis_s (tuple[float, float]): The difficulty analysis: seconds per image and per LR pixel.
        tiling_pixel_s (float): Gathering and stitching: seconds per LR pixel of the patches.
        switch_s (float): Seconds a call costs beyond its subnet's own when the previous call ran another subnet.
        peak_bytes_per_pixel (tuple[float] | None): Per subnet, on CUDA: peak memory per LR pixel in a call.
    """
    key: dict
    pixels: tuple
    call_s: tuple
    analysis_s: tuple = (0., 0.)
    tiling_pixel_s: float = 0.
    peak_bytes_per_pixel: tuple = None
    switch_s: float = 0.

    @property
    def num_subnets(self):
        return len(self.call_s)

    @property
    def runtime(self):
        """The runtime and precision measured (``'torch fp32'`` unless the key names another)."""
        return self.key.get('runtime', 'torch fp32')

    def call_seconds(self, subnet, pixels):
        """Predicted seconds of one call of ``subnet`` on ``pixels`` LR pixels (one image or a batch)."""
        return _interpolate(list(zip(self.pixels, self.call_s[subnet])), pixels)

    def whole_seconds(self, subnet, h, w):
        """Predicted seconds of ``subnet`` on a whole h x w LR image."""
        return self.call_seconds(subnet, h * w)

    def forward_seconds(self, histogram, side, batch_sizes):
        """Predicted seconds of the forwards of ``histogram[m]`` patches of ``side`` through subnet m,
        ``batch_sizes[m]`` patches per call."""
        total, used = 0., 0
        for subnet, count in enumerate(histogram):
            if count:
                used += 1
                full, rest = divmod(count, batch_sizes[subnet])
                total += full * self.call_seconds(subnet, batch_sizes[subnet] * side * side)
                total += self.call_seconds(subnet, rest * side * side) if rest else 0.
        return total + self.switch_s * used

    def analysis_seconds(self, h, w):
        """Predicted seconds of the difficulty analysis of an h x w LR image."""
        return self.analysis_s[0] + self.analysis_s[1] * h * w

    def tiling_seconds(self, num_patches, side):
        """Predicted seconds of gathering and stitching ``num_patches`` patches of ``side``."""
        return self.tiling_pixel_s * num_patches * side * side

    def whole_peak_bytes(self, subnet, h, w):
        """Predicted peak memory of ``subnet`` on a whole h x w LR image, or None when not measured."""
        return None if self.peak_bytes_per_pixel is None else h * w * self.peak_bytes_per_pixel[subnet]

    def to_json(self):
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        return cls(**{k: tuple(tuple(r) for r in v) if k == 'call_s' else tuple(v) if isinstance(v, list) else v
                      for k, v in data.items()})
