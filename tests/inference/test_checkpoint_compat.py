"""Checkpoints written by earlier versions keep loading, describing themselves and computing the same outputs."""
from os import path as osp

import torch
from conftest import FIXTURES

from wbsr_plugin import subnets
from wbsr_plugin.cli.image_io import read_image
from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_plugin.inference.checkpoint import engine_options, load_supernet

V1 = osp.join(FIXTURES, 'checkpoint_v1')
CHECKPOINT = osp.join(V1, 'tiny_wbsr_resnet_x4.pth')


def test_v1_checkpoint_loads_with_its_metadata():
    net, meta = load_supernet(CHECKPOINT)
    assert type(net).__name__ == 'WBSRResNet' and net.upscale == 4
    assert net.widths == [8, 16] and net.depths == [1, 2]
    thresholds = engine_options(meta)['thresholds']
    assert sorted(thresholds.as_table()) == [16, 24] and all(len(t) == 9 for t in thresholds.as_table().values())
    assert len(thresholds.class_errors) == 10 and all(len(row) == 4 for row in thresholds.class_errors)


def test_v1_checkpoint_prints_the_same_model_card(capsys):
    assert subnets.main(['--model', CHECKPOINT]) in (None, 0)
    card = capsys.readouterr().out.split('\n', 1)[1]
    with open(osp.join(V1, 'model_card.md')) as f:
        assert card == f.read()


def test_v1_checkpoint_gives_the_same_outputs():
    expected = torch.load(osp.join(V1, 'expected_outputs.pth'), map_location='cpu', weights_only=True)
    net, meta = load_supernet(CHECKPOINT)
    lq, _ = read_image(osp.join(FIXTURES, 'lr_x4', 'rocket.png'))
    top, bottom, left, right = expected['lq_crop']
    with torch.no_grad():
        for index, output in enumerate(expected['subnets']):
            torch.testing.assert_close(net(lq[..., top:bottom, left:right], subnet=index)[0], output, rtol=0,
                                       atol=1e-6)
    engine = DynamicInferenceEngine(net, **engine_options(meta), patch_size=12, overlap=2, budget=0.5)
    torch.testing.assert_close(engine.run(lq)[0][0], expected['budget_0.5'], rtol=0, atol=1e-6)
