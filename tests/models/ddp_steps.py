"""A few training steps of DynamicSRModel on fixed global batches, split over the ranks.

Run by ``torchrun --nproc_per_node=N tests/models/ddp_steps.py OPTIONS.yml OUT_DIR`` (each rank writes
``OUT_DIR/rank<r>.pth``), or imported and called with one process (:func:`train`).
"""
import sys

import torch
import yaml

import wbsr_plugin  # noqa: F401

from basicsr.models import build_model
from basicsr.utils.dist_util import get_dist_info, init_dist

GLOBAL_BATCH = 4
NUM_STEPS = 3


def global_batches(num_steps=NUM_STEPS, scale=4, size=8):
    generator = torch.Generator().manual_seed(123)
    return [(torch.rand(GLOBAL_BATCH, 3, size, size, generator=generator),
             torch.rand(GLOBAL_BATCH, 3, size * scale, size * scale, generator=generator)) for _ in range(num_steps)]


def train(opt, rank=0, world_size=1):
    """The supernet's weights after :data:`NUM_STEPS` steps, this rank training on its share of each batch."""
    torch.manual_seed(opt['manual_seed'])
    model = build_model(opt)
    share = GLOBAL_BATCH // world_size
    for step, (lq, gt) in enumerate(global_batches(scale=opt['scale']), 1):
        model.feed_data({'lq': lq[rank * share:(rank + 1) * share], 'gt': gt[rank * share:(rank + 1) * share]})
        model.optimize_parameters(step)
    return model.get_bare_model(model.net_g).state_dict()


if __name__ == '__main__':
    options_path, out_dir = sys.argv[1:3]
    init_dist('pytorch', backend='gloo')
    rank, world_size = get_dist_info()
    with open(options_path) as f:
        options = yaml.safe_load(f)
    options.update(dist=True, rank=rank, world_size=world_size)
    torch.save(train(options, rank, world_size), f'{out_dir}/rank{rank}.pth')
    # leave the process group before exit: gloo's threads torn down by the interpreter can abort the rank
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
