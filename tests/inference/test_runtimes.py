"""Runtimes behind the engine: the same plan and (within precision) the same image in every runtime, compiled models
cached, the choice by measurement and its precision rule, and one-line refusals."""
import math
import os

import pytest
import torch
from conftest import TINY_RESNET

from wbsr_plugin.inference import DynamicInferenceEngine, runtime_choice
from wbsr_plugin.inference.cost_model import cost_key
from wbsr_plugin.inference.runtimes import (
    TORCH_FP32,
    CompiledSubnets,
    Runtime,
    RuntimeUnavailable,
    check_runtime,
    torch_threads_beside,
)
from wbsr_runtime.cost_table import CostTable
from wbsr_runtime.sessions import cpu_has_bf16, installed

from basicsr.archs import build_network

THRESHOLDS = [0.05 * k for k in range(1, 10)]
EXTERNAL = [pytest.param(name, marks=pytest.mark.skipif(not installed(name), reason=f'{name} is not installed'))
            for name in ('openvino', 'onnxruntime')]
needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(), reason='this CPU has no native bfloat16')


def tiny_net():
    torch.manual_seed(0)
    return build_network(dict(TINY_RESNET, upscale=4)).eval()


def run(net, **options):
    engine = DynamicInferenceEngine(net, thresholds=THRESHOLDS, patch_size=16, overlap=2, budget=0.6, **options)
    torch.manual_seed(1)
    return engine.run(torch.rand(1, 3, 37, 45))


@pytest.mark.parametrize('name', EXTERNAL)
def test_an_external_runtime_in_fp32_gives_the_torch_image(name):
    net = tiny_net()
    reference, plan = run(net)
    sr, report = run(net, runtime=Runtime(name, 'fp32'))
    assert report.histogram == plan.histogram and report.flops == plan.flops
    assert sr.dtype == torch.float32 and sr.shape == reference.shape
    assert (sr - reference).abs().max() < 1e-5


@needs_bf16
@pytest.mark.parametrize('name', ['torch', pytest.param('openvino', marks=EXTERNAL[0].marks)])
def test_bf16_stays_close_to_fp32(name):
    net = tiny_net()
    reference, _ = run(net)
    sr, _ = run(net, runtime=Runtime(name, 'bf16'))
    error = (sr - reference).abs().max().item()
    assert 0 < error < 3e-2  # bf16 keeps 8 bits of mantissa: close, but not equal


@pytest.mark.parametrize('name', EXTERNAL)
def test_converted_models_are_cached_per_weights(name, tmp_path):
    net = tiny_net()
    full = net.extract_subnet(len(net.subnets) - 1)
    compiler = CompiledSubnets(Runtime(name, 'fp32'), str(tmp_path))
    compiler.compile(full)
    files = {f: os.path.getmtime(tmp_path / f) for f in os.listdir(tmp_path) if not f.startswith('openvino')}
    assert files and not [f for f in files if f.endswith('.tmp') or f.startswith('.ir_')]
    compiler.compile(full)  # the same weights: nothing converted again
    assert {f: os.path.getmtime(tmp_path / f) for f in files} == files
    with torch.no_grad():
        net.conv_first.weight.add_(0.1)
    compiler.compile(net.extract_subnet(len(net.subnets) - 1))  # new weights, a new key
    assert len([f for f in os.listdir(tmp_path) if f.endswith('.onnx')]) == 2


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_srresnet_on_its_split_image_plus_the_bilinear_image_is_srresnet(scale):
    """What a bf16 runtime runs for SRResNet, on the image in two parts, and the image added after it, make the
    network (fp32); the parts of the image and of the weights that carry their first 8 bits are bf16 numbers."""
    from wbsr_plugin.inference.runtimes import Float32EndsSRResNet

    torch.manual_seed(0)
    net = build_network(dict(TINY_RESNET, upscale=scale)).eval()
    module = net.extract_subnet(1)
    x = torch.rand(2, 3, 9, 7)
    wrapped = Float32EndsSRResNet(module)
    with torch.no_grad():
        parts = Float32EndsSRResNet.split(x)
        hi, lo = parts[:, :3], parts[:, 3:]
        assert torch.equal(hi + lo, x) and torch.equal(hi.to(torch.bfloat16).float(), hi)
        assert (lo.abs() <= x.abs() * 2.**-8).all()  # what a bf16 runtime rounds: lo, to 2^-8 of itself
        weights = wrapped.conv_first.weight.chunk(3, 1)
        assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0].to(torch.bfloat16).float(), weights[0])
        torch.testing.assert_close(weights[0] + weights[2], module.conv_first.weight, rtol=0, atol=0)
        base = torch.nn.functional.interpolate(x, scale_factor=scale, mode='bilinear', align_corners=False)
        torch.testing.assert_close(wrapped(parts) + base, module(x), rtol=0, atol=2e-6)
    assert Float32EndsSRResNet.applies(module)
    rcan = build_network({'type': 'WBSRRCAN', 'upscale': 4, 'num_feat': 8, 'num_group': 1, 'num_block': 2,
                          'squeeze_factor': 4, 'widths': [4, 8], 'depths': [1, 2]})
    assert not Float32EndsSRResNet.applies(rcan.extract_subnet(0))


