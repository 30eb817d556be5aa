"""The torch-free runtime against the torch engine: the same plans and outputs when planned by FLOPs, and a
folder command that writes what ``infer`` writes, in a process where torch and basicsr cannot be imported."""
import json
import os
import subprocess
import sys
from dataclasses import asdict
from os import path as osp

import cv2
import numpy as np
import pytest
import torch
from conftest import FIXTURES

from wbsr_plugin import infer
from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_plugin.inference.checkpoint import engine_options, load_supernet
from wbsr_plugin.inference.runtimes import Runtime
from wbsr_runtime import DynamicModel, PlanningTarget
from wbsr_runtime.cost_table import CostTable, this_cpu
from wbsr_runtime.planning_target import checkpoint_policy
from wbsr_runtime.sessions import installed

pytestmark = pytest.mark.skipif(not installed('onnxruntime'), reason='onnxruntime is not installed')
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TARGETS = [None, PlanningTarget.eq15(), PlanningTarget.eq16(0.05, 1.5), PlanningTarget.flops_budget(0.5),
           PlanningTarget.flops_budget(0.05), PlanningTarget.quality(0.05), PlanningTarget.fixed_subnet('w8d2')]


def photo_crops(count, seed=0):
    """LR crops of the fixture photographs, of varied sizes (odd ones included)."""
    rng = np.random.default_rng(seed)
    photos = [cv2.imread(osp.join(FIXTURES, 'hr', name))[:, :, ::-1] / np.float32(255)
              for name in sorted(os.listdir(osp.join(FIXTURES, 'hr')))]
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = rng.integers(17, min(photo.shape[0], 90)), rng.integers(17, min(photo.shape[1], 90))
        top, left = rng.integers(0, photo.shape[0] - h + 1), rng.integers(0, photo.shape[1] - w + 1)
        crops.append(np.ascontiguousarray(photo[top:top + h, left:left + w].transpose(2, 0, 1))[None])
    return crops


@pytest.mark.parametrize('target', TARGETS, ids=lambda t: str(t or 'default'))
def test_plans_and_outputs_equal_the_torch_engine(tiny_export, target):
    checkpoint, folder = tiny_export
    net, meta = load_supernet(checkpoint)
    policy = checkpoint_policy(meta, target=target, overlap=2)
    engine = DynamicInferenceEngine(net, **engine_options(meta), **policy.engine_options())
    model = DynamicModel.load(folder, target=target, overlap=2, threads=1)
    assert model.target == engine.target and model.policy.patch_size == policy.patch_size == 16
    patches = flipped = 0
    for lq in photo_crops(12):
        sr_torch, report = engine.run(torch.from_numpy(lq))
        sr, own = model.run(lq)
        assert sr.shape == tuple(sr_torch.shape) == (1, 3, 4 * lq.shape[2], 4 * lq.shape[3])
        if report.plan.classes is not None:  # a difficulty within rounding of a threshold may flip its class
            flipped += int((report.plan.classes.numpy() != own.plan.classes).sum())
            patches += report.plan.classes.numel()
        if own.histogram == report.histogram and np.array_equal(own.plan.subnets, report.plan.subnets.numpy()):
            assert np.abs(sr - sr_torch.numpy()).max() <= 1e-5
            assert own.flops == report.flops and own.full_flops == report.full_flops
        else:
            flipped += 1
    assert flipped <= 0.01 * max(patches, 1)


def test_time_planned_targets_without_a_cost_table_are_refused_with_one_line(tiny_export):
    with pytest.raises(ValueError, match='plans by time, which needs a cost table'):
        DynamicModel.load(tiny_export[1], target=PlanningTarget.latency_budget(0.5), threads=1)


def with_cost_table(folder, threads):
    """Add to the export a cost table of this machine in ONNX Runtime fp32 at ``threads`` threads (made up, so that
    the plans do not depend on the machine's speed); returns it."""
    table = CostTable({'runtime': 'onnxruntime fp32', 'device': this_cpu(threads)}, (256, 4096, 36864),
                      tuple((2e-4 * (m + 1), 2e-3 * (m + 1), 2e-2 * (m + 1)) for m in range(4)),
                      analysis_s=(2e-4, 1e-8), tiling_pixel_s=1e-7, switch_s=1e-4)
    path = osp.join(folder, 'manifest.json')
    with open(path) as f:
        manifest = json.load(f)
    manifest['cost_tables'] = [asdict(table)]
    with open(path, 'w') as f:
        json.dump(manifest, f)
    return table


@pytest.mark.parametrize('target', [PlanningTarget.latency_budget(0.5), PlanningTarget.eq15('time'),
                                    PlanningTarget.flops_budget(0.5, 'time'), PlanningTarget.quality(0.05, 'time')],
                         ids=str)
