import importlib
import sys

import pytest
import torch
from conftest import REPO_ROOT, run_cli, run_module

import wbsr_plugin
from wbsr_plugin.utils.registry import register

from basicsr.utils.registry import ARCH_REGISTRY


def test_architectures_are_registered():
    assert 'WBSRResNet' in ARCH_REGISTRY
    assert 'WBSRRCAN' in ARCH_REGISTRY


def test_import_twice_and_reload_do_not_raise():
    importlib.import_module('wbsr_plugin')
    for name in [m for m in sys.modules if m.startswith('wbsr_plugin.') and m.endswith(('_arch', '_dataset',
                                                                                           '_loss', '_model'))]:
        importlib.reload(sys.modules[name])
    importlib.reload(wbsr_plugin)
    assert ARCH_REGISTRY.get('WBSRResNet').__module__ == 'wbsr_plugin.archs.wbsr_resnet_arch'


def test_a_different_object_under_a_taken_name_is_refused():
    with pytest.raises(KeyError, match='already registered'):

        @register(ARCH_REGISTRY)
        class WBSRResNet(torch.nn.Module):  # noqa: F811
            pass


def test_torchvision_and_basicsr_import_with_the_compatibility_fixes():
    import torchvision.transforms.functional_tensor  # noqa: F401

    from basicsr.data.degradations import rgb_to_grayscale  # noqa: F401
    from basicsr.utils.img_util import tensor2img

    assert tensor2img(torch.rand(1, 3, 4, 4)).shape == (4, 4, 3)


def test_modules_run_with_python_dash_m(tmp_path):
    out = run_module('wbsr_plugin.subnets', '--arch', 'WBSRRCAN', '-s', '2', cwd=tmp_path).stdout
    assert 'WBSRRCAN x2' in out and '| 8 | 64 | 20 |' in out
    run_module('wbsr_plugin.archs.wbsr_resnet_arch', cwd=tmp_path)


def test_entry_point_files_run_as_scripts(tmp_path):
    for script in ('train.py', 'test.py'):
        proc = run_cli([sys.executable, f'{REPO_ROOT}/wbsr_plugin/{script}', '-h'], cwd=tmp_path)
        assert '--auto_resume' in proc.stdout and '--force_yml' in proc.stdout


def test_the_ema_update_is_basicsr_s_formula():
    """``BaseModel.model_ema`` (patched: one foreach lerp) gives decay * ema + (1 - decay) * param."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
    ema = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 2, 1))
    expected = {k: 0.9 * v.detach().clone() + 0.1 * dict(net.named_parameters())[k].detach()
                for k, v in ema.named_parameters()}

    class Model:
        get_bare_model = staticmethod(lambda n: n)

    model = Model()
    model.net_g, model.net_g_ema = net, ema
    from basicsr.models.base_model import BaseModel
    BaseModel.model_ema(model, decay=0.9)
    for k, v in ema.named_parameters():
        torch.testing.assert_close(v.detach(), expected[k], rtol=0, atol=1e-7)
