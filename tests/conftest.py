import os
import subprocess
import sys
from os import path as osp

import numpy as np
import pytest
import torch
import yaml

import wbsr_plugin  # noqa: F401
from wbsr_plugin.cli.training_options import (  # noqa: F401  (parsed_options: for the tests)
    paired_dataset,
    parsed_options,
    pixel_loss,
    training_dataset,
    training_options,
    y_metrics,
)

from basicsr.archs import build_network
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN
from basicsr.archs.srresnet_arch import MSRResNet

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FIXTURES = osp.join(REPO_ROOT, 'tests', 'fixtures')

# Every registered supernet small enough for CPU tests (2 widths x 2 depths), and BasicSR's plain network class.
TINY_SUPERNETS = {
    'WBSRResNet': {'num_feat': 16, 'num_block': 2, 'widths': [8, 16], 'depths': [1, 2]},
    'WBSRRCAN': {'num_feat': 32, 'num_group': 2, 'num_block': 2, 'widths': [16, 32], 'depths': [1, 2]},
    'WBSREDSR': {'num_feat': 16, 'num_block': 2, 'widths': [8, 16], 'depths': [1, 2]},
}
# The same with 3 widths x 3 depths, as the paper's supernets.
TINY_SUPERNETS_3X3 = {
    'WBSRResNet': {'num_feat': 16, 'num_block': 4, 'widths': [8, 12, 16], 'depths': [1, 2, 4]},
    'WBSRRCAN': {'num_feat': 16, 'num_group': 2, 'num_block': 3, 'squeeze_factor': 4, 'widths': [8, 12, 16],
                 'depths': [1, 2, 3]},
    'WBSREDSR': {'num_feat': 16, 'num_block': 4, 'widths': [8, 12, 16], 'depths': [1, 2, 4]},
}
PLAIN_CLASSES = {'WBSRResNet': MSRResNet, 'WBSRRCAN': RCAN, 'WBSREDSR': EDSR}
TINY_RESNET = {'type': 'WBSRResNet', **TINY_SUPERNETS['WBSRResNet']}


def plain_network(name, width, depth, scale=4, sizes=TINY_SUPERNETS):
    """BasicSR's plain network of a tiny supernet's subnet (width, depth), built from BasicSR's own class."""
    options = {k: v for k, v in sizes[name].items() if k not in ('widths', 'depths')}
    return PLAIN_CLASSES[name](**{**options, 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': width, 'num_block': depth,
                                  'upscale': scale})



def strong_tiny_resnet(scale=4):
    """The tiny WBSRResNet with larger weights than BasicSR's init, so that padding effects are visible."""
    net = build_network(dict(TINY_RESNET, upscale=scale)).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 4:
                torch.nn.init.kaiming_normal_(p)
                p.mul_(0.7)
    return net


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A checkpoint of :func:`strong_tiny_resnet` with thresholds for 16-pixel LR patches."""
    from wbsr_plugin.inference.checkpoint import WBSR_KEY, make_wbsr_meta
    net = strong_tiny_resnet()
    path = str(tmp_path / 'tiny.pth')
    torch.save({'params': net.state_dict(), WBSR_KEY: make_wbsr_meta(net, [2. * k for k in range(1, 10)], 16)}, path)
    return path


def tiny_class_errors(num_subnets, num_classes=10):
    """Class errors that fall with the subnet and rise with the class (the shape measured ones have)."""
    return [[(1 + k) * (1.5 - 0.5 * m / (num_subnets - 1)) * 1e-3 for m in range(num_subnets)]
            for k in range(num_classes)]


@pytest.fixture
def tiny_export(tmp_path):
    """``(checkpoint, dynamic export folder)`` of :func:`strong_tiny_resnet` with thresholds and class errors for
    16-pixel LR patches."""
    from wbsr_plugin import export
    from wbsr_plugin.inference.checkpoint import WBSR_KEY, make_wbsr_meta
    net = strong_tiny_resnet()
    path = str(tmp_path / 'tiny_errors.pth')
    meta = make_wbsr_meta(net, [2. * k for k in range(1, 10)], 16, class_errors=tiny_class_errors(len(net.subnets)))
    torch.save({'params': net.state_dict(), WBSR_KEY: meta}, path)
    folder = str(tmp_path / 'tiny.wbsr')
    assert export.main(['--model', path, '-o', folder, '--dynamic']) in (0, None)
    return path, folder


@pytest.fixture(autouse=True)
def _cost_tables_in_a_temporary_cache(tmp_path_factory, monkeypatch):
    """Measured cost tables (--plan-by time) go to a folder of the test session, never the user's cache."""
    monkeypatch.setenv('WBSR_CACHE_DIR', str(tmp_path_factory.getbasetemp() / 'wbsr_cache'))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def fixture_dirs(scale=4):
    return osp.join(FIXTURES, 'hr'), osp.join(FIXTURES, f'lr_x{scale}')


