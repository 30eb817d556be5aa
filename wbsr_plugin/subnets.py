"""Print the subnets of a supernet ordered by cost.

    python -m wbsr_plugin.subnets --arch WBSRResNet -s 4
    python -m wbsr_plugin.subnets --opt options/train_wbsr_rcan_x4.yml --lq-size 64
"""
import argparse

import yaml

import wbsr_plugin  # noqa: F401
from basicsr.archs import build_network
from wbsr_plugin.archs.supernet_util import REFERENCE_LQ_SIZE, SupernetMixin

SUPERNETS = ('WBSRResNet', 'WBSRRCAN')


def format_subnet_table(net, lq_size=REFERENCE_LQ_SIZE):
    """The subnet table of ``net`` as Markdown."""
    lines = [
        f'{type(net).__name__} x{net.upscale}, LR input {lq_size}x{lq_size}', '',
        '| index | width | depth | params (M) | GFLOPs | % of full |', '|---|---|---|---|---|---|'
    ]
    for index, width, depth, params, gflops, percent in net.subnet_table(lq_size):
        lines.append(f'| {index} | {width} | {depth} | {params / 1e6:.3f} | {gflops:.3f} | {percent:.1f} |')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', choices=SUPERNETS, default='WBSRResNet', help='supernet type (without --opt)')
    parser.add_argument('-s', '--scale', type=int, default=4, help='upscale factor (without --opt)')
    parser.add_argument('--opt', help='a BasicSR YAML file; its network_g is used')
    parser.add_argument('--lq-size', type=int, default=REFERENCE_LQ_SIZE, help='LR patch side for FLOPs')
    args = parser.parse_args(argv)

    if args.opt:
        with open(args.opt) as f:
            network_opt = dict(yaml.safe_load(f)['network_g'])
    else:
        network_opt = {'type': args.arch, 'upscale': args.scale}
    net = build_network(network_opt)
    if not isinstance(net, SupernetMixin):
        parser.error(f"network_g type {network_opt['type']!r} is not a supernet; expected one of {SUPERNETS}.")
    print(format_subnet_table(net, args.lq_size))


if __name__ == '__main__':
    main()
