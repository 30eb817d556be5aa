"""Print the subnets of a supernet ordered by cost, or the model card of a trained checkpoint.

    python -m wbsr_plugin.subnets --arch WBSRResNet -s 4
    python -m wbsr_plugin.subnets --opt options/train_wbsr_rcan_x4.yml --lq-size 64
    python -m wbsr_plugin.subnets --model experiments/NAME/models/net_g_latest.pth

The model card gives the architecture and scale, the class thresholds and the LR patch size they
were computed on, the training iterations (when recorded) and the subnets with their FLOPs.
"""

import wbsr_plugin  # noqa: F401
from wbsr_plugin.archs.supernet_util import REFERENCE_LQ_SIZE, SupernetMixin, supernet_types
from wbsr_plugin.cli.common_args import SCALES, CommandParser
from wbsr_plugin.cli.model_card import format_model_card, format_subnet_table
from wbsr_plugin.cli.options_yaml import network_options_from_yaml, short
from wbsr_plugin.inference.checkpoint import load_supernet
from wbsr_runtime.arg_types import positive_int

from basicsr.archs import build_network


def main(argv=None):
    parser = CommandParser('subnets', __doc__)
    parser.add_argument('--model', help='a trained checkpoint (.pth): print its model card')
    parser.add_argument('-opt', '--opt', help="a BasicSR YAML file; its network_g is used (with --model: for "
                        "checkpoints without 'wbsr' metadata and non-default sizes)")
    parser.add_argument('--arch', choices=supernet_types(), default='WBSRResNet', help='supernet type (without --opt)')
    parser.add_argument('-s', '--scale', type=int, choices=SCALES, default=4,
                        help='upscale factor (without --opt). Default: 4')
    parser.add_argument('--lq-size', type=positive_int, default=REFERENCE_LQ_SIZE,
                        help=f'LR patch side for FLOPs. Default: {REFERENCE_LQ_SIZE}')
    args = parser.parse_args(argv)

    network_opt = network_options_from_yaml(args.opt) if args.opt else None
    if args.model:
        try:
            net, meta = load_supernet(args.model, network_opt=network_opt)
        except (ValueError, TypeError) as err:  # CheckpointError, network options that do not fit
            parser.exit(2, f'error: {err}\n')
        print(format_model_card(net, meta, args.model, args.lq_size))
        return
    if network_opt is None:
        network_opt = {'type': args.arch, 'upscale': args.scale}
    try:
        net = build_network(network_opt)
    except (ValueError, TypeError, KeyError) as err:
        parser.exit(2, f'error: network_g {short(dict(network_opt))}: {err}\n')
    if not isinstance(net, SupernetMixin):
        parser.error(f"network_g type {short(network_opt['type'])} is not a supernet; expected one of "
                     f'{supernet_types()}.')
    print(format_subnet_table(net, args.lq_size))


if __name__ == '__main__':
    main()
