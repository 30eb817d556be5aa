import copy
import time
from collections import OrderedDict
from contextlib import nullcontext
from os import path as osp

import torch
from torch.nn import functional as F

from wbsr_plugin.archs.supernet_util import SupernetMixin, supernet_types
from wbsr_plugin.data.resume_position import request_resume, resume_position
from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_plugin.inference.calibration import measure_class_errors
from wbsr_plugin.inference.checkpoint import WBSR_KEY, make_wbsr_meta
from wbsr_plugin.inference.cost_model import load_or_measure
from wbsr_plugin.utils.checkpoint_files import atomic_torch_save
from wbsr_plugin.utils.deferred_log import DeferredLogMixin
from wbsr_plugin.utils.registry import register
from wbsr_runtime.class_thresholds import ClassThresholds
from wbsr_runtime.planning_target import PlanningTarget, inference_policy

from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import ARCH_REGISTRY, MODEL_REGISTRY

from .subnet_sampling import SubnetSampler
from .wbsr_options import (
    calibration_patches,
    parse_wbsr_options,
    pretrained_class_errors,
    target_options,
    training_thresholds,
)


@register(MODEL_REGISTRY)
class DynamicSRModel(DeferredLogMixin, SRModel):
    """SRModel for WBSR supernets: trains subnets, validates full and dynamic inference.

    Paper: Rethinking Imbalance in Image Super-Resolution for Efficient Inference (NeurIPS 2024).
    Differences from BasicSR's ``SRModel`` (everything else, EMA included, is inherited):

    * each iteration trains the subnet(s) drawn by ``wbsr.subnet_sampling`` (their losses are
      averaged, so learning rates mean what they mean for SRModel);
    * with ``wbsr.distill_weight > 0`` (in-place distillation, as in slimmable networks and
      BigNAS), the full subnet of the sandwich runs first and every smaller subnet also learns
      ``distill_weight * MSE(output, full output)``, the full output of the same step detached
      (log key ``l_distill``, the mean over the smaller subnets), beside its pixel loss; the full
      subnet learns from the ground truth alone. MSE, not L1: the subnets share their weights, and
      L1's gradient, which keeps its size as a subnet nears the full output, pinned all subnets
      together and stopped training (docs/RESULTS.md);
    * the step's losses stay on the device until BasicSR's loop reads the log (every
      ``logger.print_freq`` iterations; see :class:`DeferredLogMixin`), so a step never waits for them;
    * a loss with learnable parameters (``BDLoss``'s noise scale) gets its own optimizer
      parameter group with ``wbsr.loss_lr``, and its state is part of the training state;
    * validation logs the full network under the dataset's name, then dynamic inference
      (per-patch subnets chosen by difficulty, ``wbsr.inference``) under ``<name>_dynamic``
      with its FLOPs as % of the full network;
    * training states also hold the position inside the epoch and the random generators' states, so a
      resumed run continues where the interrupted one stopped (``wbsr_plugin/data/resume_position.py``);
    * checkpoints carry the class thresholds, the network options and every subnet's error per
      class on ``wbsr.calibration_patches`` patches of ``wbsr.calibration_set`` (else of the training images),
      with their counts (key ``'wbsr'``; a budget spends its FLOPs by it, a quality target bounds its loss by
      it), so inference needs nothing else; checkpoints and training states are written
      atomically.

    The plugin's options live in the top-level ``wbsr`` section (see ``wbsr_options.py``).
    """

    def __init__(self, opt):
        self.wbsr_opt = parse_wbsr_options(opt.get('wbsr'))
        if opt['dist']:
            if opt.get('find_unused_parameters') is False:
                raise ValueError('find_unused_parameters: False cannot train a supernet with DDP (a subnet leaves '
                                 'the other channels and blocks unused); remove it or set it to True.')
            opt['find_unused_parameters'] = True
        arch = ARCH_REGISTRY.get(opt['network_g']['type'])
        if not (isinstance(arch, type) and issubclass(arch, SupernetMixin)):
            raise ValueError(f"DynamicSRModel trains WBSR supernets; network_g.type {opt['network_g']['type']!r} "
                             f'is not one (use one of {supernet_types()}).')
        super().__init__(opt)
        self.thresholds, self.threshold_patch_size = training_thresholds(opt, self.wbsr_opt)
        self.calibration = calibration_patches(opt, self.wbsr_opt, self.thresholds, self.threshold_patch_size)
        self._class_errors = (None, None if self.calibration else pretrained_class_errors(opt, self.thresholds))
        self.dynamic_reports = []
        self._engine = None
        request_resume(None, 0)  # nothing to skip unless this model resumes

    # ------------------------------------------------------------------------------------------
    # training
    def init_training_settings(self):
        subnets = self.get_bare_model(self.net_g).subnets
        self.subnet_sampler = SubnetSampler(subnets, self.wbsr_opt['subnet_sampling'], self.opt['manual_seed'])
        self.full_subnet = len(subnets) - 1
        if self.wbsr_opt['distill_weight'] > 0 and self.wbsr_opt['subnet_sampling'] != 'sandwich':
            raise ValueError(f"wbsr.distill_weight > 0 distils the full subnet into the smaller subnets of the "
                             f"sandwich; it needs wbsr.subnet_sampling: sandwich, got "
                             f"{self.wbsr_opt['subnet_sampling']!r} (or set wbsr.distill_weight: 0).")
        super().init_training_settings()

    def setup_optimizers(self):
        train_opt = self.opt['train']
        optim_opt = copy.deepcopy(train_opt['optim_g'])
        optim_type = optim_opt.pop('type')
        groups = [{'params': [p for p in self.net_g.parameters() if p.requires_grad]}]
        loss_params = [p for p in self.cri_pix.parameters() if p.requires_grad] if self.cri_pix else []
        if loss_params:
            groups.append({'params': loss_params, 'lr': self.wbsr_opt['loss_lr'], 'weight_decay': 0})
        self.optimizer_g = self.get_optimizer(optim_type, groups, **optim_opt)
        self.optimizers.append(self.optimizer_g)

    def _pixel_losses(self, output):
        losses = OrderedDict()
        if self.cri_pix:
            losses['l_pix'] = self.cri_pix(output, self.gt)
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(output, self.gt)
            if l_percep is not None:
                losses['l_percep'] = l_percep
            if l_style is not None:
                losses['l_style'] = l_style
        return losses

    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad()
        subnets = self.subnet_sampler.sample()
        distill_weight = self.wbsr_opt['distill_weight']
        if distill_weight > 0:  # the full subnet first: its output is the others' target
            subnets = sorted(subnets, key=lambda subnet: subnet != self.full_subnet)
        num_students = sum(subnet != self.full_subnet for subnet in subnets)
        teacher = None
        loss_dict = OrderedDict()
        for i, subnet in enumerate(subnets):
            # DDP reduces gradients once, after the last subnet's backward
            last = i == len(subnets) - 1
            sync = nullcontext() if last or not self.opt['dist'] else self.net_g.no_sync()
            with sync:
                self.output = self.net_g(self.lq, subnet=subnet)
                losses = self._pixel_losses(self.output)
                if distill_weight > 0 and subnet == self.full_subnet:
                    teacher = self.output.detach()
                elif teacher is not None:
                    losses['l_distill'] = distill_weight * F.mse_loss(self.output, teacher)
                (sum(losses.values()) / len(subnets)).backward()
            for name, value in losses.items():
                share = num_students if name == 'l_distill' else len(subnets)
                loss_dict[name] = loss_dict.get(name, 0) + value.detach() / share
        self.optimizer_g.step()

        extras = {'subnet': float(subnets[-1])}
        if getattr(self.cri_pix, 'learn_sigma', False):
            extras['sigma'] = self.cri_pix.sigma
        self.store_log(loss_dict, **extras)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    # ------------------------------------------------------------------------------------------
    # validation
    def _inference_net(self):
        return self.net_g_ema if hasattr(self, 'net_g_ema') else self.get_bare_model(self.net_g)

    def class_errors(self, iteration):
        """Every subnet's error per class (:class:`ClassErrors`) on the calibration patches at ``iteration``
        (measured once per iteration, for the checkpoint and validation alike; see ``wbsr.calibration_patches``);
        without calibration, those stored in ``path.pretrain_network_g``, or None."""
        if self.calibration is not None and self._class_errors[0] != iteration:
            lq, gt, ids, data = self.calibration
            start = time.perf_counter()
            errors = measure_class_errors(self._inference_net(), lq, gt, self.thresholds, ids,
                                          {'data': data, 'by': 'training', 'iter': iteration})
            self._class_errors = (iteration, errors)
            get_root_logger().info(f'Class errors of iteration {iteration} measured on {len(lq)} calibration patches '
                                   f'in {time.perf_counter() - start:.1f} s.')
        return self._class_errors[1]

    def test(self):
        if self._engine is None:
            return super().test()
        net = self._inference_net()
        was_training = net.training
        net.eval()
        with torch.no_grad():
            self.output, report = self._engine.run(self.lq)
        net.train(was_training)
        self.dynamic_reports.append(report)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        if not self.wbsr_opt['dynamic_val']:
            return
        dataset_opt = dataloader.dataset.opt
        name = dataset_opt['name']
        dataset_opt['name'] = f'{name}_dynamic'
        self._engine, policy = self.validation_engine(current_iter)
        self.dynamic_reports = []
        try:
            super().nondist_validation(dataloader, current_iter, tb_logger, save_img)
        finally:
            dataset_opt['name'] = name
            self._engine = None
        self._log_dynamic_flops(f'{name}_dynamic', current_iter, tb_logger, policy)

    def validation_engine(self, current_iter):
        """``(engine, policy)`` of dynamic validation: ``wbsr.inference``'s options, and the default policy
        (:func:`~wbsr_runtime.planning_target.inference_policy`) where they are silent, as ``infer``
        decides it for the checkpoint this model saves."""
        inference_opt = dict(self.wbsr_opt['inference'])
        given = {key: inference_opt.pop(key) for key in target_options(inference_opt)}
        plan_by = given.pop('plan_by', None)
        patch_size, overlap = inference_opt.pop('patch_size', None), inference_opt.pop('overlap', None)
        calibrated = self.calibration is not None or self._class_errors[1] is not None
        # BasicSR validates once more after the last iteration (at total_iter + 1): the same weights, measured already
        last = self.opt.get('train', {}).get('total_iter')
        class_errors = self.class_errors(min(current_iter, last) if last else current_iter) if calibrated else None
        terms = {} if class_errors is None else class_errors.planning_terms()  # as infer plans
        thresholds = ClassThresholds.of(self.thresholds, **terms) if self.thresholds else None
        policy = inference_policy(thresholds, self.threshold_patch_size, target=PlanningTarget.from_options(**given),
                                  patch_size=patch_size or self.threshold_patch_size, overlap=overlap,
                                  plan_by=plan_by)
        net = self._inference_net()
        cost_table = None
        if policy.target.by_time:
            cost_table = load_or_measure(net, next(net.parameters()).device, next(net.parameters()).dtype)
        engine = DynamicInferenceEngine(net, thresholds=thresholds, **inference_opt, **policy.engine_options(),
                                        cost_table=cost_table)
        return engine, policy

    def _log_dynamic_flops(self, dataset_name, current_iter, tb_logger, policy):
        reports = self.dynamic_reports
        flops = sum(r.flops for r in reports)
        full = sum(r.full_flops for r in reports)
        percent = 100. * flops / full
        histogram = [sum(counts) for counts in zip(*(r.histogram for r in reports))]
        self.dynamic_flops_percent = percent
        get_root_logger().info(f'Dynamic inference on {dataset_name}: {percent:.1f} % of the full network FLOPs '
                               f'({flops / 1e9:.2f} of {full / 1e9:.2f} GFLOPs); patches per subnet {histogram}; '
                               f'policy: {policy}')
        if tb_logger:
            tb_logger.add_scalar(f'metrics/{dataset_name}/flops_percent', percent, current_iter)

    # ------------------------------------------------------------------------------------------
    # checkpoints and training states
    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        # BasicSR saves with current_iter=-1 ('latest') once all train.total_iter iterations are done
        iteration = self.opt.get('train', {}).get('total_iter') if current_iter == -1 else current_iter
        if current_iter == -1:
            current_iter = 'latest'
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        checkpoint = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            checkpoint[key] = OrderedDict((k[7:] if k.startswith('module.') else k, v.cpu()) for k, v in state.items())
        checkpoint[WBSR_KEY] = make_wbsr_meta(self.get_bare_model(nets[0]), self.thresholds,
                                              self.threshold_patch_size, iteration=iteration,
                                              class_errors=self.class_errors(iteration))
        atomic_torch_save(checkpoint, osp.join(self.opt['path']['models'], f'{net_label}_{current_iter}.pth'))

    @master_only
    def save_training_state(self, epoch, current_iter):
        if current_iter == -1:
            return
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
            'subnet_sampler': self.subnet_sampler.state_dict(),
            'pixel_loss': self.cri_pix.state_dict() if self.cri_pix else {},
            'position': resume_position(epoch, current_iter),
        }
        atomic_torch_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        if 'subnet_sampler' in resume_state:
            self.subnet_sampler.load_state_dict(resume_state['subnet_sampler'])
        if self.cri_pix and resume_state.get('pixel_loss'):
            self.cri_pix.load_state_dict(resume_state['pixel_loss'])
        request_resume(resume_state.get('position'), self.opt['datasets']['train']['batch_size_per_gpu'])
