"""Images for the torch engine: tensors read and written through :mod:`wbsr_runtime.images` (how unusual
inputs are handled is documented there), SR tensors copied to the host once, and subnet maps."""

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
