import torch
from torch import nn

from wbsr_plugin.utils.registry import register

from basicsr.archs.arch_util import ResidualBlockNoBN, Upsample, make_layer
from basicsr.utils.registry import ARCH_REGISTRY

from .supernet_util import (
    ConvUse,
    SupernetMixin,
    check_choices,
    check_upscale_power_of_two_or_three,
    conv2d_sliced,
    count_indexed,
    residual_blocks_sliced,
    upsample_plan,
    upsample_scale,
    upsample_sliced,
)

# The default widths and depths as fractions of num_feat and num_block (those of SRResNet in the paper).
WIDTH_FRACTIONS = (36 / 64, 52 / 64, 1)
DEPTH_FRACTIONS = (1 / 4, 1 / 2, 1)


def scaled_choices(size, fractions):
    """Ascending distinct ``round(size * f)`` for each fraction, at least 1."""
    return sorted({max(1, round(size * f)) for f in fractions})


@register(ARCH_REGISTRY)
class WBSREDSR(SupernetMixin, nn.Module):
    """BasicSR's EDSR as a weight-sharing supernet (WBSR).

    Paper: Enhanced Deep Residual Networks for Single Image Super-Resolution (CVPRW 2017); WBSR:
    Rethinking Imbalance in Image Super-Resolution for Efficient Inference (NeurIPS 2024).
    Module tree and state dict keys are those of ``EDSR``, so its checkpoints load unchanged and
    ``forward(x)`` is the plain network. A subnet of width ``w`` and depth ``d`` is exactly an
    ``EDSR(num_feat=w, num_block=d)`` cut out of the supernet: the first ``w`` channels of every
    convolution and the first ``d`` residual blocks of the body.

    Args:
        num_in_ch (int): Channel number of inputs. Default: 3.
        num_out_ch (int): Channel number of outputs. Default: 3.
        num_feat (int): Channel number of intermediate features. Default: 64 (EDSR-baseline).
        num_block (int): Residual blocks in the body. Default: 16.
        upscale (int): Upsampling factor, a power of 2 or 3. Default: 4.
        res_scale (float): Residual scale in the blocks (EDSR-L: 0.1). Default: 1.
        img_range (float): Image range. Default: 255.
        rgb_mean (tuple[float]): Image mean in RGB order. Default: (0.4488, 0.4371, 0.4040).
        widths (list[int] | None): Ascending subnet widths, the last equal to ``num_feat``.
            Default: 36/64, 52/64 and all of ``num_feat`` ([36, 52, 64] for EDSR-baseline).
        depths (list[int] | None): Ascending subnet depths (residual blocks), the last equal to
            ``num_block``. Default: a quarter, half and all of ``num_block`` ([4, 8, 16]).
    """
    PLAIN_TYPE = 'EDSR'
    LABEL = 'EDSR'
    OPTIONS = ('num_in_ch', 'num_out_ch', 'num_feat', 'num_block', 'upscale', 'res_scale', 'img_range', 'rgb_mean')
    CARD_OPTIONS = ('res_scale',)

    def __init__(self,
                 *,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=64,
                 num_block=16,
                 upscale=4,
                 res_scale=1,
                 img_range=255.,
                 rgb_mean=(0.4488, 0.4371, 0.4040),
                 widths=None,
                 depths=None,
                 **unknown):
        super().__init__()
        name = self._keep_options(locals())
        check_upscale_power_of_two_or_three(name, upscale)
        widths = scaled_choices(num_feat, WIDTH_FRACTIONS) if widths is None else widths
        depths = scaled_choices(num_block, DEPTH_FRACTIONS) if depths is None else depths
        self.widths = check_choices(name, 'widths', widths, num_feat, max_option='num_feat')
        self.depths = check_choices(name, 'depths', depths, num_block, max_option='num_block')
        self.register_buffer('mean', torch.tensor(rgb_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = make_layer(ResidualBlockNoBN, num_block, num_feat=num_feat, res_scale=res_scale, pytorch_init=True)
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self._init_subnets()

    def conv_plan(self, width, depth):
        plan = [ConvUse('conv_first', self.num_in_ch, width, 3, 1)]
        for i in range(depth):
            plan += [ConvUse(f'body.{i}.conv1', width, width, 3, 1), ConvUse(f'body.{i}.conv2', width, width, 3, 1)]
        plan.append(ConvUse('conv_after_body', width, width, 3, 1))
        upsample, resolution = upsample_plan(self.upsample, self.num_feat, width)
        plan += upsample
        plan.append(ConvUse('conv_last', width, self.num_out_ch, 3, resolution))
        return plan

    @classmethod
    def shape_options(cls, state):
        needed = {'conv_first.weight', 'body.0.conv1.weight', 'conv_after_body.weight', 'upsample.0.weight',
                  'conv_last.weight'}
        if not needed <= set(state):
            return None
        num_feat, num_in_ch = state['conv_first.weight'].shape[:2]
        return {'num_in_ch': num_in_ch, 'num_out_ch': state['conv_last.weight'].shape[0], 'num_feat': num_feat,
                'num_block': count_indexed(state, r'body\.(\d+)\.conv1\.weight$'),
                'upscale': upsample_scale(state, num_feat)}

    def _forward(self, x, width, depth):
        x = (x - self.mean) * self.img_range
        x = conv2d_sliced(self.conv_first, x, out_ch=width)
        res = conv2d_sliced(self.conv_after_body, residual_blocks_sliced(self.body[:depth], x, width), width, width) + x
        res = upsample_sliced(self.upsample, res, self.num_feat, width)
        return conv2d_sliced(self.conv_last, res, width) / self.img_range + self.mean
