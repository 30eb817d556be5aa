import pytest
import torch
from conftest import PLAIN_CLASSES, TINY_SUPERNETS, plain_network
from torch.utils.flop_counter import FlopCounterMode

from wbsr_plugin.archs.supernet_util import (
    SupernetMixin,
    plain_flops,
    recognise_state_dict,
    supernet_class,
    supernet_for_label,
    supernet_for_plain,
    supernet_types,
)

from basicsr.archs import build_network
from basicsr.archs.edsr_arch import EDSR
from basicsr.archs.rcan_arch import RCAN
from basicsr.archs.srresnet_arch import MSRResNet
from basicsr.utils.registry import ARCH_REGISTRY

SUPERNETS = sorted(name for name, cls in ARCH_REGISTRY if isinstance(cls, type) and issubclass(cls, SupernetMixin))
TINY = TINY_SUPERNETS
PLAIN = PLAIN_CLASSES


def tiny(name, scale):
    return build_network({'type': name, 'upscale': scale, **TINY[name]})


def test_every_registered_supernet_has_a_tiny_config():
    assert SUPERNETS == sorted(TINY)


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('name', SUPERNETS)
def test_every_subnet_trains_and_round_trips(name, scale, tmp_path):
    net = tiny(name, scale)
    lq = torch.rand(2, 3, 7, 9)
    for subnet in net.subnets:
        net.zero_grad()
        out = net(lq, subnet=subnet.index)
        assert out.shape == (2, 3, 7 * scale, 9 * scale)
        out.abs().mean().backward()
        assert torch.isfinite(out).all()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
    path = tmp_path / 'net.pth'
    torch.save({'params': net.state_dict()}, path)
    loaded = tiny(name, scale)
    loaded.load_state_dict(torch.load(path, map_location='cpu', weights_only=True)['params'])
    with torch.no_grad():
        assert torch.equal(loaded(lq, subnet=0), net(lq, subnet=0))


@pytest.mark.parametrize('name,plain_network,expected', [
    ('WBSRResNet', lambda: MSRResNet(), 1.52e6),  # the paper's networks, as BasicSR's option files build them
    ('WBSRRCAN', lambda: RCAN(3, 3, num_block=20), 15.59e6),
    ('WBSREDSR', lambda: EDSR(3, 3), 1.52e6),
])
def test_same_parameters_and_keys_as_the_plain_network(name, plain_network, expected):
    net = build_network({'type': name})
    plain = plain_network()
    assert list(net.state_dict()) == list(plain.state_dict())
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in plain.parameters())
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(expected, rel=5e-3)
    assert net.full_subnet.params == sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize('param_key', ['params', 'params_ema'])
