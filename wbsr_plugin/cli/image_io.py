"""Reading and writing images for inference, with documented handling of unusual inputs.

* 8-bit and 16-bit images are read; the output keeps the input's bit depth (PNG/TIFF keep
  16 bits; formats that cannot are written by OpenCV's rules).
* Grayscale (1 channel) is run as RGB with three equal channels and written back as grayscale.
* RGBA: the colour channels go through the network, the alpha channel is resized with
  bilinear interpolation, and the output keeps it.
* Anything OpenCV cannot decode (corrupt, empty, not an image), float images, and more than
  four channels raise :class:`ImageReadError`.
* Files are written to a temporary name in the output folder and renamed with
  ``os.replace``, so a failure never leaves a half-written image.
"""
from dataclasses import dataclass
from os import path as osp

import cv2
import numpy as np
import torch

from wbsr_plugin.utils.files import atomic_write_bytes


class ImageReadError(ValueError):
    """An input file that cannot be used as an image."""


@dataclass
class ImageInfo:
    """How an input image was stored.

    Attributes:
        mode (str): 'gray', 'rgb' or 'rgba'.
        max_value (int): 255 or 65535.
        alpha (np.ndarray | None): Alpha channel in [0, 1] (float32, H x W) for 'rgba'.
    """
    mode: str
    max_value: int
    alpha: np.ndarray = None


def read_image(path):
    """Read an image as a (1, 3, h, w) float32 RGB tensor in [0, 1] and its :class:`ImageInfo`."""
    if not osp.isfile(path):
        raise ImageReadError(f'{path}: no such file.')
    if osp.getsize(path) == 0:
        raise ImageReadError(f'{path}: empty file.')
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f'{path}: cannot decode (corrupt or not an image).')
    if img.dtype == np.uint8:
        max_value = 255
    elif img.dtype == np.uint16:
        max_value = 65535
    else:
        raise ImageReadError(f'{path}: {img.dtype} pixels are not supported (8-bit or 16-bit integers only).')
    img = img.astype(np.float32) / max_value
    alpha = None
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        mode = 'gray'
        rgb = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 3:
        mode = 'rgb'
        rgb = img[:, :, ::-1]
    elif img.ndim == 3 and img.shape[2] == 4:
        mode = 'rgba'
        rgb, alpha = img[:, :, 2::-1], img[:, :, 3]
    else:
        raise ImageReadError(f'{path}: unsupported shape {img.shape} (1, 3 or 4 channels).')
    tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).unsqueeze(0)
    return tensor, ImageInfo(mode, max_value, alpha)


def to_image(sr, info):
    """The SR tensor (1, 3, H, W) as an OpenCV array in the input's mode and bit depth."""
    rgb = sr[0].detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)
    height, width = rgb.shape[:2]
    if info.mode == 'gray':
        img = cv2.cvtColor(rgb[:, :, ::-1].copy(), cv2.COLOR_BGR2GRAY)
    elif info.mode == 'rgb':
        img = rgb[:, :, ::-1]
    elif info.mode == 'rgba':
        alpha = cv2.resize(info.alpha, (width, height), interpolation=cv2.INTER_LINEAR)
        img = np.concatenate([rgb[:, :, ::-1], alpha.clip(0, 1)[:, :, None]], axis=2)
    else:
        raise ValueError(f"unknown image mode {info.mode!r}; expected one of ['gray', 'rgb', 'rgba'].")
    dtype = np.uint8 if info.max_value == 255 else np.uint16
    return np.ascontiguousarray((img * info.max_value).round().astype(dtype))


def write_image_atomic(path, img):
    """Encode ``img`` by the extension of ``path``, write it to a temporary name, then rename."""
    ext = osp.splitext(path)[1]
    ok, data = cv2.imencode(ext, img)
    if not ok:
        raise OSError(f'cannot encode an image as {ext!r} for {path}.')
    atomic_write_bytes(path, data.tobytes())


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


def subnet_map_overlay(img_bgr, plan, scale, num_subnets, opacity=0.45, legend=None):
    """Colour each output pixel by the subnet that weighs most in it, over ``img_bgr`` (uint8, H x W x 3).

    Cheapest subnet blue, full network red (:func:`subnet_colours`); patch borders are drawn. When
    the whole image ran through one subnet (``plan.whole_image_subnet``), every pixel has its colour.
    With ``legend`` (:func:`subnet_map_legend`), a legend strip is added below the image (the
    image is padded with white on the right when the strip is wider).
    """
    p = plan.patch_size
    height, width = img_bgr.shape[:2]

    def owners(positions, length):
        centres = torch.tensor(positions, dtype=torch.float64) + p / 2
        coords = (torch.arange(length, dtype=torch.float64) + 0.5) / scale
        inside = (coords[:, None] >= torch.tensor(positions)[None]) & (
            coords[:, None] < torch.tensor(positions)[None] + p)
        distance = (coords[:, None] - centres[None]).abs().masked_fill(~inside, float('inf'))
        return distance.argmin(dim=1)

    whole = _whole_image_subnet(plan)
    rows, cols = owners(plan.tops, height), owners(plan.lefts, width)
    if whole is None:
        index = plan.subnets.cpu()[rows][:, cols].numpy()
    else:  # the whole image ran through one subnet, not the tiled plan
        index = np.full((height, width), whole)
    colours = subnet_colours(num_subnets)[index]
    overlay = cv2.addWeighted(img_bgr, 1 - opacity, colours, opacity, 0)
    if whole is None:
        edges = np.zeros((height, width), dtype=bool)
        edges[1:, :] |= (rows[1:] != rows[:-1]).numpy()[:, None]
        edges[:, 1:] |= (cols[1:] != cols[:-1]).numpy()[None, :]
        overlay[edges] = 0
    if legend is None:
        return overlay
    strip = draw_map_legend(width, legend)
    canvas = np.full((height + strip.shape[0], strip.shape[1], 3), 255, dtype=np.uint8)
    canvas[:height, :width] = overlay
    canvas[height:] = strip
    return canvas
