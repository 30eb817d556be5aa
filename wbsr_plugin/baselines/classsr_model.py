"""Training of ClassSR (Kong et al., CVPR 2021) inside BasicSR's pipeline."""
import copy
from collections import OrderedDict

import torch
from torch.nn import functional as F

from wbsr_plugin.data.difficulty import patch_difficulty, rgb_to_luma
from wbsr_plugin.utils.deferred_log import DeferredLogMixin
from wbsr_plugin.utils.registry import register

from basicsr.models.sr_model import SRModel
from basicsr.utils.registry import MODEL_REGISTRY

CLASSSR_DEFAULTS = {'branch_ratio': 0.5, 'thresholds': None, 'class_loss_weight': 5.0e-4,
                    'average_loss_weight': 3.0e-3}


def parse_classsr_options(section):
    """The ``classsr`` options with defaults; unknown keys and bad values raise ``ValueError``."""
    section = {} if section is None else copy.deepcopy(dict(section))
    unknown = set(section) - set(CLASSSR_DEFAULTS)
    if unknown:
        raise ValueError(f'classsr: unknown key(s) {sorted(unknown)}; allowed keys are {sorted(CLASSSR_DEFAULTS)}.')
    opt = {**CLASSSR_DEFAULTS, **section}
    if not isinstance(opt['branch_ratio'], (int, float)) or not 0 <= opt['branch_ratio'] <= 1:
        raise ValueError(f"classsr.branch_ratio must lie in [0, 1], got {opt['branch_ratio']!r}.")
    for key in ('class_loss_weight', 'average_loss_weight'):
        if not isinstance(opt[key], (int, float)) or opt[key] < 0:
            raise ValueError(f'classsr.{key} must be a number >= 0 (write 1.0e-3, not 1e-3), got {opt[key]!r}.')
    if opt['branch_ratio'] > 0 and not isinstance(opt['thresholds'], (list, tuple)):
        raise ValueError('classsr.thresholds (one difficulty threshold fewer than branches) is needed when '
                         f"branch_ratio > 0, got {opt['thresholds']!r}.")
    return opt


def class_loss(probs):
    """ClassSR's class loss: ``(M - 1) - sum_{i<j} |p_i - p_j|`` per patch, averaged (confident choices)."""
    num_classes = probs.shape[1]
    pairwise = sum((probs[:, i] - probs[:, j]).abs() for i in range(num_classes) for j in range(i + 1, num_classes))
    return ((num_classes - 1) - pairwise).mean()


def average_loss(probs):
    """ClassSR's average loss: every class receives about ``n / M`` of the batch's probability mass."""
    n, num_classes = probs.shape
    share = n / num_classes
    return (probs.sum(dim=0) - share).abs().sum() / (share * 4)


@register(MODEL_REGISTRY)
class WBSRClassSRModel(DeferredLogMixin, SRModel):
    """SRModel for ``WBSRClassSRNet``: branch pre-training, then joint training with the classifier.

    Paper: ClassSR: A General Framework to Accelerate Super-Resolution Networks by Data
    Characteristic (CVPR 2021). Options, in the top-level ``classsr`` section:

    * ``branch_ratio`` (float): the first ``branch_ratio * total_iter`` iterations train each branch
      with the pixel loss on its own class of patches (``thresholds`` split the batch by the WBSR
      patch difficulty, narrowest branch for the flattest class; ClassSR splits by the PSNR of a
      pre-trained network); the rest train everything jointly on the softmax-weighted sum of the
      branches. Default: 0.5.
    * ``thresholds`` (list[float]): M - 1 difficulty thresholds. Default: None.
    * ``class_loss_weight``, ``average_loss_weight`` (float): weights of ClassSR's class and average
      losses relative to the pixel loss (ClassSR: 2000 : 1 : 6, i.e. 5.0e-4 and 3.0e-3). Default: 5.0e-4, 3.0e-3.
    """

    def __init__(self, opt):
        self.classsr_opt = parse_classsr_options(opt.get('classsr'))
        if opt['network_g']['type'] != 'WBSRClassSRNet':
            raise ValueError(
                f"WBSRClassSRModel trains WBSRClassSRNet, got network_g.type {opt['network_g']['type']!r}.")
        self._class_bounds = None
        super().__init__(opt)

    def patch_classes(self, lq, num_classes):
        """Difficulty class in 0..num_classes-1 of every LR patch of ``lq`` (n, c, h, w), on its device."""
        if self._class_bounds is None or self._class_bounds.device != lq.device:
            self._class_bounds = torch.as_tensor(self.classsr_opt['thresholds'], dtype=torch.float64,
                                                 device=lq.device)
        origin = torch.zeros(1, dtype=torch.long, device=lq.device)  # a device tensor: no host copy per step
        score = patch_difficulty(rgb_to_luma(lq.detach().float()), lq.shape[-1], origin, origin).flatten()
        return torch.bucketize(score, self._class_bounds, right=True).clamp(max=num_classes - 1)

    def _branch_loss(self, net):
        """Pixel loss of every branch on its class of patches, weighted by the class's share of the batch.

        The patches are grouped by class with one sort; the class sizes are the step's only host read.
        """
        num_branches = len(net.branches)
        classes = self.patch_classes(self.lq, num_branches)
        order = classes.argsort(stable=True)
        sizes = (classes[:, None] == torch.arange(num_branches, device=classes.device)).sum(dim=0).tolist()
        lq_groups = self.lq.index_select(0, order).split(sizes)
        gt_groups = self.gt.index_select(0, order).split(sizes)
        l_pix = 0
        for branch, (lq, gt) in enumerate(zip(lq_groups, gt_groups)):
            if len(lq):
                l_pix = l_pix + self.cri_pix(net.branch_forward(lq, branch), gt) * (len(lq) / len(self.lq))
        return l_pix

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad()
        net = self.get_bare_model(self.net_g)
        loss_dict = OrderedDict()
        if current_iter <= self.classsr_opt['branch_ratio'] * self.opt['train']['total_iter']:
            l_pix = self._branch_loss(net)
            self.output = None
            l_pix.backward()
            loss_dict['l_pix'] = l_pix.detach()
        else:
            probs = F.softmax(net.classify(self.lq), dim=1)
            outputs = torch.stack([b(self.lq) for b in net.branches], dim=1)
            self.output = (probs[:, :, None, None, None] * outputs).sum(dim=1)
            l_pix = self.cri_pix(self.output, self.gt)
            l_class = class_loss(probs)
            l_average = average_loss(probs)
            total = (l_pix + self.classsr_opt['class_loss_weight'] * l_class +
                     self.classsr_opt['average_loss_weight'] * l_average)
            total.backward()
            loss_dict.update(l_pix=l_pix.detach(), l_class=l_class.detach(), l_average=l_average.detach())
        self.optimizer_g.step()
        self.store_log(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)
