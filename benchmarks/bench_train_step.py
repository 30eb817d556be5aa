"""Time of one training step with L1Loss, MSELoss and BDLoss, for the plain network and the sandwich.

    python benchmarks/bench_train_step.py [--device cpu|cuda|all] [--batch B] [--gt-size S] [--threads T]
                                          [--repeat R] [--warmup W] [--prior PRIOR.pth] [--no-distill]
                                          [--print-freq N]

One step is what BasicSR's training loop runs per iteration: ``feed_data`` of a synthetic batch
already on the device (no data loader) and ``optimize_parameters`` (forward, loss, backward,
Adam step, loss logging) of

* ``plain``: BasicSR's ``SRModel`` with ``MSRResNet`` (64 features, 16 blocks);
* ``sandwich``: ``DynamicSRModel`` with ``WBSRResNet`` (the same network as a supernet of 9
  subnets), ``wbsr.subnet_sampling: sandwich`` (3 subnets per step);
* ``sandwich+distill``: the same with ``wbsr.distill_weight: 1.0`` (in-place distillation).

BDLoss is ``estimator: gai`` with the default options, its GMM prior fitted on the HR fixture
photos of ``tests/fixtures/hr`` (or ``--prior``). All models of one device are built first and
stepped round robin (one step of each model in turn, ``--repeat`` rounds), so that load from
other processes reaches every variant alike; the table gives the median time per step and its
ratio to L1Loss in the same setup. Whole steps are noisy on a shared machine, so each round also times
every loss alone (forward + backward on a fixed output of the batch's size, the noise-free part
of the difference) and the second table gives what it adds over L1Loss per step (one call for
the plain network, three for a sandwich) as a share of the L1 step. On CUDA, the device is
synchronised before and after each timed step or loss call.

The third table (L1Loss; ``--print-freq 0`` leaves it out) times blocks of ``--print-freq`` steps
without synchronising inside them, as BasicSR's loop runs, on two copies of each model stepped
round robin: one whose log is read (``get_current_log()``) after every step, one read once per block,
at its last step, as BasicSR reads it every ``logger.print_freq`` iterations. A read waits for the
device, so on CUDA reading every step stops the host from queueing the next step while the device
works; on the CPU there is nothing to overlap. BasicSR's ``SRModel`` (``plain``) reads its losses in
every step whatever the reader does.
"""
import argparse
import logging
import statistics
import sys
import tempfile
import time
from os import path as osp

import torch

import wbsr_plugin  # noqa: F401
from wbsr_plugin.cli.training_options import parsed_options, pixel_loss, training_options
from wbsr_plugin.losses.gmm_prior_util import fit_gmm_prior, save_gmm_prior

from basicsr.models import build_model
from basicsr.utils import get_root_logger

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FIXTURES_HR = osp.join(ROOT, 'tests', 'fixtures', 'hr')
LOSSES = ('L1Loss', 'MSELoss', 'BDLoss')
LOSS_KINDS = {'L1Loss': 'l1', 'MSELoss': 'mse', 'BDLoss': 'bdloss'}  # training_options.pixel_loss
DEFAULT_SIZES = {'cpu': (4, 64), 'cuda': (16, 128)}  # batch, GT patch size


def model_options(setup, loss, device, scale, prior_path, workdir):
    """BasicSR training options of one benchmarked model (no datasets: batches are fed directly)."""
    network = {'type': 'MSRResNet' if setup == 'plain' else 'WBSRResNet', 'num_in_ch': 3, 'num_out_ch': 3,
               'num_feat': 64, 'num_block': 16, 'upscale': scale}
    wbsr = None
    if setup != 'plain':
        wbsr = {'subnet_sampling': 'sandwich', 'dynamic_val': False,
                'distill_weight': 1.0 if setup == 'sandwich+distill' else 0.0}
    opt = training_options(f'bench_{setup}_{loss}', model_type='SRModel' if setup == 'plain' else 'DynamicSRModel',
                           scale=scale, network=network, total_iter=10**9, lr=2.0e-4, ema_decay=0,
                           pixel_opt=pixel_loss(LOSS_KINDS[loss], prior_path=prior_path, scale=scale),
                           num_gpu=1 if device == 'cuda' else 0, wbsr=wbsr,
                           scheduler={'type': 'MultiStepLR', 'milestones': [10**9], 'gamma': 0.5})
    return parsed_options(opt, workdir)


