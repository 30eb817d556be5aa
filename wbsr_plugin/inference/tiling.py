"""Tiling and blending in torch: patches gathered from an LR image, and their SR outputs blended into one image.

Where the patches lie and how they are weighted is :mod:`wbsr_runtime.tile_geometry`, shared with the torch-free
runtime.
"""
import torch

from wbsr_plugin.utils.device_tensors import to_device
from wbsr_runtime.tile_geometry import blend_weights, stitch, tile_geometry


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
        # float32 on the host (numpy stitching, :meth:`stitch_per_patch`) and on the device
        self.host_weights = tuple(blend_weights(positions, length, p, s, trim).astype('float32')
                                  for positions, length in ((self.tops, h), (self.lefts, w)))
        self.row_weights, self.col_weights = (torch.from_numpy(weights).to(device) for weights in self.host_weights)
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
        """Add the patches one by one in numpy (:func:`wbsr_runtime.tile_geometry.stitch`, the torch-free runtime's
        own), on the CPU: the same adds as torch operations paid a dispatch each (700 patches of a 960x540 LR plan:
        30 ms against 47-51 ms in torch)."""
        sr = stitch(outputs.detach().float().cpu().numpy(), self.lq_size, self.patch, self.tops, self.lefts,
                    self.scale, *self.host_weights)
        return torch.from_numpy(sr).unsqueeze(0).to(outputs.device)

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
