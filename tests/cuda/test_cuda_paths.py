"""The CUDA path against the CPU: the engine (fp32 equal, fp16 within a stated tolerance), CUDA graphs on against off,
padded batches and widths, the whole image in tiles, a plan without host syncs, one training step through
DynamicSRModel, export of a CUDA-trained checkpoint, and infer's overlapped pipeline against the serial one.
Every test skips without a GPU (benchmarks/device_check.sh runs them on one)."""
import copy
import warnings

import pytest
import torch
from conftest import parsed_options, strong_tiny_resnet, tiny_checkpoint, train_options  # noqa: F401

from wbsr_plugin import export, infer
from wbsr_plugin.archs.channels_last import ChannelsLastPixelShuffle
from wbsr_plugin.inference import DynamicInferenceEngine

from basicsr.models import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
CUDA = torch.device('cuda')

# fp16 against fp32 on [0, 1] images through a small network: half a grey level of an 8-bit image
FP16_TOLERANCE = 2e-3
FP32_TOLERANCE = 1e-5  # cuDNN and oneDNN sum in different orders


def textured(h, w, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lq = torch.rand(1, 3, h, w, generator=generator)
    lq[..., :h // 2, :] = 0.45
    return lq


ENGINE_SETTINGS = [{}, {'budget': 0.6}, {'budget': 0.5, 'whole_image_fallback': False}, {'subnet': 1}]


@pytest.mark.parametrize('options', ENGINE_SETTINGS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
def test_the_engine_on_cuda_matches_the_cpu(options, dtype):
    net = strong_tiny_resnet()
    lq = textured(70, 90)
    expected, cpu_report = DynamicInferenceEngine(copy.deepcopy(net), patch_size=16, **options).run(lq)
    engine = DynamicInferenceEngine(net.to('cuda', dtype), patch_size=16, **options)
    sr, report = engine.run(lq)
    assert sr.device.type == 'cuda' and sr.dtype == torch.float32
    assert report.histogram == cpu_report.histogram  # the same plan
    tolerance = FP32_TOLERANCE if dtype == torch.float32 else FP16_TOLERANCE
    torch.testing.assert_close(sr.cpu(), expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float16])
@pytest.mark.parametrize('extra', [{}, {'pad_widths': 8}, {'channels_last': False}])
def test_cuda_graphs_on_and_off_give_the_same_images(dtype, extra):
    net = strong_tiny_resnet().to('cuda', dtype)
    options = dict(patch_size=16, budget=0.6, whole_image_fallback=False, **extra)
    eager = DynamicInferenceEngine(net, **options)
    graphed = DynamicInferenceEngine(net, **options, cuda_graphs=True)
    tolerance = 1e-6 if dtype == torch.float32 else FP16_TOLERANCE
    for seed, size in ((0, (70, 90)), (1, (70, 90)), (2, (50, 61))):  # a replay with new contents, a new size
        lq = textured(*size, seed=seed)
        torch.testing.assert_close(graphed.run(lq)[0], eager.run(lq)[0], rtol=0, atol=tolerance)
    assert 0 < len(graphed.subnets.graphs) <= graphed.subnets.graphs.max_graphs


@pytest.mark.parametrize('extra', [{'pad_batches': True}, {'pad_widths': 8}])
def test_padded_batches_and_widths_on_cuda_give_the_same_images(extra):
    net = strong_tiny_resnet().to('cuda')
    lq = textured(70, 90)
    options = dict(patch_size=16, budget=0.6, whole_image_fallback=False)
    plain = DynamicInferenceEngine(net, **options).run(lq)[0]
    torch.testing.assert_close(DynamicInferenceEngine(net, **options, **extra).run(lq)[0], plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize('factor, shape', [(2, (2, 256, 33, 47)), (3, (1, 27, 10, 12))])
def test_the_channels_last_pixel_shuffle_on_cuda_equals_torchs(factor, shape):
    x = torch.randn(shape, device='cuda').contiguous(memory_format=torch.channels_last)
    out = ChannelsLastPixelShuffle(factor)(x)
    assert torch.equal(out, torch.nn.functional.pixel_shuffle(x.contiguous(), factor))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_the_whole_image_above_the_element_limit_runs_in_tiles_on_cuda():
    net = strong_tiny_resnet().to('cuda')
    lq = textured(150, 130).to(CUDA)
    engine = DynamicInferenceEngine(net, subnet=3)
    with torch.inference_mode():
        whole = engine.run_whole(lq, 3)
        engine.max_tensor_elements = 70 * 70 * engine.subnets.elements_per_pixel(3)
        tiled = engine.run_whole(lq, 3)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-4)


def test_the_plan_waits_for_the_device_once():
    """The class histogram (with the image's thresholds) is the plan's only read from the device."""
    net = strong_tiny_resnet().to('cuda')
    lq = textured(70, 90).to(CUDA)
    engine = DynamicInferenceEngine(net, patch_size=16, budget=0.5, whole_image_fallback=False)
    engine.run(lq)
    torch.cuda.set_sync_debug_mode('warn')
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            plan = engine.plan(lq)
            batches, outputs = engine.patch_batches(lq, plan)
            for runner, ids, batch in batches:
                outputs[ids] = runner(batch)
            engine.stitch(outputs, plan)
    finally:
        torch.cuda.set_sync_debug_mode('default')
    syncs = [str(w.message) for w in caught if 'synchroniz' in str(w.message).lower()]
    assert len(syncs) <= 1, syncs


def test_one_training_step_and_export_of_a_cuda_trained_checkpoint(tmp_path):
    opt = train_options('cuda_step', model_type='DynamicSRModel', num_gpu=1)
    opt['wbsr'] = {'subnet_sampling': 'sandwich', 'calibration_patches': 32,
                   'inference': {'patch_size': 12, 'overlap': 2}}
    model = build_model(parsed_options(opt, tmp_path))
    assert next(model.net_g.parameters()).device.type == 'cuda'
    before = [p.detach().clone() for p in model.net_g.parameters()]
    model.feed_data({'lq': torch.rand(2, 3, 16, 16), 'gt': torch.rand(2, 3, 64, 64)})
    model.optimize_parameters(1)
    log = model.get_current_log()
    assert all(isinstance(v, float) for v in log.values()) and log['l_pix'] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.net_g.parameters()))
    model.save(0, 1)
    checkpoint = next((tmp_path / 'experiments' / 'cuda_step' / 'models').glob('net_g_1.pth'))
    export.main(['--model', str(checkpoint), '-o', str(tmp_path / 'exported'), '--all'])
    assert len(list((tmp_path / 'exported').glob('*.pth'))) == len(model.net_g.subnets)


def test_infers_overlapped_pipeline_writes_what_the_serial_one_writes(tmp_path, tiny_checkpoint):  # noqa: F811
    import cv2
    import numpy as np
    inputs = tmp_path / 'in'
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        cv2.imwrite(str(inputs / f'{i}.png'), rng.integers(0, 256, (30 + i, 41, 3), dtype=np.uint8))
    outputs = {}
    for mode in ('serial', 'overlapped'):
        out = tmp_path / mode
        args = ['-i', str(inputs), '-o', str(out), '--model', tiny_checkpoint, '--device', 'cuda', '--save-map']
        assert infer.main(args + ['--pipeline', mode]) in (0, None)
        outputs[mode] = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    assert outputs['serial'] == outputs['overlapped'] and len(outputs['serial']) == 8
