"""What the engine does for GPUs, checked on the CPU: batch buckets, padded batches and widths, the channels-last
pixel shuffle, the whole-image fallback in tiles above the tensor-size limit, and the bounded graph cache (with a
stand-in capture). Each is checked against the plain computation it replaces."""
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from wbsr_plugin.archs.channels_last import ChannelsLastPixelShuffle, pixel_shuffle_channels_last
from wbsr_plugin.archs.wbsr_rcan_arch import WBSRRCAN
from wbsr_plugin.archs.wbsr_resnet_arch import WBSRResNet
from wbsr_plugin.inference import DynamicInferenceEngine, cuda_graphs
from wbsr_plugin.inference.cuda_graphs import Captured, GraphCache, batch_bucket, bucket_floor

CHANNELS_LAST = torch.channels_last


def small_resnet():
    torch.manual_seed(0)
    return WBSRResNet(num_feat=12, num_block=2, upscale=4, widths=[6, 12], depths=[1, 2]).eval()


def small_rcan():
    torch.manual_seed(0)
    return WBSRRCAN(num_feat=20, num_group=2, num_block=2, squeeze_factor=4, upscale=2, widths=[10, 20],
                    depths=[1, 2]).eval()


def textured(h, w):
    generator = torch.Generator().manual_seed(1)
    lq = torch.rand(1, 3, h, w, generator=generator)
    lq[..., :h // 2, :] = 0.4
    return lq


# -- buckets ------------------------------------------------------------------------------------------------------


def all_buckets(limit):
    """Every size up to 16, then 8 evenly spaced sizes per power of two: 9..16 x 2^e."""
    sizes = set(range(1, 17))
    for e in range(1, 20):
        sizes.update(m << e for m in range(9, 17))
    return sorted(s for s in sizes if s <= limit)


def test_batch_buckets_are_the_nearest_sizes_of_eight_per_octave():
    buckets = all_buckets(10_000)
    for count in range(1, 5000):
        assert batch_bucket(count) == min(b for b in buckets if b >= count)
        assert bucket_floor(count) == max(b for b in buckets if b <= count)
    assert batch_bucket(144) == 144 and batch_bucket(145) == 160  # 144 patches run as 144, not 256
    assert max((batch_bucket(n) - n) / n for n in range(1, 5000)) <= 1 / 8


@pytest.mark.parametrize('net_factory', [small_resnet, small_rcan])
def test_padded_batches_give_the_same_images(net_factory):
    net, lq = net_factory(), textured(100, 90)
    options = dict(patch_size=12, overlap=2, budget=0.6, whole_image_fallback=False, max_batch_pixels=19 * 144)
    plain, report = DynamicInferenceEngine(net, **options).run(lq)
    engine = DynamicInferenceEngine(net, **options, pad_batches=True)
    engine.run(lq)  # extracts the subnets
    sizes = []
    for m in range(len(net.subnets)):
        engine.subnets.module(m).register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    padded, _ = engine.run(lq)
    torch.testing.assert_close(padded, plain, rtol=0, atol=1e-6)
    calls = [min(19, n - first) for n in report.histogram if n for first in range(0, n, 19)]
    assert sorted(sizes) == sorted(batch_bucket(n) for n in calls)
    assert sorted(sizes) != sorted(calls)  # some calls were padded (to 18 or 20)


# -- widths -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('net_factory', [small_resnet, small_rcan])
def test_zero_padded_widths_give_the_same_images(net_factory):
    net, lq = net_factory(), textured(44, 40)
    options = dict(patch_size=12, overlap=2, budget=0.6, whole_image_fallback=False)
    plain, _ = DynamicInferenceEngine(net, **options).run(lq)
    engine = DynamicInferenceEngine(net, **options, pad_widths=8)
    padded, _ = engine.run(lq)
    torch.testing.assert_close(padded, plain, rtol=0, atol=1e-5)
    for m, spec in enumerate(net.subnets):
        convs = [c for c in engine.subnets.module(m).modules() if isinstance(c, torch.nn.Conv2d)]
        assert convs[0].out_channels == -(-spec.width // 8) * 8  # 6 -> 8, 12 -> 16, 10 -> 16, 20 -> 24
        with torch.no_grad():  # the extra channels are zero: the stand-alone padded network equals the subnet
            torch.testing.assert_close(engine.subnets.module(m)(lq), net(lq, subnet=m), rtol=0, atol=1e-5)


@pytest.mark.parametrize('value', [0, -8, 2.5, True])
def test_pad_widths_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match='pad_widths must be a positive integer or None'):
        DynamicInferenceEngine(small_resnet(), pad_widths=value)


# -- channels-last pixel shuffle ----------------------------------------------------------------------------------


@pytest.mark.parametrize('factor, shape', [(2, (2, 48, 5, 7)), (3, (1, 27, 4, 6)), (2, (3, 4, 1, 9))])
def test_channels_last_pixel_shuffle_equals_torchs(factor, shape):
    x = torch.randn(shape).contiguous(memory_format=CHANNELS_LAST)
    expected = F.pixel_shuffle(x.contiguous(), factor)
    out = pixel_shuffle_channels_last(x, factor)
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=CHANNELS_LAST)
    module = ChannelsLastPixelShuffle(factor)  # on the CPU: torch's own channels-last kernel
    assert torch.equal(module(x), expected) and torch.equal(module(x.contiguous()), expected)
    assert module(x).is_contiguous(memory_format=CHANNELS_LAST)


