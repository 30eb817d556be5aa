"""ClassSR (Kong et al., CVPR 2021) with MSRResNet branches, as a baseline for the reproduction."""
import torch
from torch import nn
from torch.nn import functional as F

from wbsr_plugin.utils.registry import register

from basicsr.archs.srresnet_arch import MSRResNet
from basicsr.utils.registry import ARCH_REGISTRY

CLASSIFIER_WIDTH = 128
CLASSIFIER_OUT = 32


def msrresnet_flops(width, num_block, upscale, lq_h, lq_w, num_in_ch=3, num_out_ch=3):
    """FLOPs (2 x multiply-accumulates) of ``MSRResNet(num_feat=width, num_block=num_block)`` on an LR image."""
    px = lq_h * lq_w
    macs = num_in_ch * width * 9 * px + 2 * num_block * width * width * 9 * px
    if upscale == 4:
        macs += width * 4 * width * 9 * px + width * 4 * width * 9 * 4 * px
    elif upscale in (2, 3):
        macs += width * upscale**2 * width * 9 * px
    else:
        raise ValueError(f'msrresnet_flops: upscale must be one of [2, 3, 4], got {upscale!r}.')
    hr_px = px * upscale**2
    macs += width * width * 9 * hr_px + width * num_out_ch * 9 * hr_px
    return 2 * macs


class ClassSRClassifier(nn.Module):
    """ClassSR's patch classifier: Conv 4x4 stride 4, four 1x1 convs, global average pooling, linear.

    Args:
        num_in_ch (int): Channel number of inputs. Default: 3.
        num_classes (int): Number of classes (branches). Default: 3.
    """

    def __init__(self, *, num_in_ch=3, num_classes=3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(num_in_ch, CLASSIFIER_WIDTH, 4, 4), nn.LeakyReLU(0.1, True),
            nn.Conv2d(CLASSIFIER_WIDTH, CLASSIFIER_WIDTH, 1), nn.LeakyReLU(0.1, True),
            nn.Conv2d(CLASSIFIER_WIDTH, CLASSIFIER_WIDTH, 1), nn.LeakyReLU(0.1, True),
            nn.Conv2d(CLASSIFIER_WIDTH, CLASSIFIER_WIDTH, 1), nn.LeakyReLU(0.1, True),
            nn.Conv2d(CLASSIFIER_WIDTH, CLASSIFIER_OUT, 1))
        self.last = nn.Linear(CLASSIFIER_OUT, num_classes)

    def forward(self, x):
        return self.last(self.body(x).mean(dim=(2, 3)))

    def flops(self, lq_h, lq_w):
        """FLOPs of the classifier on one LR patch."""
        px = (lq_h // 4) * (lq_w // 4)
        macs = self.body[0].in_channels * CLASSIFIER_WIDTH * 16 * px + 3 * CLASSIFIER_WIDTH**2 * px
        macs += CLASSIFIER_WIDTH * CLASSIFIER_OUT * px + CLASSIFIER_OUT * self.last.out_features
        return 2 * macs


@register(ARCH_REGISTRY)
class WBSRClassSRNet(nn.Module):
    """ClassSR: a classifier sends each LR patch to one of several SR branches of rising width.

    Paper: ClassSR: A General Framework to Accelerate Super-Resolution Networks by Data
    Characteristic (CVPR 2021). The branches are BasicSR ``MSRResNet`` networks (ClassSR's
    "SRResNet" variant). ``forward`` is the training form: the softmax-weighted sum of all
    branches; :meth:`classify` and :meth:`branch_forward` are the inference form.

    Args:
        num_in_ch (int): Channel number of inputs. Default: 3.
        num_out_ch (int): Channel number of outputs. Default: 3.
        widths (list[int]): ``num_feat`` of every branch, ascending (one class each). Default: [36, 52, 64].
        num_block (int): Residual blocks of every branch. Default: 16.
        upscale (int): Upsampling factor. Default: 4.
    """

    def __init__(self, *, num_in_ch=3, num_out_ch=3, widths=(36, 52, 64), num_block=16, upscale=4):
        super().__init__()
        widths = [int(w) for w in widths]
        if len(widths) < 2 or widths != sorted(set(widths)):
            raise ValueError(
                f'WBSRClassSRNet: widths must be at least two ascending distinct integers, got {widths!r}.')
        self.widths = widths
        self.num_block = num_block
        self.upscale = upscale
        self.classifier = ClassSRClassifier(num_in_ch=num_in_ch, num_classes=len(widths))
        self.branches = nn.ModuleList(
            MSRResNet(num_in_ch=num_in_ch, num_out_ch=num_out_ch, num_feat=w, num_block=num_block, upscale=upscale)
            for w in widths)

    def classify(self, x):
        """Class logits (n, len(widths)) of LR patches (n, c, h, w)."""
        return self.classifier(x)

    def branch_forward(self, x, branch):
        """Run LR patches through branch ``branch`` (0 is the narrowest)."""
        return self.branches[branch](x)

    def forward(self, x):
        probs = F.softmax(self.classify(x), dim=1)
        outputs = torch.stack([branch(x) for branch in self.branches], dim=1)
        return (probs[:, :, None, None, None] * outputs).sum(dim=1)

    def flops(self, lq_h, lq_w, branch):
        """FLOPs of the classifier plus branch ``branch`` on one LR patch."""
        return self.classifier.flops(lq_h, lq_w) + msrresnet_flops(self.widths[branch], self.num_block, self.upscale,
                                                                   lq_h, lq_w)