@needs_bf16
@pytest.mark.skipif(not installed('openvino'), reason='openvino is not installed')
def test_openvino_bf16_keeps_srresnets_image_in_float32_where_it_enters_and_leaves(tmp_path):
    from wbsr_plugin.inference.runtimes import Float32EndsSRResNet

    net = tiny_net()
    module = net.extract_subnet(len(net.subnets) - 1)
    compiler = CompiledSubnets(Runtime('openvino', 'bf16'), str(tmp_path))
    run = compiler.compile(module)
    residual = compiler._model_file(Float32EndsSRResNet(module), 6, '.onnx')
    assert [str(p) for p in tmp_path.glob('*.onnx')] == [residual]  # what was converted: the residual alone
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():
        assert (run(x) - module(x)).abs().max() < 3e-2  # and the image added back


@pytest.mark.parametrize('name', EXTERNAL)
def test_engines_on_the_same_weights_share_one_compiled_model_while_one_holds_it(name, tmp_path):
    import gc

    from wbsr_runtime import sessions

    net = tiny_net()
    full = net.extract_subnet(len(net.subnets) - 1)
    compilers = [CompiledSubnets(Runtime(name, 'fp32'), str(tmp_path)) for _ in range(2)]
    first, second = (c.compile(full) for c in compilers)
    shared = [key for key in sessions._COMPILED.keys() if str(tmp_path) in key[1]]
    assert len(shared) == 1  # one compiled model for both callables
    x = torch.rand(2, 3, 9, 7)
    torch.testing.assert_close(first(x), second(x), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(first(x), full(x), rtol=1e-4, atol=1e-5)
    del first, second
    gc.collect()
    assert not [key for key in sessions._COMPILED.keys() if str(tmp_path) in key[1]]  # freed with its last user


def test_a_rewritten_model_file_is_compiled_again(tmp_path):
    from wbsr_runtime.sessions import shared_compiled

    class Compiled:
        pass

    path = tmp_path / 'model.onnx'
    path.write_bytes(b'one')
    made = []

    def compile_model():
        made.append(Compiled())
        return made[-1]

    first = shared_compiled('onnxruntime', str(path), 'fp32', 2, compile_model)
    assert shared_compiled('onnxruntime', str(path), 'fp32', 2, compile_model) is first
    assert shared_compiled('onnxruntime', str(path), 'fp32', 1, compile_model) is not first  # other threads
    path.write_bytes(b'other')  # a new export in the same place
    assert shared_compiled('onnxruntime', str(path), 'fp32', 2, compile_model) is not first
    assert len(made) == 3


@pytest.mark.parametrize('arch', ['WBSRResNet', 'WBSRRCAN', 'WBSREDSR'])
def test_torch_bf16_keeps_the_image_in_float32_where_it_enters_and_leaves(arch):
    """Under bf16 autocast the first convolution computes in float32 and the last one gives float32 (what follows
    it adds the image back); every other convolution computes in bf16, whether or not this CPU does natively; the
    module itself is left as it was and the runner runs exactly this."""
    from wbsr_plugin.inference.runtimes import with_float32_ends

    options = {'WBSRResNet': dict(TINY_RESNET), 'WBSRRCAN': dict(num_feat=8, num_group=1, num_block=2, squeeze_factor=4,
                                                                widths=[4, 8], depths=[1, 2]),
               'WBSREDSR': dict(num_feat=8, num_block=2, widths=[4, 8], depths=[1, 2])}[arch]
    torch.manual_seed(0)
    net = build_network(dict(options, type=arch, upscale=4)).eval()
    module = net.extract_subnet(len(net.subnets) - 1)
    mixed = with_float32_ends(module)
    seen = {}

    def record(name):
        def hook(_, args, out):
            seen.setdefault(name, (args[0].dtype, out.dtype))
        return hook

    for name, layer in mixed.named_modules():
        if isinstance(layer, torch.nn.Conv2d) or name == 'conv_last':
            layer.register_forward_hook(record(name))
    x = torch.rand(1, 3, 12, 10)
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        sr = mixed(x)
    assert seen.pop('conv_first.layer') == (torch.float32, torch.float32)
    assert seen.pop('conv_last')[1] == torch.float32 and seen.pop('conv_last.layer')[1] == torch.bfloat16
    assert seen and {out for _, out in seen.values()} == {torch.bfloat16}  # every other one computes in bf16
    assert isinstance(module.conv_first, torch.nn.Conv2d) and isinstance(module.conv_last, torch.nn.Conv2d)
    assert [p.data_ptr() for p in mixed.parameters()] == [p.data_ptr() for p in module.parameters()]
    with torch.inference_mode():
        run = CompiledSubnets(Runtime('torch', 'bf16'), '.').compile(module)
        torch.testing.assert_close(run(x), sr.float(), rtol=0, atol=0)
        assert 0 < (sr - module(x)).abs().max() < 5e-2


def test_refusals_are_one_line(monkeypatch):
    with pytest.raises(RuntimeUnavailable, match='on cuda the runtime is torch'):
        check_runtime(Runtime('openvino', 'fp32'), 'cuda')
    monkeypatch.setattr('wbsr_runtime.sessions.installed', lambda name: False)
    with pytest.raises(RuntimeUnavailable, match=r'runtime openvino is not installed: pip install openvino'):
        check_runtime(Runtime('openvino', 'fp32'), 'cpu')
    with pytest.raises(RuntimeUnavailable, match='runtime must be one of torch, openvino, onnxruntime'):
        Runtime('tensorrt', 'fp32')
    monkeypatch.setattr('wbsr_plugin.inference.runtimes.cpu_has_bf16', lambda: False)
    with pytest.raises(RuntimeUnavailable, match='no native bfloat16'):
        check_runtime(Runtime('torch', 'bf16'), 'cpu')


def test_a_cost_table_of_another_runtime_is_refused():
    net = tiny_net()
    cost = CostTable(cost_key(net, 'cpu', torch.float32, True, Runtime('torch', 'bf16')), (256, ),
                     tuple((1., ) for _ in net.subnets))
    with pytest.raises(ValueError, match='measured for runtime torch bf16, the engine runs torch fp32'):
        DynamicInferenceEngine(net, cost_table=cost)


def fake_tables(seconds):
    """``load_or_measure`` giving each runtime a table whose full network takes ``seconds[str(runtime)]``."""

    def load(net, device, dtype, runtime=TORCH_FP32, **kwargs):
        rate = seconds[str(runtime)] / (192 * 192)
        return CostTable(cost_key(net, device, dtype, True, runtime), (192 * 192, ),
                         tuple((rate * 192 * 192, ) for _ in net.subnets))

    return load


def test_auto_picks_the_fastest_that_passes_the_precision_rule(monkeypatch):
    net = tiny_net()
    candidates = [TORCH_FP32, Runtime('torch', 'bf16'), Runtime('openvino', 'fp32'), Runtime('openvino', 'bf16')]
    monkeypatch.setattr(runtime_choice, 'candidate_runtimes', lambda device: candidates)
    monkeypatch.setattr(runtime_choice, 'load_or_measure', fake_tables(
        {'torch fp32': 1., 'torch bf16': 0.5, 'openvino fp32': 0.9, 'openvino bf16': 0.4}))
    losses = {'torch bf16': 0.005, 'openvino bf16': 0.0101}  # just above the rule's 0.01 dB
    monkeypatch.setattr(runtime_choice, 'bf16_loss_db', lambda net, runtime: losses[str(runtime)])
    runtime, reason = runtime_choice.choose_runtime(net, 'cpu', 'auto', 'auto')
    assert runtime == Runtime('torch', 'bf16') and 'openvino bf16 may lose 0.010 dB at 45 dB' in reason
    losses['openvino bf16'] = 0.0099  # just below
    assert runtime_choice.choose_runtime(net, 'cpu', 'auto', 'auto')[0] == Runtime('openvino', 'bf16')
    assert runtime_choice.choose_runtime(net, 'cpu', 'auto', 'fp32')[0] == Runtime('openvino', 'fp32')
    losses['openvino bf16'] = 1.  # an explicit bf16 request is honoured whatever the loss
    monkeypatch.setattr(runtime_choice, 'check_runtime', lambda runtime, device: None)
    assert runtime_choice.choose_runtime(net, 'cpu', 'openvino', 'bf16')[0] == Runtime('openvino', 'bf16')


def test_the_bf16_check_photos_and_psnr():
    """Real photographs cut to LR/HR pairs of the scale; Y-PSNR by hand: an SR image 8 grey levels above HR in every
    channel is 8 * 219 / 255 levels above it in Y (BT.601), before rounding: about 6.87, rounded to 7."""
    pairs = runtime_choice.check_photos(4)
    assert len(pairs) == 3 and all(lq.shape[-1] * 4 == hr.shape[1] and lq.shape[-1] >= 64 for lq, hr in pairs)
    hr = pairs[0][1] * 0.5 + 0.25  # away from the clamp
    sr = torch.from_numpy(hr + 8. / 255.).permute(2, 0, 1)[None]
    expected = 10 * math.log10(255.**2 / 7.**2)
    assert runtime_choice.y_psnr(sr, hr, 4) == pytest.approx(expected, abs=0.2)


def test_the_bf16_bound_is_the_loss_an_added_error_causes_at_45_db(monkeypatch, tmp_path):
    """A 'bf16' runtime whose output is the fp32 one plus 2 grey levels adds (2 * 219 / 255)^2 to the squared Y error
    (BT.601); on a 45 dB result (squared error 255^2 / 10^4.5) that costs 10 log10(1 + added / that) dB, by hand."""

    class Grey(torch.nn.Module):  # the full network's output: mid-grey, away from the clamp
        def forward(self, lq):
            return torch.full((1, 3, 4 * lq.shape[-2], 4 * lq.shape[-1]), 0.5)

    class Shifted:  # the runtime: 2 grey levels brighter
        def __init__(self, runtime, folder):
            pass

        def compile(self, module):
            return lambda lq: module(lq) + 2. / 255.

    net = tiny_net()
    monkeypatch.setattr(net, 'extract_subnet', lambda index: Grey())
    monkeypatch.setattr(runtime_choice, 'CompiledSubnets', Shifted)
    expected = 10 * math.log10(1 + (2. * 219. / 255.)**2 / (255.**2 * 10**-4.5))
    loss = runtime_choice.bf16_loss_db(net, Runtime('openvino', 'bf16'), folder=str(tmp_path))
    assert loss == pytest.approx(expected, rel=1e-6) and 3.8 < expected < 3.9
    monkeypatch.setattr(runtime_choice, 'CompiledSubnets', None)  # cached: nothing runs again
    assert runtime_choice.bf16_loss_db(net, Runtime('openvino', 'bf16'), folder=str(tmp_path)) == loss


def test_torch_runs_single_threaded_beside_another_runtime_and_gets_its_threads_back():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch_threads_beside(Runtime('openvino', 'fp32')):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(KeyError), torch_threads_beside(Runtime('onnxruntime', 'fp32')):
            raise KeyError('restored on errors too')
        assert torch.get_num_threads() == 2
        with torch_threads_beside(Runtime('torch', 'bf16')):
            assert torch.get_num_threads() == 2
        with torch_threads_beside(Runtime('openvino', 'fp32'), elements=3 * 96 * 96):  # below torch's grain size
            assert torch.get_num_threads() == 2
        with torch_threads_beside(Runtime('openvino', 'fp32'), elements=3 * 128 * 128):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