def test_time_planned_targets_follow_their_rules_with_the_exports_cost_table(tiny_export, target):
    checkpoint, folder = tiny_export
    table = with_cost_table(folder, threads=1)
    net, meta = load_supernet(checkpoint)
    engine = DynamicInferenceEngine(net, **engine_options(meta), target=target, patch_size=16, overlap=2,
                                    cost_table=table, runtime=Runtime('onnxruntime', 'fp32'))
    model = DynamicModel.load(folder, target=target, overlap=2, threads=1)
    assert model.timer.cost == table
    for lq in photo_crops(6, seed=3):
        plan = model.plan(lq)
        fastest, _ = model.timer.fastest_plain(model.planner.analyse(lq, content=False), 4)
        if target.kind == 'latency':  # the best expected quality within the time, else the fastest plan
            assert model.timer.of(plan) <= 0.5 * fastest + 1e-12 or 'no plan predicted within' in plan.reason
        else:  # never predicted slower than the fastest plain execution
            assert model.timer.of(plan, analysed=plan.whole_image_subnet != 3) <= fastest + 1e-12
        theirs = engine.plan(torch.from_numpy(lq))  # the same table, the same rules: the same plan
        assert (plan.whole_image_subnet, plan.histogram, plan.reason) == (theirs.whole_image_subnet,
                                                                           theirs.histogram, theirs.reason)


def blocked_python():
    """A Python command line in which ``import torch`` and ``import basicsr`` fail."""
    blocker = ('import sys\n'
               'class Block:\n'
               '    def find_spec(self, name, path=None, target=None):\n'
               '        if name.split(".")[0] in ("torch", "basicsr", "wbsr_plugin"):\n'
               '            raise ImportError(f"{name} is blocked")\n'
               'sys.meta_path.insert(0, Block())\n')
    return [sys.executable, '-c', blocker + 'import runpy, sys; sys.argv[0] = "wbsr-run"; '
            'runpy.run_module("wbsr_runtime", run_name="__main__")']


def mixed_folder(folder):
    """8-bit, 16-bit, grey, RGBA, JPEG and odd-sized inputs."""
    os.makedirs(folder)
    rng = np.random.default_rng(1)
    photo = cv2.imread(osp.join(FIXTURES, 'hr', sorted(os.listdir(osp.join(FIXTURES, 'hr')))[0]))
    cv2.imwrite(osp.join(folder, 'rgb8.png'), photo[:37, :51])
    cv2.imwrite(osp.join(folder, 'rgb16.png'), photo[5:40, 3:30].astype(np.uint16) * 257
                + rng.integers(0, 200, (35, 27, 3)).astype(np.uint16))
    cv2.imwrite(osp.join(folder, 'grey.png'), cv2.cvtColor(photo[:29, :43], cv2.COLOR_BGR2GRAY))
    cv2.imwrite(osp.join(folder, 'rgba.png'), np.concatenate([photo[:21, :33], rng.integers(0, 256, (21, 33, 1),
                                                                                           dtype=np.uint8)], 2))
    cv2.imwrite(osp.join(folder, 'photo.jpg'), photo[:33, :35])
    cv2.imwrite(osp.join(folder, 'line.png'), photo[:1, :5])


def test_folder_command_without_torch_writes_what_infer_writes(tiny_export, tmp_path):
    """Images and subnet maps, 8/16-bit, grey, RGBA, JPEG and odd sizes."""
    checkpoint, folder = tiny_export
    inputs = str(tmp_path / 'in')
    mixed_folder(inputs)
    env = dict(os.environ, PYTHONPATH=ROOT)
    ran = subprocess.run(blocked_python() + ['-i', inputs, '-o', str(tmp_path / 'free'), '--model', folder,
                                             '--budget', '0.5', '--threads', '1', '--save-map'],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert 'total: 6 image(s), 0 skipped, 0 failed' in ran.stdout
    check = subprocess.run(blocked_python()[:2] + [blocked_python()[2].split('import runpy')[0] + 'import torch'],
                           capture_output=True, text=True, env=env)
    assert check.returncode != 0 and 'torch is blocked' in check.stderr  # the blocker works
    for runtime, identical in (('onnxruntime', True), ('torch', False)):
        out = str(tmp_path / runtime)
        assert infer.main(['-i', inputs, '-o', out, '--model', checkpoint, '--budget', '0.5', '--runtime', runtime,
                           '--threads', '1', '--save-map']) == 0
        assert sorted(os.listdir(out)) == sorted(os.listdir(tmp_path / 'free'))
        assert len(os.listdir(out)) == 12  # every image and its subnet map
        for name in os.listdir(out):
            ours = cv2.imread(str(tmp_path / 'free' / name), cv2.IMREAD_UNCHANGED)
            theirs = cv2.imread(osp.join(out, name), cv2.IMREAD_UNCHANGED)
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, name
            difference = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
            if identical:
                assert difference.max() == 0, name
            elif name.endswith('.jpg'):  # JPEG: one rounding step apart can move a block's coefficients
                assert difference.mean() < 0.5, name
            else:  # fp32 within 1e-5 before rounding: at most one step where a value lies on a rounding boundary
                assert difference.max() <= 1 and (difference > 0).mean() < 1e-2, name