@pytest.mark.parametrize('name', SUPERNETS)
def test_basicsr_checkpoint_loads_and_full_network_reproduces_it(name, param_key, tmp_path):
    plain = plain_network(name, TINY[name]['num_feat'], TINY[name]['num_block']).eval()
    for p in plain.parameters():  # RCAN's default init leaves biases near zero; make every weight matter
        p.data.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / 'plain.pth'
    torch.save({param_key: plain.state_dict()}, path)

    net = tiny(name, 4).eval()
    net.load_state_dict(torch.load(path, map_location='cpu', weights_only=True)[param_key], strict=True)
    lq = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(net(lq), plain(lq), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net(lq, subnet=net.full_subnet), plain(lq), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', SUPERNETS)
def test_subnets_are_slices_of_the_shared_weights(name):
    net = tiny(name, 4).eval()
    for p in net.parameters():
        p.data.add_(torch.randn_like(p) * 0.01)
    lq = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        outputs = [net(lq, subnet=s) for s in net.subnets]
        for subnet, out in zip(net.subnets, outputs):
            torch.testing.assert_close(net.extract_subnet(subnet)(lq), out, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(outputs[0], outputs[-1])
        # channels beyond the smallest width do not touch the smallest subnet
        net.conv_first.weight[net.widths[0]:] += 1
        torch.testing.assert_close(net(lq, subnet=0), outputs[0])
        net.conv_first.weight[:net.widths[0]] += 1
        assert not torch.allclose(net(lq, subnet=0), outputs[0])


@pytest.mark.parametrize('name,full_gflops', [('WBSRResNet', (5.19, 5.20)), ('WBSRRCAN', (32.59, 32.61)),
                                              ('WBSREDSR', (4.06, 4.07))])
def test_flops_match_the_flop_counter(name, full_gflops):
    with torch.device('meta'):
        net = build_network({'type': name})
        lq = torch.empty(1, 3, 32, 32)
    assert full_gflops[0] <= net.flops(32) / 1e9 <= full_gflops[1]
    for subnet in net.subnets:
        with FlopCounterMode(display=False) as counter:
            net(lq, subnet=subnet)
        assert counter.get_total_flops() == net.flops(32, subnet=subnet) == subnet.flops
    with FlopCounterMode(display=False) as counter:
        net(torch.empty(1, 3, 17, 23, device='meta'), subnet=3)
    assert counter.get_total_flops() == net.flops(17, 23, subnet=3)


@pytest.mark.parametrize('name', SUPERNETS)
def test_subnets_are_in_the_order_of_their_counted_flops(name):
    """Protects the cost order on the paper's networks, where it differs from the order by width, then depth."""
    with torch.device('meta'):
        net = build_network({'type': name})
        lq = torch.empty(1, 3, 32, 32)
    counted = []
    for subnet in net.subnets:
        with FlopCounterMode(display=False) as counter:
            net(lq, subnet=subnet)
        counted.append(counter.get_total_flops())
    assert counted == sorted(counted) and [s.index for s in net.subnets] == list(range(9))
    assert net.subnets != sorted(net.subnets, key=lambda s: (s.width, s.depth))


@pytest.mark.parametrize('name', SUPERNETS)
def test_default_subnets_are_three_widths_by_three_depths(name):
    with torch.device('meta'):
        net = build_network({'type': name})
    assert net.widths == [36, 52, 64]
    assert len(net.subnets) == 9 and net.full_subnet.width == 64


@pytest.mark.parametrize('options,message', [
    ({'widths': [52, 36, 64]}, 'widths must be strictly ascending'),
    ({'widths': [36, 52, 80]}, r'widths must lie in \[1, 64\] and end with num_feat'),
    ({'depths': [4, 8, 20]}, 'depths must lie in .* end with num_block'),
    ({'widths': []}, 'widths must be a non-empty list of integers'),
    ({'num_feats': 64}, r"unknown option\(s\) \['num_feats'\]; allowed options are"),
    ({'upscale': 5}, 'upscale must be one of'),
])
def test_bad_configuration_names_the_option(options, message):
    with pytest.raises(ValueError, match=message):
        build_network({'type': 'WBSRResNet', **options})


def test_rcan_widths_must_keep_a_channel_attention_channel():
    with pytest.raises(ValueError, match=r'widths must lie in \[16, 64\]'):
        build_network({'type': 'WBSRRCAN', 'widths': [8, 64]})


def test_subnet_argument_is_validated():
    net = tiny('WBSRResNet', 4)
    with pytest.raises(ValueError, match='subnet must be None, a Subnet or an index'):
        net(torch.rand(1, 3, 4, 4), subnet=4)


@pytest.mark.parametrize('name', SUPERNETS)
def test_network_options_rebuild_the_supernet(name):
    net = tiny(name, 3)
    options = net.network_options()
    assert options['type'] == name and options['upscale'] == 3
    assert options['widths'] == TINY[name]['widths'] and options['depths'] == TINY[name]['depths']
    rebuilt = build_network(options)
    assert list(rebuilt.state_dict()) == list(net.state_dict()) and rebuilt.subnets == net.subnets
    assert rebuilt.network_options() == options


@pytest.mark.parametrize('name', SUPERNETS)
def test_plain_network_options_build_the_plain_network_of_a_subnet(name):
    net = tiny(name, 4)
    spec = net.subnets[0]
    options = net.plain_network_options(spec.width, spec.depth)
    assert options['type'] == PLAIN[name].__name__ and (options['num_feat'], options['num_block']) == (spec.width,
                                                                                                        spec.depth)
    plain = build_network(options)
    plain.load_state_dict(net.extract_subnet(spec.index).state_dict(), strict=True)
    lq = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(lq), net(lq, subnet=spec.index), rtol=0, atol=1e-5)


@pytest.mark.parametrize('scale', [2, 3, 4])
@pytest.mark.parametrize('name', SUPERNETS)
def test_only_its_own_supernet_recognises_a_state_dict(name, scale):
    net = tiny(name, scale)
    spec = net.subnets[-2]
    plain_state = net.extract_subnet(spec.index).state_dict()
    for state, size in ((net.state_dict(), (net.num_feat, net.num_block)), (plain_state, (spec.width, spec.depth))):
        cls, options = recognise_state_dict(state)
        assert cls is type(net)
        assert (options['num_feat'], options['num_block'], options['upscale']) == (*size, scale)
        assert [n for n in SUPERNETS if ARCH_REGISTRY.get(n).shape_options(state) is not None] == [name]
    assert recognise_state_dict({'head.weight': torch.zeros(1)}) == (None, None)


@pytest.mark.parametrize('name', SUPERNETS)
def test_default_choices_are_known_for_the_default_size_only(name):
    cls = ARCH_REGISTRY.get(name)
    defaults = cls.default_options()
    assert cls.default_choices(defaults['num_feat'], defaults['num_block']) == (defaults['widths'],
                                                                                defaults['depths'])
    assert supernet_types() == tuple(SUPERNETS) and supernet_class(name) is cls
    assert supernet_for_plain(PLAIN[name].__name__) is cls and supernet_for_label(cls.LABEL.upper()) is cls


@pytest.mark.parametrize('name', SUPERNETS)
def test_plain_flops_are_the_flop_counters_count_of_the_plain_network(name):
    net = tiny(name, 4)
    options = net.plain_network_options(net.num_feat, net.num_block)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        build_network(options)(torch.rand(1, 3, 10, 7))
    # the counter also counts the pooled attention and adds (RCAN): within 1 %
    assert plain_flops(options, 10, 7) == pytest.approx(counter.get_total_flops(), rel=1e-2)
    with pytest.raises(ValueError, match="'Unknown' is not the plain network of a supernet"):
        plain_flops({'type': 'Unknown'}, 10, 7)
