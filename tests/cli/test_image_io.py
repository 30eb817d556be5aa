"""Image files: modes that round-trip, unreadable files."""
from os import path as osp

import cv2
import numpy as np
import pytest
from conftest import FIXTURES, TINY_RESNET

import wbsr_plugin  # noqa: F401
from wbsr_plugin.cli.image_io import read_image, to_image
from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_runtime.images import ImageReadError

from basicsr.archs import build_network

LR_FIXTURES = osp.join(FIXTURES, 'lr_x4')


@pytest.mark.parametrize('kind', ['gray', 'rgba', 'rgb16'])
def test_image_modes_round_trip(kind, tmp_path):
    rgb = cv2.imread(osp.join(LR_FIXTURES, 'coffee.png'))
    if kind == 'gray':
        img = cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY)
    elif kind == 'rgba':
        img = np.concatenate([rgb, np.full(rgb.shape[:2] + (1, ), 128, np.uint8)], axis=2)
    elif kind == 'rgb16':
        img = rgb.astype(np.uint16) * 257
    else:
        raise ValueError(kind)
    path = str(tmp_path / 'in.png')
    cv2.imwrite(path, img)
    lq, info = read_image(path)
    assert lq.shape == (1, 3, 24, 24) and 0 <= lq.min() and lq.max() <= 1
    sr, _ = DynamicInferenceEngine(build_network(dict(TINY_RESNET, upscale=4)).eval(), patch_size=16).run(lq)
    out = to_image(sr, info)
    assert out.dtype == img.dtype and out.shape[:2] == (96, 96) and out.ndim == img.ndim
    if kind == 'rgba':
        assert out.shape[2] == 4 and (out[..., 3] == 128).all()


def test_unreadable_images_raise(tmp_path):
    (tmp_path / 'empty.png').write_bytes(b'')
    with pytest.raises(ImageReadError, match='empty'):
        read_image(str(tmp_path / 'empty.png'))
    (tmp_path / 'bad.jpg').write_bytes(b'garbage')
    with pytest.raises(ImageReadError, match='cannot decode'):
        read_image(str(tmp_path / 'bad.jpg'))
