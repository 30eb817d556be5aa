"""Images for the torch engine: tensors read and written through :mod:`wbsr_runtime.images` (how unusual
inputs are handled is documented there), SR tensors copied to the host once, and subnet maps."""
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from wbsr_runtime.images import ImageInfo, NonFiniteOutput, output_dtype, read_rgb, rgb_to_image


def check_finite(path, finite):
    """Raise :class:`NonFiniteOutput` for input ``path`` unless ``finite`` (a bool or a 0-d tensor)."""
    if not bool(finite):
        raise NonFiniteOutput(f'{path}: the network gave values that are not finite (NaN or Inf); the image is not '
                              'written (without --fp32 on CUDA, half precision may overflow: try --fp32)')


def read_image(path):
    """Read an image as a (1, 3, h, w) float32 RGB tensor in [0, 1] and its :class:`ImageInfo`
    (:func:`wbsr_runtime.images.read_rgb`)."""
    rgb, info = read_rgb(path)
    return torch.from_numpy(rgb).unsqueeze(0), info


def to_image(sr, info):
    """The SR tensor (1, 3, H, W) as an OpenCV array in the input's mode and bit depth."""
    return rgb_to_image(sr[0].detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0), info)


def device_pixels(sr, max_value):
    """The SR tensor (1, 3, H, W) as BGR integers (H, W, 3) on its own device, computed as :func:`to_image`
    computes them on the host: clamped to [0, 1], scaled by ``max_value``, rounded half to even, then uint8
    (``max_value`` 255) or uint16 (65535)."""
    dtype = torch.uint8 if output_dtype(max_value) == np.uint8 else torch.uint16
    scaled = sr[0].detach().float().clamp(0, 1).mul_(max_value).round_()
    pixels = torch.empty(scaled.shape[1:] + (3, ), dtype=dtype, device=sr.device)
    return pixels.copy_(scaled.permute(1, 2, 0).flip(2))


def copy_to_host(tensor):
    """``(host tensor, event or None)``: on CUDA a copy into pinned memory that does not block and the event
    that marks its end; elsewhere the tensor on the CPU (itself when it is there)."""
    if tensor.device.type != 'cuda':
        return tensor.cpu(), None
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record(torch.cuda.current_stream(tensor.device))
    return host, copied


class HostImage:
    """An SR image converted on its device and copied to the host once, for its output file and its map.

    Colour images become integers on the device (:func:`device_pixels`), and an 8-bit one's pixels are
    also the base of its subnet map. Grayscale images (converted as OpenCV's ``cvtColor`` does) and 16-bit
    ones with a map (which needs 8 bits too) are copied as float and converted on the host. On CUDA the copy
    goes into pinned memory without blocking; :meth:`image` and :meth:`map_base` wait for it, so they may run
    in another thread while the device goes on.

    Args:
        sr (Tensor): SR image (1, 3, H, W) from the engine, not clamped, on any device.
        info (ImageInfo): The input's mode and bit depth.
        with_map (bool): Whether :meth:`map_base` will be wanted. Default: False.
    """

    def __init__(self, sr, info, with_map=False):
        self.info = info
        self.with_map = with_map
        self.as_pixels = info.mode != 'gray' and (info.max_value == 255 or not with_map)
        self._finite, _ = copy_to_host(torch.isfinite(sr).all())  # read once the copy below has ended
        on_device = device_pixels(sr, info.max_value) if self.as_pixels else sr[0].detach().float().clamp(0, 1)
        self._host, self._copied = copy_to_host(on_device)

    @property
    def finite(self):
        """Whether every SR value was finite (waits for the copy)."""
        if self._copied is not None:
            self._copied.synchronize()
        return bool(self._finite)

    def _array(self):
        if self._copied is not None:
            self._copied.synchronize()
        return self._host.numpy()

    def image(self):
        """The output image, the same array as :func:`to_image` gives."""
        if not self.as_pixels:
            return rgb_to_image(self._array().transpose(1, 2, 0), self.info)
        pixels = self._array()
        if self.info.mode == 'rgb':
            return pixels
        if self.info.mode == 'rgba':
            alpha = cv2.resize(self.info.alpha, pixels.shape[1::-1], interpolation=cv2.INTER_LINEAR)
            alpha = (alpha.clip(0, 1) * self.info.max_value).round().astype(pixels.dtype)
            return np.concatenate([pixels, alpha[:, :, None]], axis=2)
        raise ValueError(f"unknown image mode {self.info.mode!r}; expected one of ['rgb', 'rgba'] here.")

    def map_base(self):
        """The 8-bit BGR image (H, W, 3) under the subnet map, as ``to_image(sr, ImageInfo('rgb', 255))``."""
        if not self.with_map:
            raise ValueError('HostImage(with_map=False) keeps no map base.')
        if self.as_pixels:
            return self._array()
        return rgb_to_image(self._array().transpose(1, 2, 0), ImageInfo('rgb', 255))


@dataclass
class MapLegend:
    """What the legend of a subnet map shows.

    Attributes:
        names (list[str]): Subnet names in cost order.
        patches (list[int]): Patches served by each subnet.
        flops_shares (list[float]): Share of the image's FLOPs spent in each subnet (sums to 1).
        title (str): First line: patches (or the whole image) and the FLOPs against the full network's.
    """
    names: list
    patches: list
    flops_shares: list
    title: str


def _whole_image_subnet(plan):
    return getattr(plan, 'whole_image_subnet', None)


