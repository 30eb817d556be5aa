"""Sharing a folder of images between the processes of a ``torchrun`` launch.

Under ``torchrun --nproc_per_node=N`` every process (rank) reads ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``; without them there is one process and nothing changes.

* Device: with ``auto``, each rank takes its own GPU (``cuda:LOCAL_RANK``) when the node has at
  least one GPU per local rank, otherwise every rank runs on the CPU. ``cuda`` asks for GPUs even
  when there are fewer than ranks (ranks then share them round-robin).
* CPU threads: CPU ranks on one node split its cores (``cores // LOCAL_WORLD_SIZE`` each) unless
  ``OMP_NUM_THREADS`` is set to more than 1. torchrun sets ``OMP_NUM_THREADS=1`` for every worker
  when the variable is unset, so 1 cannot be told apart from torchrun's default and is not obeyed.
* Files: rank 0 lists the work once (after dropping finished outputs) and broadcasts it, so all
  ranks agree even if the folder changes meanwhile. Files are shared by pixel count, largest first,
  each to the rank with the least work so far (ties: fewer files, then lower rank); images of
  equal size are thus dealt round-robin, and mixed sizes still finish together. Each rank runs its
  files in name order.
* Collectives use gloo on CPU tensors, also when ranks run on GPUs: they carry a few numbers once
  at the start and once at the end, gloo needs no GPU memory, and a rank that dies closes its
  connections so the others stop at once instead of waiting.
"""
import heapq
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from wbsr_runtime.cost_table import usable_cpus as available_cpus

