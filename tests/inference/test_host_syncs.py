"""The engine's plan waits for the device once per image: the class histogram (and the image's quantile thresholds)
come back in one read, and nothing else of the plan or the run reads a device value or sends a Python list straight
to a device. Checked on the CPU by recording every torch call that would make the host wait on a GPU."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

from wbsr_plugin.archs.wbsr_resnet_arch import WBSRResNet
from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_plugin.inference.tiling import BlendGeometry
from wbsr_plugin.utils.device_tensors import class_histogram, to_device
from wbsr_runtime.class_thresholds import ClassThresholds

# calls that read a device value back to the host (or, bincount and nonzero, need their size from it)
READS = {'tolist', 'item', '__bool__', '__float__', '__int__', '__index__', 'cpu', 'numpy', 'bincount', 'nonzero',
         'unique', 'masked_select', 'argwhere'}


class HostSyncRecorder(TorchFunctionMode):
    """Records the torch calls that, on a GPU, make the host wait: reads of device values, boolean-mask indexing
    (its size comes from the device), and Python numbers sent to a device in one call (a pageable copy)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', str(func))
        if name in READS:
            self.calls.append(name)
        elif name == '__getitem__' and any(torch.is_tensor(i) and i.dtype == torch.bool
                                           for i in (args[1] if isinstance(args[1], tuple) else (args[1], ))):
            self.calls.append('boolean index')
        elif name in ('tensor', 'as_tensor') and kwargs.get('device') not in (None, 'cpu', torch.device('cpu')):
            self.calls.append(f'{name} to a device')
        return func(*args, **kwargs)


def tiny_net():
    return WBSRResNet(num_feat=16, num_block=2, upscale=4, widths=[8, 16], depths=[1, 2]).eval()


def textured_image():
    generator = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, 40, 56, generator=generator)
    lq[..., :20, :] = 0.5  # flat top half: easy patches beside hard ones
    return lq


CLASS_ERRORS = [[(10 - k) * e for e in (1., .6, .5, .3)] for k in range(10)]


@pytest.mark.parametrize('options', [
    {},
    {'thresholds': [0.5 * k for k in range(1, 10)]},
    {'budget': 0.5},
    {'budget': 0.5, 'class_errors': CLASS_ERRORS},
    {'max_loss': 0.05, 'class_errors': CLASS_ERRORS},
    {'max_loss': 0.05, 'thresholds': ClassThresholds.of([0.5 * k for k in range(1, 10)], class_errors=CLASS_ERRORS,
                                                        class_detail=[1e4] * 10)},  # the image's detail read as well
    {'target_gflops': 0.05},
    {'subnet': 2},
])
def test_a_tiled_run_reads_the_device_once(options, monkeypatch):
    engine = DynamicInferenceEngine(tiny_net(), patch_size=16, overlap=4, whole_image_fallback=False, **options)
    # the stitching a GPU runs (on the CPU the patches are added in numpy, where reading them costs nothing)
    monkeypatch.setattr(BlendGeometry, 'stitch_per_patch', BlendGeometry.stitch_vectorised)
    lq = textured_image()
    engine.run(lq)  # subnets extracted outside the recording
    with HostSyncRecorder() as recorder:
        _, report = engine.run(lq)
    expected = [] if 'subnet' in options else ['tolist']  # an explicit subnet needs no histogram
    assert recorder.calls == expected
    assert 'max_loss' in options or (report.num_patches > 4 and not report.whole_image)


def test_the_recorder_sees_what_syncs():
    """The recorder catches each kind of call it is meant to (so that an empty record means something)."""
    x = torch.arange(4)
    with HostSyncRecorder() as recorder:
        x.tolist(), torch.bincount(x), x[x > 1], bool(x[0]), torch.tensor([1, 2], device='meta')
        to_device([1, 2], 'cpu'), x[1:], x[torch.tensor([0, 2])]
    assert recorder.calls == ['tolist', 'bincount', 'boolean index', '__bool__', 'tensor to a device']


def test_class_histogram_counts_like_numpy():
    classes = torch.tensor([[3, 1, 1], [0, 3, 3]])
    assert class_histogram(classes, 5).tolist() == [1, 2, 0, 3, 0]


def test_to_device_keeps_values_and_types():
    assert to_device([1, 2], 'cpu', torch.float64).dtype == torch.float64
    assert to_device([[1, 2]], 'cpu').tolist() == [[1, 2]]
    t = torch.tensor([1.5])
    assert to_device(t, 'cpu') is t
    assert to_device([3], 'meta', torch.long).device.type == 'meta'
