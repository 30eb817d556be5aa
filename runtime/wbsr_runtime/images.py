"""Reading and writing images for inference (numpy and OpenCV), with documented handling of unusual inputs.

* 8-bit and 16-bit images are read; the output keeps the input's bit depth (PNG/TIFF keep
  16 bits; formats that cannot are written by OpenCV's rules).
* Grayscale (1 channel) is run as RGB with three equal channels and written back as grayscale.
* RGBA: the colour channels go through the network, the alpha channel is resized with
  bilinear interpolation, and the output keeps it.
* A file that cannot be opened (permission denied, ...) raises :class:`ImageReadError` with the system's
  reason; anything OpenCV cannot decode (corrupt, empty, not an image), float images, and more than
  four channels raise it too. The file is read here and decoded from memory, so OpenCV prints no
  warning lines of its own.
* An SR image with values that are not finite (NaN, Inf) is never written: :class:`NonFiniteOutput`.
* Files are written to a temporary name in the output folder and renamed, so a failure never leaves a
  half-written image; without ``replace`` a file that took the name meanwhile is kept (``FileExistsError``).
"""
from dataclasses import dataclass
from os import path as osp

import numpy as np

from .files import atomic_write_bytes

OPENCV_INSTALL = 'pip install opencv-python-headless (or the images extra: pip install "./runtime[images]")'


def opencv():
    """The ``cv2`` module; ImportError with the install line when OpenCV is missing (the torch-free runtime's
    Python API runs without it, its folder command needs it)."""
    try:
        import cv2
    except ImportError:
        raise ImportError(f'reading and writing images needs OpenCV: {OPENCV_INSTALL}') from None
    return cv2


class ImageReadError(ValueError):
    """An input file that cannot be used as an image."""


class NonFiniteOutput(ValueError):
    """The network gave values that are not finite (NaN or Inf) for an image: it is not written."""


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


def read_rgb(path):
    """Read an image as a (3, h, w) float32 RGB array in [0, 1] and its :class:`ImageInfo`."""
    if not osp.isfile(path):
        raise ImageReadError(f'{path}: no such file.')
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(f'{path}: cannot read it: {(err.strerror or str(err)).lower()}.') from None
    if data.size == 0:
        raise ImageReadError(f'{path}: empty file.')
    cv2 = opencv()
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
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
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)), ImageInfo(mode, max_value, alpha)


def rgb_to_image(rgb, info):
    """An RGB float32 array (H, W, 3) in [0, 1] as an OpenCV array in the input's mode and bit depth."""
    cv2 = opencv()
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
    return np.ascontiguousarray((img * info.max_value).round().astype(output_dtype(info.max_value)))


def output_dtype(max_value):
    """The NumPy integer type of ``max_value`` (255 or 65535)."""
    if max_value == 255:
        return np.uint8
    if max_value == 65535:
        return np.uint16
    raise ValueError(f'unknown bit depth: max_value {max_value}; expected one of [255, 65535].')


def write_image_atomic(path, img, *, replace=True):
    """Encode ``img`` by the extension of ``path``, write it to a temporary name, then rename (``replace``: as
    :func:`~wbsr_runtime.files.atomic_path`'s)."""
    ext = osp.splitext(path)[1]
    ok, data = opencv().imencode(ext, img)
    if not ok:
        raise OSError(f'cannot encode an image as {ext!r} for {path}.')
    atomic_write_bytes(path, data.tobytes(), replace=replace)