def train_options(name, *, scale=4, total_iter=4, network=None, train_dataset=None, model_type='SRModel', **extra):
    """BasicSR training options on the tracked fixtures (folder backend unless overridden)."""
    hr, lr = fixture_dirs(scale)
    train_set = training_dataset('fixtures', hr, lr, gt_size=16 * scale, batch_size=2, **(train_dataset or {}))
    datasets = {'train': train_set, 'val': paired_dataset('fixtures_val', hr, lr)}
    network = dict(network or TINY_RESNET, upscale=scale)
    opt = training_options(name, model_type=model_type, scale=scale, network=network, pixel_opt=pixel_loss('l1'),
                           total_iter=total_iter, lr=2.0e-4, datasets=datasets, num_gpu=0, manual_seed=10,
                           metrics=y_metrics(scale, ssim=False), print_freq=1, dist_backend='gloo')
    opt.update(extra)
    return opt


def record_subnet_outputs(model):
    """``(subnets, outputs)``: filled with the subnet and output of every forward of ``model.net_g``, in order."""
    subnets, outputs = [], []
    forward = model.net_g.forward

    def recording(x, subnet=None):
        subnets.append(subnet)
        outputs.append(forward(x, subnet=subnet))
        return outputs[-1]

    model.net_g.forward = recording
    return subnets, outputs


def write_yaml(path, opt):
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return str(path)


def run_cli(args, cwd, timeout=300, check=True):
    """Run a command with the repository importable; return the completed process."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''), OMP_NUM_THREADS='1')
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed with {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}')
    return proc


def free_port():
    """A TCP port nothing listens on now (for torchrun's rendezvous)."""
    import socket
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def run_module(module, *args, cwd, **kwargs):
    return run_cli([sys.executable, '-m', module, *args], cwd=cwd, **kwargs)


def read_train_log(experiment_dir):
    logs = sorted(f for f in os.listdir(experiment_dir) if f.startswith('train_') and f.endswith('.log'))
    with open(osp.join(experiment_dir, logs[-1])) as f:
        return f.read()


def make_basicsr_lmdb(img_dir, lmdb_path):
    """An LMDB made exactly as BasicSR's scripts/data_preparation/create_lmdb.py makes it."""
    from basicsr.utils.lmdb_util import make_lmdb_from_imgs

    names = sorted(os.listdir(img_dir))
    make_lmdb_from_imgs(img_dir, str(lmdb_path), names, [osp.splitext(n)[0] for n in names])
    return str(lmdb_path)


@pytest.fixture(scope='session')
def fixture_lmdbs(tmp_path_factory):
    """GT and LQ (x4) LMDBs of the tracked fixtures."""
    root = tmp_path_factory.mktemp('lmdb')
    hr, lr = fixture_dirs(4)
    return make_basicsr_lmdb(hr, root / 'hr.lmdb'), make_basicsr_lmdb(lr, root / 'lr_x4.lmdb')


def y_psnr(sr, hr_bgr, border):
    """PSNR of the Y channel (ITU-R BT.601, as MATLAB's rgb2ycbcr) of uint8 images, ``border`` pixels cropped."""
    sr_rgb = np.round(sr[0].clamp(0, 1).permute(1, 2, 0).double().numpy() * 255) / 255
    hr_rgb = hr_bgr[..., ::-1].astype(np.float64) / 255

    def luma(rgb):
        return 16 + rgb @ np.array([65.481, 128.553, 24.966])

    diff = (luma(sr_rgb) - luma(hr_rgb))[border:-border, border:-border]
    return 10 * np.log10(255**2 / np.mean(diff**2))
