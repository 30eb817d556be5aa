"""Cost of BDLoss in a training step, and the weight of its balancing term on real patches.

    python benchmarks/bench_bdloss.py --hr-dir /path/to/HR_images [--prior prior_x4.pth] [--threads 1]

Part 1 times one training step (forward + backward + Adam) of WBSRResNet (x4, full network)
on a batch of LR patches with L1Loss, BDLoss 'gai' and BDLoss 'bmc', interleaved in one
process, and times the loss alone (forward + backward on a fixed output), which is the
noise-free part of the difference. Part 2 measures, on real HR patches with the bicubic
upsampling of their bicubic LR as the prediction, the two terms of BDLoss and the norm of the
balancing term's gradient relative to the likelihood term's.
"""
import argparse
import statistics
import time

import torch
from torch.nn import functional as F

import wbsr_plugin  # noqa: F401
from wbsr_plugin.losses.gmm_prior_util import fit_gmm_prior, image_source, image_to_tensor, save_gmm_prior

from basicsr.archs import build_network
from basicsr.losses import build_loss


def real_patches(hr_dir, count, size, seed=0):
    names, read = image_source(hr_dir)
    generator = torch.Generator().manual_seed(seed)
    patches = []
    for i in range(count):
        img = image_to_tensor(read(names[i % len(names)]))[:, [2, 1, 0]].float()
        top = torch.randint(img.shape[-2] - size + 1, (1, ), generator=generator).item()
        left = torch.randint(img.shape[-1] - size + 1, (1, ), generator=generator).item()
        patches.append(img[..., top:top + size, left:left + size])
    return torch.cat(patches)


def bicubic_lr(gt, scale):
    return F.interpolate(gt, scale_factor=1 / scale, mode='bicubic', antialias=True, align_corners=False).clamp(0, 1)


def build_losses(prior_path, scale, num_refs):
    return {
        'L1Loss': build_loss({'type': 'L1Loss'}),
        'BDLoss gai': build_loss({'type': 'BDLoss', 'estimator': 'gai', 'prior_path': prior_path, 'scale': scale}),
        'BDLoss bmc': build_loss({'type': 'BDLoss', 'estimator': 'bmc', 'scale': scale, 'bmc_num_refs': num_refs}),
    }


def time_steps(losses, lq, gt, scale, iters, warmup):
    nets, optimizers = {}, {}
    for name, loss in losses.items():
        torch.manual_seed(0)
        nets[name] = build_network({'type': 'WBSRResNet', 'upscale': scale})
        groups = [{'params': nets[name].parameters(), 'lr': 2e-4}]
        if hasattr(loss, 'sigma_parameters'):
            groups.append({'params': loss.sigma_parameters(), 'lr': 1e-2, 'weight_decay': 0})
        optimizers[name] = torch.optim.Adam(groups, betas=(0.9, 0.99))
    step_times = {name: [] for name in losses}
    loss_times = {name: [] for name in losses}
    for i in range(warmup + iters):
        for name, loss in losses.items():
            net, optimizer = nets[name], optimizers[name]
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            value = loss(net(lq), gt)
            value.backward()
            optimizer.step()
            step = time.perf_counter() - start

            output = torch.rand_like(gt).mul_(0.1).add_(gt).requires_grad_()
            start = time.perf_counter()
            loss(output, gt).backward()
            alone = time.perf_counter() - start
            if i >= warmup:
                step_times[name].append(step)
                loss_times[name].append(alone)
    return step_times, loss_times


def balancing_share(prior_path, gt, scale, num_refs):
    pred = F.interpolate(bicubic_lr(gt, scale), scale_factor=scale, mode='bicubic', align_corners=False)
    rows = []
    for estimator in ('gai', 'bmc'):
        for kernel in ('gaussian', 'laplace'):
            opt = {'type': 'BDLoss', 'estimator': estimator, 'kernel': kernel, 'scale': scale}
            opt.update({'prior_path': prior_path} if estimator == 'gai' else {'bmc_num_refs': num_refs})
            loss = build_loss(opt)
            torch.manual_seed(0)
            pred_ = pred.clone().requires_grad_()
            likelihood, balancing = loss.elementwise_terms(pred_, gt)
            grad_l, = torch.autograd.grad(likelihood.mean(), pred_, retain_graph=True)
            grad_b, = torch.autograd.grad(balancing.mean(), pred_)
            share = balancing.mean().abs() / (likelihood.mean().abs() + balancing.mean().abs())
            cosine = F.cosine_similarity(grad_l.flatten(), grad_b.flatten(), dim=0)
            rows.append((estimator, kernel, likelihood.mean().item(), balancing.mean().item(), share.item(),
                         (grad_b.norm() / grad_l.norm()).item(), cosine.item()))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--hr-dir', help='HR images (folder or LMDB) for real patches and the prior')
    parser.add_argument('--prior', help='GMM prior file; fitted on --hr-dir when absent')
    parser.add_argument('--scale', type=int, default=4, choices=[2, 3, 4])
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--lr-size', type=int, default=32)
    parser.add_argument('--num-refs', type=int, default=64, help='bmc_num_refs')
    parser.add_argument('--iters', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--threads', type=int, help='torch.set_num_threads (default: torch default)')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prior is None and args.hr_dir is None:
        parser.error('give --prior or --hr-dir')
    prior_path = args.prior
    if prior_path is None:
        prior_path = f'/tmp/bench_bdloss_prior_x{args.scale}.pth'
        save_gmm_prior(fit_gmm_prior(args.hr_dir, args.scale, max_pixels=4_000_000), prior_path)

    hr_size = args.lr_size * args.scale
    torch.manual_seed(0)
    gt = real_patches(args.hr_dir, args.batch, hr_size) if args.hr_dir else torch.rand(args.batch, 3, hr_size, hr_size)
    lq = bicubic_lr(gt, args.scale)
    losses = build_losses(prior_path, args.scale, args.num_refs)
    step_times, loss_times = time_steps(losses, lq, gt, args.scale, args.iters, args.warmup)

    print(f'WBSRResNet x{args.scale}, batch {args.batch}, LR {args.lr_size}x{args.lr_size}, '
          f'{torch.get_num_threads()} threads, median of {args.iters} interleaved steps')
    print(f"{'loss':<12} {'step ms':>9} {'vs L1':>8} {'loss fwd+bwd ms':>16} {'loss / L1 step':>15}")
    base = statistics.median(step_times['L1Loss'])
    for name in losses:
        step = statistics.median(step_times[name])
        alone = statistics.median(loss_times[name])
        print(f'{name:<12} {step * 1e3:9.1f} {100 * (step / base - 1):+7.1f}% {alone * 1e3:16.2f} '
              f'{100 * alone / base:14.2f}%')

    if args.hr_dir:
        print('\nBalancing term on real patches (prediction: bicubic x{0} of the bicubic LR), '
              'per-element means scaled as in the loss:'.format(args.scale))
        print(f"{'estimator':<9} {'kernel':<9} {'likelihood':>11} {'balancing':>10} {'|bal| share':>11} "
              f"{'|grad bal|/|grad lik|':>22} {'cos(grads)':>10}")
        for row in balancing_share(prior_path, gt, args.scale, args.num_refs):
            print('{:<9} {:<9} {:11.5f} {:10.5f} {:11.3f} {:22.3f} {:10.3f}'.format(*row))


if __name__ == '__main__':
    main()
