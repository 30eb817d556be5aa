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
import os
from dataclasses import dataclass
from os import path as osp

import cv2
import numpy as np
import torch

from wbsr_plugin.file_util import IMAGE_EXTENSIONS, atomic_write_bytes


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


def list_images(path):
    """Image files of a folder (sorted, hidden files skipped) or ``[path]`` for a file."""
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise FileNotFoundError(f'no such file or folder: {path}')
    names = sorted(n for n in os.listdir(path) if not n.startswith('.') and n.lower().endswith(IMAGE_EXTENSIONS))
    return [osp.join(path, n) for n in names]


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


def subnet_map_overlay(img_bgr, plan, scale, num_subnets, opacity=0.45):
    """Colour each output pixel by the subnet that weighs most in it, over ``img_bgr`` (uint8, H x W x 3).

    Cheapest subnet blue, full network red (OpenCV's JET colour map); patch borders are drawn.
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

    rows, cols = owners(plan.tops, height), owners(plan.lefts, width)
    index = plan.subnets[rows][:, cols].numpy()
    levels = (index * (255 // max(num_subnets - 1, 1))).astype(np.uint8)
    colours = cv2.applyColorMap(levels, cv2.COLORMAP_JET)
    overlay = cv2.addWeighted(img_bgr, 1 - opacity, colours, opacity, 0)
    edges = np.zeros((height, width), dtype=bool)
    edges[1:, :] |= (rows[1:] != rows[:-1]).numpy()[:, None]
    edges[:, 1:] |= (cols[1:] != cols[:-1]).numpy()[None, :]
    overlay[edges] = 0
    return overlay
