import torch
from torch import nn
from torch.nn import functional as F

from wbsr_plugin.utils.registry import register

from basicsr.archs.arch_util import Upsample, make_layer
from basicsr.archs.rcan_arch import ResidualGroup
from basicsr.utils.registry import ARCH_REGISTRY

from .rcan_layout_util import original_layout
from .supernet_util import (
    ConvUse,
    SupernetMixin,
    check_choices,
    check_upscale_power_of_two_or_three,
    conv2d_sliced,
    count_indexed,
    upsample_plan,
    upsample_scale,
    upsample_sliced,
)


@register(ARCH_REGISTRY)
class WBSRRCAN(SupernetMixin, nn.Module):
    """BasicSR's RCAN as a weight-sharing supernet (WBSR).

    Paper: Rethinking Imbalance in Image Super-Resolution for Efficient Inference (NeurIPS 2024).
    Module tree and state dict keys are those of ``RCAN``, so its checkpoints load unchanged and
    ``forward(x)`` is the plain network. A subnet of width ``w`` and depth ``d`` is exactly an
    ``RCAN(num_feat=w, num_block=d)`` cut out of the supernet: the first ``w`` channels of every
    convolution, ``w // squeeze_factor`` channel-attention channels, and the first ``d`` RCABs of
    every residual group (all groups are kept).

    Args:
        num_in_ch (int): Channel number of inputs. Default: 3.
        num_out_ch (int): Channel number of outputs. Default: 3.
        num_feat (int): Channel number of intermediate features. Default: 64.
        num_group (int): Number of residual groups. Default: 10.
        num_block (int): RCABs per residual group. Default: 20.
        squeeze_factor (int): Channel-attention squeeze factor. Default: 16.
        upscale (int): Upsampling factor, a power of 2 or 3. Default: 4.
        res_scale (float): Residual scale in the RCABs. Default: 1.
        img_range (float): Image range. Default: 255.
        rgb_mean (tuple[float]): Image mean in RGB order. Default: (0.4488, 0.4371, 0.4040).
        widths (list[int]): Ascending subnet widths, the last equal to ``num_feat``.
            Default: [36, 52, 64].
        depths (list[int]): Ascending RCABs per group, the last equal to ``num_block``.
            Default: [5, 10, 20].
    """
    PLAIN_TYPE = 'RCAN'
    LABEL = 'RCAN'
    OPTIONS = ('num_in_ch', 'num_out_ch', 'num_feat', 'num_group', 'num_block', 'squeeze_factor', 'upscale',
               'res_scale', 'img_range', 'rgb_mean')
    CARD_OPTIONS = ('num_group', 'squeeze_factor')
    SPANDREL_LAYOUT = staticmethod(original_layout)  # the original RCAN's keys and mean shift

    def __init__(self,
                 *,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=64,
                 num_group=10,
                 num_block=20,
                 squeeze_factor=16,
                 upscale=4,
                 res_scale=1,
                 img_range=255.,
                 rgb_mean=(0.4488, 0.4371, 0.4040),
                 widths=(36, 52, 64),
                 depths=(5, 10, 20),
                 **unknown):
        super().__init__()
        name = self._keep_options(locals())
        check_upscale_power_of_two_or_three(name, upscale)
        self.widths = check_choices(name, 'widths', widths, num_feat, minimum=squeeze_factor, max_option='num_feat')
        self.depths = check_choices(name, 'depths', depths, num_block, max_option='num_block')
        self.register_buffer('mean', torch.tensor(rgb_mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = make_layer(
            ResidualGroup,
            num_group,
            num_feat=num_feat,
            num_block=num_block,
            squeeze_factor=squeeze_factor,
            res_scale=res_scale)
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(upscale, num_feat)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self._init_subnets()

    def conv_plan(self, width, depth):
        squeezed = width // self.squeeze_factor
        plan = [ConvUse('conv_first', self.conv_first.in_channels, width, 3, 1)]
        for g in range(self.num_group):
            for b in range(depth):
                prefix = f'body.{g}.residual_group.{b}.rcab'
                plan += [
                    ConvUse(f'{prefix}.0', width, width, 3, 1),
                    ConvUse(f'{prefix}.2', width, width, 3, 1),
                    ConvUse(f'{prefix}.3.attention.1', width, squeezed, 1, 0),
                    ConvUse(f'{prefix}.3.attention.3', squeezed, width, 1, 0),
                ]
            plan.append(ConvUse(f'body.{g}.conv', width, width, 3, 1))
        plan.append(ConvUse('conv_after_body', width, width, 3, 1))
        upsample, resolution = upsample_plan(self.upsample, self.num_feat, width)
        plan += upsample
        plan.append(ConvUse('conv_last', width, self.num_out_ch, 3, resolution))
        return plan

    @classmethod
    def shape_options(cls, state):
        if not {'conv_first.weight', 'conv_last.weight', 'body.0.residual_group.0.rcab.0.weight'} <= set(state):
            return None
        num_feat, num_in_ch = state['conv_first.weight'].shape[:2]
        squeezed = state['body.0.residual_group.0.rcab.3.attention.1.weight'].shape[0]
        return {'num_in_ch': num_in_ch, 'num_out_ch': state['conv_last.weight'].shape[0], 'num_feat': num_feat,
                'num_group': count_indexed(state, r'body\.(\d+)\.residual_group\.0\.rcab\.0\.weight$'),
                'num_block': count_indexed(state, r'body\.0\.residual_group\.(\d+)\.rcab\.0\.weight$'),
                'squeeze_factor': num_feat // squeezed, 'upscale': upsample_scale(state, num_feat)}

    def _rcab(self, rcab, x, width):
        conv1, _, conv2, attention = rcab.rcab
        squeezed = width // self.squeeze_factor
        res = conv2d_sliced(conv2, F.relu(conv2d_sliced(conv1, x, width, width)), width, width)
        weight = F.adaptive_avg_pool2d(res, 1)
        weight = F.relu(conv2d_sliced(attention.attention[1], weight, width, squeezed))
        weight = torch.sigmoid(conv2d_sliced(attention.attention[3], weight, squeezed, width))
        return res * weight * rcab.res_scale + x

    def _forward(self, x, width, depth):
        x = (x - self.mean) * self.img_range
        x = conv2d_sliced(self.conv_first, x, out_ch=width)
        res = x
        for group in self.body:
            feat = res
            for rcab in group.residual_group[:depth]:
                feat = self._rcab(rcab, feat, width)
            res = conv2d_sliced(group.conv, feat, width, width) + res
        res = conv2d_sliced(self.conv_after_body, res, width, width) + x
        x = conv2d_sliced(self.conv_last, upsample_sliced(self.upsample, res, self.num_feat, width), width)
        return x / self.img_range + self.mean
