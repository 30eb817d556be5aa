"""Reference checks of the supernet machinery (sliced convolutions, cost order, FLOPs, subnet lookup and table).

Every expected value is independent of the code under test: a hand computation, a plain ``nn.Conv2d``, the
parameter count of BasicSR's own network of that width and depth, or torch's FlopCounterMode.
"""
import pytest
import torch
from conftest import TINY_SUPERNETS, plain_network
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from wbsr_plugin.archs.supernet_util import (
    ConvUse,
    Subnet,
    check_choices,
    conv2d_sliced,
    leaky_relu,
    reject_unknown_options,
)

from basicsr.archs import build_network

TINY = TINY_SUPERNETS


def tiny(name, scale=4, device='cpu'):
    with torch.device(device):
        return build_network({'type': name, 'upscale': scale, **TINY[name]})


def plain_params(name, width, depth, scale=4):
    """Parameters of BasicSR's plain network of that width and depth."""
    with torch.device('meta'):
        return _plain_params(name, width, depth, scale)


def _plain_params(name, width, depth, scale):
    return sum(p.numel() for p in plain_network(name, width, depth, scale).parameters())


def counted_flops(net, subnet, height, width):
    """FLOPs of one forward pass counted by torch (on the meta device: shapes only, nothing computed)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.empty(1, 3, height, width, device='meta'), subnet=subnet)
    return counter.get_total_flops()


def sliced_copy(conv, in_ch, out_ch, bias=True):
    """A plain convolution holding the first ``out_ch`` x ``in_ch`` weights of ``conv``."""
    small = nn.Conv2d(in_ch, out_ch, conv.kernel_size, conv.stride, conv.padding, bias=bias)
    with torch.no_grad():
        small.weight.copy_(conv.weight[:out_ch, :in_ch])
        if bias:
            small.bias.copy_(conv.bias[:out_ch])
    return small


@pytest.mark.parametrize('bias', [True, False])
def test_conv2d_sliced_runs_the_first_channels_of_a_convolution(bias):
    conv = nn.Conv2d(5, 6, 3, stride=2, padding=1, bias=bias)
    x = torch.rand(2, 5, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(conv2d_sliced(conv, x), conv(x))  # None: every channel
        torch.testing.assert_close(conv2d_sliced(conv, x[:, :3], in_ch=3, out_ch=4),
                                   sliced_copy(conv, 3, 4, bias)(x[:, :3]))
        torch.testing.assert_close(conv2d_sliced(conv, x, out_ch=2), sliced_copy(conv, 5, 2, bias)(x))
        torch.testing.assert_close(conv2d_sliced(conv, x[:, :4], in_ch=4), sliced_copy(conv, 4, 6, bias)(x[:, :4]))


def test_leaky_relu_has_slope_one_tenth():
    assert leaky_relu(torch.tensor([-2.0, 0.0, 3.0])).tolist() == pytest.approx([-0.2, 0.0, 3.0])


def test_conv_use_flops_and_params_by_hand_and_by_the_flop_counter():
    use = ConvUse('conv', 3, 8, 3, 2)  # at twice the LR size: 10 x 14 pixels for a 5 x 7 input
    assert use.flops(5, 7) == 2 * 3 * 8 * 9 * 10 * 14 == 60480
    assert use.params == 3 * 8 * 9 + 8
    conv = nn.Conv2d(3, 8, 3, padding=1)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        conv(torch.rand(1, 3, 10, 14))
    assert counter.get_total_flops() == use.flops(5, 7)
    assert sum(p.numel() for p in conv.parameters()) == use.params

    pooled = ConvUse('attention', 16, 4, 1, 0)  # after global pooling: one pixel whatever the input size
    assert pooled.flops(32, 32) == pooled.flops(5, 9) == 2 * 16 * 4 == 128
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        nn.Conv2d(16, 4, 1)(torch.rand(1, 16, 1, 1))
    assert counter.get_total_flops() == 128
    assert pooled.params == 16 * 4 + 4
    assert ConvUse('same', 4, 4, 3, 1).flops(6, 5) == 2 * 4 * 4 * 9 * 30


def test_subnet_name_is_width_then_depth():
    assert Subnet(index=3, width=36, depth=4, flops=1, params=2).name == 'w36d4'


@pytest.mark.parametrize('name', sorted(TINY))
def test_subnets_of_a_tiny_net_are_ordered_by_counted_flops_with_plain_params(name):
    net = tiny(name, device='meta').eval()
    assert [s.index for s in net.subnets] == list(range(4))
    assert {(s.width, s.depth) for s in net.subnets} == {(w, d) for w in net.widths for d in net.depths}
    flops = [counted_flops(net, s, 32, 32) for s in net.subnets]
    assert [s.flops for s in net.subnets] == flops == sorted(flops)
    assert [s.params for s in net.subnets] == [plain_params(name, s.width, s.depth) for s in net.subnets]
    assert net.full_subnet == net.subnets[-1] and (net.full_subnet.width, net.full_subnet.depth) == (
        net.widths[-1], net.depths[-1])


@pytest.mark.parametrize('name', sorted(TINY))
def test_flops_default_to_a_square_32_pixel_input_of_the_full_network(name):
    net = tiny(name, device='meta').eval()
    full = counted_flops(net, None, 32, 32)
    assert net.flops() == net.flops(32) == net.flops(32, 32) == full
    assert net.flops(12) == counted_flops(net, None, 12, 12)
    assert net.flops(12, 8, subnet=1) == counted_flops(net, 1, 12, 8)
    assert net.flops(8, 12, subnet=net.subnets[1]) == counted_flops(net, 1, 8, 12)


@pytest.mark.parametrize('name', sorted(TINY))
def test_subnet_table_rows_match_counted_flops_and_plain_params(name):
    net = tiny(name, device='meta').eval()
    for lq_size, rows in ((8, net.subnet_table(8)), (32, net.subnet_table())):
        counted = [counted_flops(net, s, lq_size, lq_size) for s in net.subnets]
        assert len(rows) == 4
        for i, (row, subnet) in enumerate(zip(rows, net.subnets)):
            index, width, depth, params, gflops, percent = row
            assert (index, width, depth) == (i, subnet.width, subnet.depth)
            assert params == plain_params(name, width, depth)
            assert gflops == pytest.approx(counted[i] / 1e9, rel=1e-12)
            assert percent == pytest.approx(100 * counted[i] / counted[-1], rel=1e-12)
        assert rows[-1][5] == 100.0 and rows[0][5] < 100.0


def test_get_subnet_resolves_none_indices_and_subnets():
    net = tiny('WBSRResNet')
    subnets = net.subnets
    assert net.get_subnet() is subnets[-1] and net.get_subnet(None) is subnets[-1]
    for i in range(4):
        assert net.get_subnet(i) is subnets[i]
        assert net.get_subnet(i - 4) is subnets[i]  # negative indices count from the most expensive
        assert net.get_subnet(subnets[i]) is subnets[i]
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(net(x, subnet=-1), net(x))
        torch.testing.assert_close(net(x, subnet=-4), net(x, subnet=0))


@pytest.mark.parametrize('subnet', [4, -5, 100, True, False, 1.0, '1'])
def test_get_subnet_refuses_other_values(subnet):
    net = tiny('WBSRResNet')
    message = (r'^subnet must be None, a Subnet or an index in \[0, 3\], got ' + repr(subnet).replace('.', r'\.')
               + r'\.$')
    with pytest.raises(ValueError, match=message):
        net.get_subnet(subnet)


def test_get_subnet_refuses_a_subnet_of_another_network():
    net = tiny('WBSRResNet')
    other = tiny('WBSRRCAN').subnets[0]
    with pytest.raises(ValueError, match=r'^Subnet\(index=0, width=16, depth=1, .*\) is not a subnet of this '
                       r'WBSRResNet\.$'):
        net.get_subnet(other)
    forged = Subnet(0, net.subnets[0].width, net.subnets[0].depth, net.subnets[0].flops + 1, net.subnets[0].params)
    with pytest.raises(ValueError, match='is not a subnet of this WBSRResNet'):
        net.get_subnet(forged)


def test_extracted_subnet_follows_the_dtype_of_the_supernet():
    net = tiny('WBSRResNet').double()
    plain = net.extract_subnet(0)
    assert not plain.training
    assert all(p.dtype == torch.float64 for p in plain.parameters())
    x = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x, subnet=0))


def test_check_choices_accepts_ascending_lists_ending_at_the_maximum():
    assert check_choices('Net', 'widths', (4, 9, 16), 16) == [4, 9, 16]
    assert check_choices('Net', 'widths', iter([1, 16]), 16) == [1, 16]  # minimum 1 is allowed
    assert check_choices('Net', 'widths', [16], 16, minimum=16) == [16]
    assert check_choices('Net', 'depths', [2, 3], 3, minimum=2, max_option='num_block') == [2, 3]


@pytest.mark.parametrize('values,minimum,message', [
    ([], 1, r'^Net: widths must be a non-empty list of integers, got \[\]\.$'),
    ([4, 8.0], 1, r'^Net: widths must be a non-empty list of integers, got \[4, 8\.0\]\.$'),
    ([True, 8], 1, r'^Net: widths must be a non-empty list of integers, got \[True, 8\]\.$'),
    ([4, '8'], 1, r"^Net: widths must be a non-empty list of integers, got \[4, '8'\]\.$"),
    ([4, 4, 8], 1, r'^Net: widths must be strictly ascending, got \[4, 4, 8\]\.$'),
    ([6, 4, 8], 1, r'^Net: widths must be strictly ascending, got \[6, 4, 8\]\.$'),
    ([0, 8], 1, r'^Net: widths must lie in \[1, 8\] and end with num_feat = 8 \(the largest subnet is the full '
                r'network\), got \[0, 8\]\.$'),
    ([3, 8], 4, r'^Net: widths must lie in \[4, 8\] and end with num_feat = 8 .*, got \[3, 8\]\.$'),
    ([2, 6], 1, r'^Net: widths must lie in \[1, 8\] and end with num_feat = 8 .*, got \[2, 6\]\.$'),
    ([2, 9], 1, r'^Net: widths must lie in \[1, 8\] and end with num_feat = 8 .*, got \[2, 9\]\.$'),
])
def test_check_choices_refusals_name_the_option(values, minimum, message):
    with pytest.raises(ValueError, match=message):
        check_choices('Net', 'widths', values, 8, minimum=minimum, max_option='num_feat')


def test_unknown_options_are_listed_sorted_with_the_allowed_ones():
    reject_unknown_options('Net', {}, ('b', 'a'))
    with pytest.raises(ValueError, match=r"^Net: unknown option\(s\) \['x', 'y'\]; allowed options are "
                       r"\['a', 'b'\]\.$"):
        reject_unknown_options('Net', {'y': 1, 'x': 2}, ('b', 'a'))
