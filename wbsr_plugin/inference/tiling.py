"""Tiling and blending: where the patches of an LR image lie, and how their SR outputs become one image.

1. The LR image is covered by square patches of at most ``patch_size`` LR pixels (shrunk to
   the smallest size that needs no more patches); neighbours overlap by at least ``overlap``
   pixels (positions are spread evenly, so the last patch is not squeezed against the border).
2. Outputs are blended with windows that form a partition of unity: inside an overlap, each
   patch's weight is zero over the ``trim`` pixels next to its own edge (where its zero
   padding distorts it) and ramps linearly to one across the rest. The output is exactly
   ``scale`` times the input size for any input size.
"""
import math

import torch

from wbsr_plugin.utils.device_tensors import to_device

DEFAULT_PATCH_SIZE = 64
DEFAULT_OVERLAP = 4
DEFAULT_TRIM = 1


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
        self.row_weights = to_device(blend_weights(self.tops, h, p, s, trim), device, torch.float32)
        self.col_weights = to_device(blend_weights(self.lefts, w, p, s, trim), device, torch.float32)
        offsets = torch.arange(p * s, device=device)
        self.row_index = (to_device(self.tops, device, torch.long).view(-1, 1) * s + offsets).flatten()
        self.col_index = (to_device(self.lefts, device, torch.long).view(-1, 1) * s + offsets).flatten()

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


# run_in_tiles: tiles overlap by this many LR pixels, of which the outer half of each side gets no weight (it sees
# the tile's zero padding)
TILE_OVERLAP = 32


def run_in_tiles(module, x, side, scale, channels_last):
    """``module`` on overlapping tiles of ``x`` (1, c, h, w) of at most ``side`` LR pixels a side, one at a time,
    blended as the engine blends its patches: for an image whose whole-image tensors would be too large."""
    h, w = x.shape[-2:]
    patch, tops, lefts, trim = tile_geometry(h, w, max(2 * TILE_OVERLAP + 2, side), TILE_OVERLAP, TILE_OVERLAP // 2)
    outputs = []
    for top in tops:
        for left in lefts:
            tile = x[..., top:top + patch, left:left + patch]
            if channels_last:
                tile = tile.contiguous(memory_format=torch.channels_last)
            outputs.append(module(tile).float())
    return BlendGeometry((h, w), patch, tops, lefts, trim, scale, x.device).stitch(torch.cat(outputs))


def extract_patches(lq, patch_size, tops, lefts):
    """Every patch of the grid (row-major) of ``lq`` (1, c, h, w), shape (n, c, p, p), in one gather."""
    offsets = torch.arange(patch_size, device=lq.device)
    tops = to_device(tops, lq.device, torch.long)
    lefts = to_device(lefts, lq.device, torch.long)
    rows = (tops.unsqueeze(1) + offsets).repeat_interleave(len(lefts), dim=0)
    cols = (lefts.unsqueeze(1) + offsets).repeat(len(tops), 1)
    return lq[0][:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3).contiguous()
