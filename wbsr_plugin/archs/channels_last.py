"""Channels-last helpers for the stand-alone subnets the inference engine runs.

On CUDA, ``nn.PixelShuffle`` on a channels-last tensor goes through NCHW and back: two extra copies of the largest
tensor of the network. Read as NHWC memory, the shuffle is one permutation, done here in one copy that is
channels-last again. The CPU has a channels-last kernel of its own, faster than this (2 threads: 26 against 31 ms on
a 256 x 240 x 320 tensor), which is kept there.
"""
import torch
from torch import nn


def pixel_shuffle_channels_last(x, factor):
    """``F.pixel_shuffle(x, factor)`` of a channels-last ``x`` (n, c r^2, h, w), returned channels-last."""
    n, c, h, w = x.shape
    out_ch = c // (factor * factor)
    nhwc = x.permute(0, 2, 3, 1).view(n, h, w, out_ch, factor, factor)
    shuffled = nhwc.permute(0, 1, 4, 2, 5, 3).reshape(n, h * factor, w * factor, out_ch)
    return shuffled.permute(0, 3, 1, 2)


class ChannelsLastPixelShuffle(nn.PixelShuffle):
    """``nn.PixelShuffle`` that shuffles channels-last inputs on a GPU in their own layout (others as before)."""

    def forward(self, x):
        if x.device.type != 'cpu' and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
                and not x.is_contiguous():
            return pixel_shuffle_channels_last(x, self.upscale_factor)
        return super().forward(x)


def to_channels_last(module):
    """``module`` (in place) with its weights in channels-last memory format and every ``nn.PixelShuffle`` a
    :class:`ChannelsLastPixelShuffle`: how the engine runs its subnets, and how a plain network is timed beside it."""
    module.to(memory_format=torch.channels_last)
    for parent in module.modules():
        for name, child in parent.named_children():
            if type(child) is nn.PixelShuffle:
                parent._modules[name] = ChannelsLastPixelShuffle(child.upscale_factor)
    return module