def test_extracted_channels_last_subnets_use_the_channels_last_shuffle():
    net = small_resnet()
    engine = DynamicInferenceEngine(net)
    shuffles = [type(m) for m in engine.subnets.module(3).modules() if isinstance(m, torch.nn.PixelShuffle)]
    assert shuffles == [ChannelsLastPixelShuffle]
    nchw = DynamicInferenceEngine(net, channels_last=False)
    assert [type(m) for m in nchw.subnets.module(3).modules() if isinstance(m, torch.nn.PixelShuffle)] == \
        [torch.nn.PixelShuffle]


# -- whole image above the tensor-size limit ----------------------------------------------------------------------


def test_whole_images_above_the_element_limit_run_in_tiles_under_it():
    net, lq = small_resnet(), textured(150, 130)
    engine = DynamicInferenceEngine(net, subnet=3)
    with torch.inference_mode():
        whole = engine.run_whole(lq, 3)
        per_pixel = 12 * 16  # widest tensor: 12 channels at 4 x 4 the LR pixels (HR conv; upconvs: 48 at 2 x 2)
        assert engine.subnets.elements_per_pixel(3) == per_pixel
        engine.max_tensor_elements = 70 * 70 * per_pixel
        calls = []
        engine.subnets.module(3).register_forward_pre_hook(lambda _, args: calls.append(tuple(args[0].shape)))
        tiled = engine.run_whole(lq, 3)
    assert len(calls) > 1 and all(h * w * per_pixel <= engine.max_tensor_elements for _, _, h, w in calls)
    assert tiled.shape == whole.shape == (1, 3, 600, 520)
    # a 2-block network sees 7 LR pixels around each pixel: pixels within 16 of a tile's border get no weight
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


# -- the graph cache ----------------------------------------------------------------------------------------------


class StandInGraph:
    """Replays like a captured graph: the module on the static input, into the static output."""

    def __init__(self, module, static_in, static_out):
        self.module, self.static_in, self.static_out = module, static_in, static_out

    def replay(self):
        self.static_out.copy_(self.module(self.static_in))


@pytest.fixture
def stand_in_capture(monkeypatch):
    """GraphCache with CPU stand-ins for the capture and the device context; counts captures."""
    captures = []

    def capture(self, module, shape, dtype, device, memory_format):
        static_in = torch.zeros(shape, dtype=dtype, device=device).contiguous(memory_format=memory_format)
        static_out = module(static_in)
        captures.append(shape)
        return Captured(StandInGraph(module, static_in, static_out), static_in, static_out)

    monkeypatch.setattr(GraphCache, '_capture', capture)
    monkeypatch.setattr(cuda_graphs.torch.cuda, 'device', lambda device: nullcontext())
    return captures


def test_the_graph_cache_is_keyed_by_subnet_and_bucket_and_bounded(stand_in_capture):
    net = small_resnet()
    modules = [net.extract_subnet(m) for m in range(2)]
    cache = GraphCache(max_graphs=3)
    with torch.no_grad():
        for count in (5, 5, 17, 18):  # 17 and 18 share the bucket 18
            batch = torch.rand(count, 3, 8, 8)
            torch.testing.assert_close(cache.run(0, modules[0], batch), modules[0](batch), rtol=0, atol=1e-6)
        assert stand_in_capture == [(5, 3, 8, 8), (18, 3, 8, 8)]
        cache.run(1, modules[1], torch.rand(5, 3, 8, 8))  # another subnet: its own graph
        cache.run(0, modules[0], torch.rand(5, 3, 8, 8))  # used again: now the most recent
        cache.run(0, modules[0], torch.rand(4, 3, 10, 10))  # a fourth graph: the least recently used goes
    assert len(cache) == 3 and len(stand_in_capture) == 4
    kept = [(key[0], key[1], key[2]) for key in cache.graphs]
    assert kept == [(1, 5, (3, 8, 8)), (0, 5, (3, 8, 8)), (0, 4, (3, 10, 10))]
    cache.clear()
    assert len(cache) == 0
