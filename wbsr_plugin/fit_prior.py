"""Fit the GMM prior of BDLoss (estimator 'gai') on HR training images.

Usage::

    python -m wbsr_plugin.fit_prior -i datasets/DIV2K/DIV2K_train_HR_sub -o bdloss_prior_x4.pth -s 4

The input is an image folder (searched recursively) or a BasicSR LMDB folder (``*.lmdb`` with
``data.mdb`` and ``meta_info.txt``). Point ``train.pixel_opt.prior_path`` at the output file.
"""
import sys

import wbsr_plugin  # noqa: F401  (applies the basicsr compatibility fixes)
from wbsr_plugin.cli.common_args import CommandParser
from wbsr_plugin.losses.gmm_prior_util import SPACES, fit_gmm_prior, save_gmm_prior


def build_parser():
    parser = CommandParser('fit_prior', 'Fit the GMM prior of BDLoss (estimator: gai).')
    parser.add_argument('-i', '--input', required=True, help='HR image folder or BasicSR LMDB folder')
    parser.add_argument('-o', '--output', required=True, help='prior file to write (.pth)')
    parser.add_argument('-s', '--scale', type=int, required=True, choices=[1, 2, 3, 4, 8], help='SR scale')
    parser.add_argument('--components', type=int, default=8, help='mixture components K (default: 8)')
    parser.add_argument(
        '--max-pixels', type=int, default=None, help='values sampled over all images (default: every value)')
    parser.add_argument(
        '--space', choices=list(SPACES), default='residual', help='value space, as BDLoss option space')
    parser.add_argument('--seed', type=int, default=0, help='sampling seed (default: 0)')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        prior = fit_gmm_prior(
            args.input,
            args.scale,
            num_components=args.components,
            max_pixels=args.max_pixels,
            space=args.space,
            seed=args.seed,
            progress=True)
        save_gmm_prior(prior, args.output)
    except (ValueError, OSError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2  # a bad input or option (docs/safety.md)
    print(f"wrote {args.output}: K={prior['weights'].numel()}, space={prior['space']}, scale={prior['scale']}, "
          f"{prior['num_values']} values from {prior['num_images']} images, "
          f"mean log-likelihood {prior['log_likelihood']:.4f}")
    for weight, mean, variance in zip(prior['weights'], prior['means'], prior['variances']):
        print(f'  phi={weight.item():.4f}  mu={mean.item():+.5f}  std={variance.sqrt().item():.5f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
