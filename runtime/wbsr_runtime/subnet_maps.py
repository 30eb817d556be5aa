"""Subnet maps: every output pixel coloured by the subnet that served it, with a legend (``--save-map`` of
``infer`` and ``wbsr-run``; numpy and OpenCV)."""
from dataclasses import dataclass

import numpy as np

from .images import opencv


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


def subnet_map_legend(report, flops):
    """The :class:`MapLegend` of an :class:`~.report.InferenceReport`; ``flops(h, w, s)``: FLOPs of subnet ``s`` on
    an h x w LR input."""
    ratio = f'{100 * report.flops_ratio:.1f}% of full FLOPs'
    whole = _whole_image_subnet(report.plan)
    if whole is not None:
        patches = [0] * len(report.subnet_names)
        shares = [float(i == whole) for i in range(len(report.subnet_names))]
        return MapLegend(list(report.subnet_names), patches, shares, f'whole image, {ratio}')
    p = report.plan.patch_size
    spent = [n * flops(p, p, i) for i, n in enumerate(report.histogram)]
    total = sum(spent) or 1
    return MapLegend(list(report.subnet_names), list(report.histogram), [f / total for f in spent],
                     f'{sum(report.histogram)} patches, {ratio}')


def subnet_colours(num_subnets):
    """BGR colour of each subnet in cost order: OpenCV's JET, cheapest blue, full network red."""
    levels = (np.arange(num_subnets) * (255 // max(num_subnets - 1, 1))).astype(np.uint8)
    cv2 = opencv()
    return cv2.applyColorMap(levels[:, None], cv2.COLORMAP_JET)[:, 0]


LEGEND_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX (OpenCV is imported where it draws: the runtime's API needs none)
LEGEND_FONT_SCALE = 0.45
LEGEND_LINE = 20
LEGEND_COLUMN = 250  # pixels per legend column; the strip is at least this wide


def draw_map_legend(width, legend):
    """A white strip ``max(width, LEGEND_COLUMN)`` pixels wide with one row per subnet (uint8 BGR).

    Each row: colour swatch, subnet name, patches and the share of the image's FLOPs spent in it
    (grey when unused), below the legend's title.
    """
    cv2 = opencv()
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
        index = np.asarray(plan.subnets)[rows][:, cols]
    else:  # the whole image ran through one subnet, not the tiled plan
        index = np.full((height, width), whole)
    colours = subnet_colours(num_subnets)[index]
    overlay = opencv().addWeighted(img_bgr, 1 - opacity, colours, opacity, 0)
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
