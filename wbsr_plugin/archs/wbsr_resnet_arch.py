from torch import nn
from torch.nn import functional as F

from wbsr_plugin.utils.registry import register

from basicsr.archs.arch_util import ResidualBlockNoBN, default_init_weights, make_layer
from basicsr.utils.registry import ARCH_REGISTRY

from .supernet_util import (
    ConvUse,
    SupernetMixin,
    check_choices,
    conv2d_sliced,
    count_indexed,
    leaky_relu,
    residual_blocks_sliced,
)


@register(ARCH_REGISTRY)
class WBSRResNet(SupernetMixin, nn.Module):
    """BasicSR's MSRResNet as a weight-sharing supernet (WBSR).

    Paper: Rethinking Imbalance in Image Super-Resolution for Efficient Inference (NeurIPS 2024).
    The module tree and state dict keys are those of ``MSRResNet``, so its checkpoints load
    unchanged and ``forward(x)`` is the plain network. A subnet of width ``w`` and depth ``d``
    uses the first ``w`` channels of every convolution and the first ``d`` residual blocks;
    ``self.subnets`` lists the ``len(widths) x len(depths)`` subnets ordered by FLOPs.

    Args:
        num_in_ch (int): Channel number of inputs. Default: 3.
        num_out_ch (int): Channel number of outputs. Default: 3.
        num_feat (int): Channel number of intermediate features. Default: 64.
        num_block (int): Residual blocks in the body. Default: 16.
        upscale (int): Upsampling factor, 2, 3 or 4. Default: 4.
        widths (list[int]): Ascending subnet widths, the last equal to ``num_feat``.
            Default: [36, 52, 64].
        depths (list[int]): Ascending subnet depths (residual blocks), the last equal to
            ``num_block``. Default: [4, 8, 16].
    """
    PLAIN_TYPE = 'MSRResNet'
    LABEL = 'SRResNet'
    OPTIONS = ('num_in_ch', 'num_out_ch', 'num_feat', 'num_block', 'upscale')

    def __init__(self,
                 *,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=64,
                 num_block=16,
                 upscale=4,
                 widths=(36, 52, 64),
                 depths=(4, 8, 16),
                 **unknown):
        super().__init__()
        name = self._keep_options(locals())
        if upscale not in (2, 3, 4):
            raise ValueError(f'{name}: upscale must be one of [2, 3, 4], got {upscale!r}.')
        self.widths = check_choices(name, 'widths', widths, num_feat, max_option='num_feat')
        self.depths = check_choices(name, 'depths', depths, num_block, max_option='num_block')

        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = make_layer(ResidualBlockNoBN, num_block, num_feat=num_feat)
        if upscale in (2, 3):
            self.upconv1 = nn.Conv2d(num_feat, num_feat * upscale * upscale, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(upscale)
        else:
            self.upconv1 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.upconv2 = nn.Conv2d(num_feat, num_feat * 4, 3, 1, 1)
            self.pixel_shuffle = nn.PixelShuffle(2)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1, inplace=True)

        default_init_weights([self.conv_first, self.upconv1, self.conv_hr, self.conv_last], 0.1)
        if upscale == 4:
            default_init_weights(self.upconv2, 0.1)
        self._init_subnets()

    def conv_plan(self, width, depth):
        plan = [ConvUse('conv_first', self.conv_first.in_channels, width, 3, 1)]
        for i in range(depth):
            plan += [ConvUse(f'body.{i}.conv1', width, width, 3, 1), ConvUse(f'body.{i}.conv2', width, width, 3, 1)]
        if self.upscale == 4:
            plan += [ConvUse('upconv1', width, 4 * width, 3, 1), ConvUse('upconv2', width, 4 * width, 3, 2)]
        else:
            plan.append(ConvUse('upconv1', width, self.upscale**2 * width, 3, 1))
        plan += [
            ConvUse('conv_hr', width, width, 3, self.upscale),
            ConvUse('conv_last', width, self.num_out_ch, 3, self.upscale)
        ]
        return plan

    @classmethod
    def shape_options(cls, state):
        if not {'conv_first.weight', 'body.0.conv1.weight', 'conv_hr.weight', 'upconv1.weight'} <= set(state):
            return None
        num_feat, num_in_ch = state['conv_first.weight'].shape[:2]
        if 'upconv2.weight' in state:
            upscale = 4
        else:
            upscale = round((state['upconv1.weight'].shape[0] / num_feat)**0.5)
        return {'num_in_ch': num_in_ch, 'num_out_ch': state['conv_last.weight'].shape[0], 'num_feat': num_feat,
                'num_block': count_indexed(state, r'body\.(\d+)\.conv1\.weight$'), 'upscale': upscale}

    def _forward(self, x, width, depth):
        feat = leaky_relu(conv2d_sliced(self.conv_first, x, out_ch=width))
        out = residual_blocks_sliced(self.body[:depth], feat, width)
        if self.upscale == 4:
            out = leaky_relu(self.pixel_shuffle(conv2d_sliced(self.upconv1, out, width, 4 * width)))
            out = leaky_relu(self.pixel_shuffle(conv2d_sliced(self.upconv2, out, width, 4 * width)))
        else:
            out = leaky_relu(self.pixel_shuffle(conv2d_sliced(self.upconv1, out, width, self.upscale**2 * width)))
        out = conv2d_sliced(self.conv_last, leaky_relu(conv2d_sliced(self.conv_hr, out, width, width)), width)
        return out + F.interpolate(x, scale_factor=self.upscale, mode='bilinear', align_corners=False)