def subnet_map_legend(report, net):
    """The :class:`MapLegend` of an ``InferenceReport`` of supernet ``net``."""
    ratio = f'{100 * report.flops_ratio:.1f}% of full FLOPs'
    whole = _whole_image_subnet(report.plan)
    if whole is not None:
        patches = [0] * len(report.subnet_names)
        shares = [float(i == whole) for i in range(len(report.subnet_names))]
        return MapLegend(list(report.subnet_names), patches, shares, f'whole image, {ratio}')
    p = report.plan.patch_size
    spent = [n * net.flops(p, p, subnet=i) for i, n in enumerate(report.histogram)]
    total = sum(spent) or 1
    return MapLegend(list(report.subnet_names), list(report.histogram), [f / total for f in spent],
                     f'{sum(report.histogram)} patches, {ratio}')


def subnet_colours(num_subnets):
    """BGR colour of each subnet in cost order: OpenCV's JET, cheapest blue, full network red."""
    levels = (np.arange(num_subnets) * (255 // max(num_subnets - 1, 1))).astype(np.uint8)
    return cv2.applyColorMap(levels[:, None], cv2.COLORMAP_JET)[:, 0]


LEGEND_FONT = cv2.FONT_HERSHEY_SIMPLEX
LEGEND_FONT_SCALE = 0.45
LEGEND_LINE = 20
LEGEND_COLUMN = 250  # pixels per legend column; the strip is at least this wide


def draw_map_legend(width, legend):
    """A white strip ``max(width, LEGEND_COLUMN)`` pixels wide with one row per subnet (uint8 BGR).

    Each row: colour swatch, subnet name, patches and the share of the image's FLOPs spent in it
    (grey when unused), below the legend's title.
    """
    width = max(width, LEGEND_COLUMN)
    columns = max(1, min(len(legend.names), width // LEGEND_COLUMN))
    rows = -(-len(legend.names) // columns)
    strip = np.full(((rows + 1) * LEGEND_LINE + 8, width, 3), 255, dtype=np.uint8)
    black, grey = (0, 0, 0), (150, 150, 150)

    def text(x, y, value, colour=black):
        cv2.putText(strip, value, (x, y), LEGEND_FONT, LEGEND_FONT_SCALE, colour, 1, cv2.LINE_AA)

    text(6, LEGEND_LINE - 5, legend.title)
    colours = subnet_colours(len(legend.names))
    for i, (name, patches, share) in enumerate(zip(legend.names, legend.patches, legend.flops_shares)):
        x = 6 + (i // rows) * LEGEND_COLUMN
        y = (i % rows + 1) * LEGEND_LINE + 4
        cv2.rectangle(strip, (x, y + 2), (x + 14, y + 15), tuple(int(c) for c in colours[i]), -1)
        cv2.rectangle(strip, (x, y + 2), (x + 14, y + 15), black, 1)
        count = f"{patches} {'patch' if patches == 1 else 'patches'}" if patches or not share else 'whole image'
        text(x + 20, y + 14, f'{name}: {count}, {100 * share:.1f}% of FLOPs', black if share else grey)
    return strip


def _owners(positions, length, patch, scale):
    """For every output pixel along one axis (``length`` of them), the patch of LR offsets ``positions`` whose
    centre is nearest among those that cover it (NumPy only: it may run beside the network's threads)."""
    starts = np.asarray(positions, dtype=np.float64)
    coords = (np.arange(length, dtype=np.float64) + 0.5) / scale
    inside = (coords[:, None] >= starts[None]) & (coords[:, None] < starts[None] + patch)
    distance = np.where(inside, np.abs(coords[:, None] - (starts + patch / 2)[None]), np.inf)
    return distance.argmin(axis=1)


def subnet_map_overlay(img_bgr, plan, scale, num_subnets, opacity=0.45, legend=None):
    """Colour each output pixel by the subnet that weighs most in it, over ``img_bgr`` (uint8, H x W x 3).

    Cheapest subnet blue, full network red (:func:`subnet_colours`); patch borders are drawn. When
    the whole image ran through one subnet (``plan.whole_image_subnet``), every pixel has its colour.
    With ``legend`` (:func:`subnet_map_legend`), a legend strip is added below the image (the
    image is padded with white on the right when the strip is wider).
    """
    height, width = img_bgr.shape[:2]
    whole = _whole_image_subnet(plan)
    rows, cols = _owners(plan.tops, height, plan.patch_size, scale), _owners(plan.lefts, width, plan.patch_size, scale)
    if whole is None:
        index = plan.subnets.cpu().numpy()[rows][:, cols]
    else:  # the whole image ran through one subnet, not the tiled plan
        index = np.full((height, width), whole)
    colours = subnet_colours(num_subnets)[index]
    overlay = cv2.addWeighted(img_bgr, 1 - opacity, colours, opacity, 0)
    if whole is None:
        edges = np.zeros((height, width), dtype=bool)
        edges[1:, :] |= (rows[1:] != rows[:-1])[:, None]
        edges[:, 1:] |= (cols[1:] != cols[:-1])[None, :]
        overlay[edges] = 0
    if legend is None:
        return overlay
    strip = draw_map_legend(width, legend)
    canvas = np.full((height + strip.shape[0], strip.shape[1], 3), 255, dtype=np.uint8)
    canvas[:height, :width] = overlay
    canvas[height:] = strip
    return canvas