def synchronize(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def time_loss(loss, gt, device):
    """Seconds of one forward + backward of ``loss`` alone, on an output near ``gt``."""
    output = gt.add(0.05 * torch.randn_like(gt)).requires_grad_()
    synchronize(device)
    start = time.perf_counter()
    loss(output, gt).backward()
    synchronize(device)
    return time.perf_counter() - start


def synthetic_batch(device, batch, gt_size, scale):
    generator = torch.Generator().manual_seed(0)
    gt = torch.rand(batch, 3, gt_size, gt_size, generator=generator)
    return {
        'gt': gt.to(device),
        'lq': torch.nn.functional.interpolate(gt, scale_factor=1 / scale, mode='bicubic', antialias=True).to(device)
    }


def time_steps(setups, device, data, scale, repeat, warmup, prior_path):
    """Median seconds per step of every (setup, loss), stepped round robin, and of each loss alone."""
    with tempfile.TemporaryDirectory() as workdir:
        models = {}
        for setup in setups:
            for loss in LOSSES:
                torch.manual_seed(0)
                models[setup, loss] = build_model(model_options(setup, loss, device, scale, prior_path, workdir))
        times = {key: [] for key in models}
        loss_times = {loss: [] for loss in LOSSES}
        for step in range(warmup + repeat):
            for key, model in models.items():
                synchronize(device)
                start = time.perf_counter()
                model.feed_data(data)
                model.optimize_parameters(step + 1)
                synchronize(device)
                if step >= warmup:
                    times[key].append(time.perf_counter() - start)
                    if key[0] == setups[0]:
                        loss_times[key[1]].append(time_loss(model.cri_pix, data['gt'], device))
    return ({key: statistics.median(values) for key, values in times.items()},
            {loss: statistics.median(values) for loss, values in loss_times.items()})


def time_log_reads(setups, device, data, scale, repeat, warmup, prior_path, print_freq):
    """Median seconds per step (L1Loss) of every setup with the log read every step or every ``print_freq``."""
    policies = {'every step': lambda i: True, f'every {print_freq}': lambda i: i == print_freq - 1}
    with tempfile.TemporaryDirectory() as workdir:
        models = {}
        for setup in setups:
            for policy in policies:
                torch.manual_seed(0)
                models[setup, policy] = build_model(model_options(setup, 'L1Loss', device, scale, prior_path, workdir))
        times = {key: [] for key in models}
        for block in range(warmup + repeat):
            for (setup, policy), model in models.items():
                reads = policies[policy]
                synchronize(device)
                start = time.perf_counter()
                for i in range(print_freq):
                    model.feed_data(data)
                    model.optimize_parameters(block * print_freq + i + 1)
                    if reads(i):
                        model.get_current_log()
                synchronize(device)
                if block >= warmup:
                    times[setup, policy].append((time.perf_counter() - start) / print_freq)
    return {key: statistics.median(values) for key, values in times.items()}, list(policies)


def print_log_reads(medians, policies, setups, print_freq, repeat):
    every_step, every_block = policies
    print(f'\nReading the log (L1Loss), ms/step: median of {repeat} round-robin blocks of {print_freq} steps')
    print(f"{'setup':<17} {every_step:>12} {every_block:>12} {'saved':>7}")
    for setup in setups:
        slow, fast = medians[setup, every_step], medians[setup, every_block]
        print(f'{setup:<17} {slow * 1e3:12.1f} {fast * 1e3:12.1f} {100 * (1 - fast / slow):+6.1f}%')


def print_table(medians, loss_medians, setups, device, batch, gt_size, scale, repeat):
    threads = torch.get_num_threads() if device == 'cpu' else None
    where = f'{threads} threads' if device == 'cpu' else torch.cuda.get_device_name()
    print(f'\n{device.upper()} ({where}), torch {torch.__version__}, x{scale}, batch {batch}, GT {gt_size}x{gt_size}, '
          f'median of {repeat} round-robin steps')
    print(f"{'setup':<17} {'loss':<8} {'ms/step':>9} {'vs L1':>7}")
    for setup in setups:
        base = medians[setup, 'L1Loss']
        for loss in LOSSES:
            value = medians[setup, loss]
            print(f'{setup:<17} {loss:<8} {value * 1e3:9.1f} {value / base:6.3f}x')
    print('\nThe loss alone (forward + backward on a fixed output), and what it adds per step over L1Loss:')
    print(f"{'loss':<8} {'ms/call':>8} " + ' '.join(f'{s + " +%":>17}' for s in setups))
    for loss in LOSSES:
        extra = loss_medians[loss] - loss_medians['L1Loss']
        shares = []
        for setup in setups:
            calls = 1 if setup == 'plain' else 3
            shares.append(f"{100 * calls * extra / medians[setup, 'L1Loss']:+16.1f}%")
        print(f'{loss:<8} {loss_medians[loss] * 1e3:8.2f} ' + ' '.join(shares))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', choices=['cpu', 'cuda', 'all'], default='all',
                        help='cpu, cuda, or all (CPU, then CUDA when present). Default: all')
    parser.add_argument('--batch', type=int, help='batch size (default: 4 on CPU, 16 on CUDA)')
    parser.add_argument('--gt-size', type=int, help='GT patch size (default: 64 on CPU, 128 on CUDA)')
    parser.add_argument('--scale', type=int, default=4, choices=[2, 3, 4])
    parser.add_argument('--threads', type=int, help='torch.set_num_threads for the CPU (default: torch default)')
    parser.add_argument('--repeat', type=int, default=10, help='timed rounds. Default: 10')
    parser.add_argument('--warmup', type=int, default=2, help='untimed rounds first. Default: 2')
    parser.add_argument('--prior', help='BDLoss GMM prior (default: fitted on tests/fixtures/hr)')
    parser.add_argument('--no-distill', action='store_true', help='leave out the sandwich+distill setup')
    parser.add_argument('--print-freq', type=int, default=10,
                        help='steps per log read in the log-reading table (0: leave it out). Default: 10')
    args = parser.parse_args(argv)
    if args.print_freq < 0:
        parser.error(f'--print-freq must be >= 0, got {args.print_freq}')
    for name in ('batch', 'gt_size', 'repeat', 'threads'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.gt_size is not None and args.gt_size % args.scale:
        parser.error(f'--gt-size must be a multiple of --scale {args.scale}, got {args.gt_size}')
    if args.prior is not None and not osp.isfile(args.prior):
        parser.error(f"--prior '{args.prior}' does not exist")
    if args.threads:
        torch.set_num_threads(args.threads)
    get_root_logger(log_level=logging.WARNING)

    devices = ['cpu', 'cuda'] if args.device == 'all' else [args.device]
    if 'cuda' in devices and not torch.cuda.is_available():
        print('CUDA is not available (no GPU or a CPU-only torch): timing the CPU only.', file=sys.stderr)
        devices = ['cpu']
    setups = ['plain', 'sandwich'] + ([] if args.no_distill else ['sandwich+distill'])

    with tempfile.TemporaryDirectory() as tmp:
        prior_path = args.prior
        if prior_path is None:
            prior_path = osp.join(tmp, f'prior_x{args.scale}.pth')
            save_gmm_prior(fit_gmm_prior(FIXTURES_HR, args.scale), prior_path)
        for device in devices:
            batch = args.batch or DEFAULT_SIZES[device][0]
            gt_size = args.gt_size or DEFAULT_SIZES[device][1]
            data = synthetic_batch(device, batch, gt_size, args.scale)
            medians, loss_medians = time_steps(setups, device, data, args.scale, args.repeat, args.warmup, prior_path)
            print_table(medians, loss_medians, setups, device, batch, gt_size, args.scale, args.repeat)
            if args.print_freq:
                read_medians, policies = time_log_reads(setups, device, data, args.scale, args.repeat, args.warmup,
                                                        prior_path, args.print_freq)
                print_log_reads(read_medians, policies, setups, args.print_freq, args.repeat)


if __name__ == '__main__':
    main()