# How long a finished rank waits for the slowest one at the end (shares are balanced, so the
# wait is the last few images; a rank that dies ends the wait at once).
DEFAULT_TIMEOUT = timedelta(hours=24)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a launch.

    Attributes:
        rank (int): Global rank. Default: 0.
        world_size (int): Number of processes. Default: 1.
        local_rank (int): Rank on this node. Default: 0.
        local_world_size (int): Processes on this node. Default: 1.
    """
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0


def _env_int(env, key, default_key=None):
    text = env.get(key, env.get(default_key) if default_key else None)
    if text is None:
        raise ValueError(f'{key} is not set (WORLD_SIZE is); launch with torchrun or set both.')
    try:
        return int(text)
    except ValueError:
        raise ValueError(f'{key} must be an integer, got {text!r}.') from None


def dist_context_from_env(env=None):
    """Read the launch from torchrun's environment variables.

    Args:
        env (Mapping[str, str] | None): Environment. Default: ``os.environ``.

    Returns:
        DistContext: One process when ``WORLD_SIZE`` is unset. ``LOCAL_RANK`` and
        ``LOCAL_WORLD_SIZE`` default to ``RANK`` and ``WORLD_SIZE`` (one node).
    """
    env = os.environ if env is None else env
    if 'WORLD_SIZE' not in env:
        return DistContext()
    ctx = DistContext(
        rank=_env_int(env, 'RANK'),
        world_size=_env_int(env, 'WORLD_SIZE'),
        local_rank=_env_int(env, 'LOCAL_RANK', 'RANK'),
        local_world_size=_env_int(env, 'LOCAL_WORLD_SIZE', 'WORLD_SIZE'))
    if not (0 <= ctx.rank < ctx.world_size and 0 <= ctx.local_rank < ctx.local_world_size <= ctx.world_size):
        raise ValueError(f'inconsistent launch: RANK={ctx.rank}, WORLD_SIZE={ctx.world_size}, '
                         f'LOCAL_RANK={ctx.local_rank}, LOCAL_WORLD_SIZE={ctx.local_world_size}.')
    return ctx


def rank_device(name, ctx, cuda_count=None):
    """The device of this rank.

    Args:
        name (str): 'auto', 'cpu' or 'cuda'.
        ctx (DistContext): The launch.
        cuda_count (int | None): Visible GPUs. Default: ``torch.cuda.device_count()`` if CUDA works.

    Returns:
        torch.device: With one process, 'cuda' or 'cpu' as asked ('auto': CUDA if available).
        With several, 'auto' gives ``cuda:LOCAL_RANK`` only if there is a GPU per local rank, else
        the CPU; 'cuda' gives ``cuda:(LOCAL_RANK % GPUs)``.
    """
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == 'auto':
        if not ctx.distributed:
            return torch.device('cuda' if cuda_count else 'cpu')
        return torch.device('cuda', ctx.local_rank) if cuda_count >= ctx.local_world_size else torch.device('cpu')
    elif name == 'cuda':
        if not cuda_count:
            raise ValueError("device 'cuda' asked for, but CUDA is not available.")
        return torch.device('cuda', ctx.local_rank % cuda_count) if ctx.distributed else torch.device('cuda')
    elif name == 'cpu':
        return torch.device('cpu')
    else:
        raise ValueError(f"unknown device {name!r}; expected one of ['auto', 'cpu', 'cuda'].")


def cpu_threads_per_rank(ctx, device, env=None, cpus=None):
    """Threads for a CPU rank that shares its node with the other local ranks.

    Args:
        ctx (DistContext): The launch.
        device (torch.device): This rank's device.
        env (Mapping[str, str] | None): Environment. Default: ``os.environ``.
        cpus (int | None): Cores of the node. Default: :func:`available_cpus`.

    Returns:
        int | None: ``max(1, cpus // LOCAL_WORLD_SIZE)``; None (leave torch's setting) for one local
        process, a GPU rank, or ``OMP_NUM_THREADS`` above 1.
    """
    env = os.environ if env is None else env
    if device.type != 'cpu' or ctx.local_world_size < 2 or env.get('OMP_NUM_THREADS', '1').strip() != '1':
        return None
    return max(1, (cpus or available_cpus()) // ctx.local_world_size)


def image_pixels(path):
    """Width x height from the file header (not decoded); 0 if the header cannot be read."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with Image.open(path) as img:
                width, height = img.size
    except Exception:  # any unreadable file: the reader reports it when the rank gets to it
        return 0
    return width * height


def share_files(paths, world_size, weights=None):
    """Deal ``paths`` to ``world_size`` ranks, balancing the total weight.

    Args:
        paths (list[str]): Files, in the order each rank should run them.
        world_size (int): Number of ranks.
        weights (list[float] | None): Work per file (pixels). Default: 1 each (round-robin).

    Returns:
        list[list[str]]: Files of each rank, each file in exactly one list, in the order of ``paths``.
    """
    if world_size < 1:
        raise ValueError(f'world_size must be at least 1, got {world_size}.')
    weights = [1] * len(paths) if weights is None else list(weights)
    if len(weights) != len(paths):
        raise ValueError(f'{len(weights)} weights for {len(paths)} files.')
    loads = [(0, 0, rank) for rank in range(world_size)]
    owner = [0] * len(paths)
    for index in sorted(range(len(paths)), key=lambda i: (-weights[i], i)):
        load, count, rank = heapq.heappop(loads)
        owner[index] = rank
        heapq.heappush(loads, (load + weights[index], count + 1, rank))
    return [[p for p, r in zip(paths, owner) if r == rank] for rank in range(world_size)]


def plan_work(paths, world_size, is_done=None):
    """Drop finished files and share the rest by pixel count (run on rank 0 only).

    Args:
        paths (list[str]): Input files.
        world_size (int): Number of ranks.
        is_done (Callable[[str], bool] | None): True for a file whose output exists. Default: none is.

    Returns:
        tuple[list[list[str]], int]: Files of each rank, and how many were skipped as done.
    """
    todo = [p for p in paths if is_done is None or not is_done(p)]
    weights = [image_pixels(p) for p in todo] if world_size > 1 else None
    return share_files(todo, world_size, weights), len(paths) - len(todo)


@contextmanager
def process_group(ctx, device, timeout=DEFAULT_TIMEOUT):
    """Join the gloo group of a launch with several ranks (nothing for one) and leave it at the end.

    Args:
        ctx (DistContext): The launch.
        device (torch.device): This rank's device (made the current CUDA device).
        timeout (timedelta): Longest wait in a collective. Default: :data:`DEFAULT_TIMEOUT`.
    """
    if not ctx.distributed:
        yield
        return
    if device.type == 'cuda' and device.index is not None:
        torch.cuda.set_device(device)
    dist.init_process_group('gloo', rank=ctx.rank, world_size=ctx.world_size, timeout=timeout)
    try:
        yield
    finally:
        dist.destroy_process_group()


def broadcast_object(obj, ctx):
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj, ctx):
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx):
    """Wait until every rank gets here (nothing for one process)."""
    if ctx.distributed:
        dist.barrier()
