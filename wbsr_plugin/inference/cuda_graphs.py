"""Batch buckets, and CUDA graphs of subnet forwards: one launch per call instead of one per layer.

A subnet's forward on a GPU issues a kernel per layer (RCAN x4: about 2,200), so with a few small batches the time
goes to launching, not computing. A captured graph replays all of them at once. Graphs need fixed shapes, and each new
eager shape costs cuDNN a new configuration (with ``cudnn.benchmark``, a benchmark): batches are padded up to a
bucket, one of :data:`BUCKETS_PER_OCTAVE` sizes per power of two (at most 1/8 wasted; 144 patches run as 144).
"""
from collections import OrderedDict, namedtuple

import torch

BUCKETS_PER_OCTAVE = 8
MAX_GRAPHS = 64  # graphs kept per engine (all subnets together); the least recently used goes first

Captured = namedtuple('Captured', ['graph', 'static_in', 'static_out'])


def _step(count):
    """Spacing of the buckets around ``count``: 1 up to 2 x BUCKETS_PER_OCTAVE, then a power of two."""
    return max(1, 1 << max(0, count.bit_length() - 1 - BUCKETS_PER_OCTAVE.bit_length() + 1))


def batch_bucket(count):
    """The smallest bucket >= ``count`` (>= 1): every size up to 16, then 18, 20, ..., 32, 36, ..., 64, 72, ..."""
    step = _step(count)
    return -(-count // step) * step


def bucket_floor(count):
    """The largest bucket <= ``count`` (>= 1)."""
    return max(1, count // _step(count) * _step(count))


def memory_format_of(batch):
    """channels_last for a channels-last batch (that is not also contiguous), else contiguous_format."""
    channels_last = batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def padded_forward(module, batch):
    """``module`` on ``batch`` padded with zeros to its bucket; the outputs of ``batch``'s rows."""
    count = batch.shape[0]
    bucket = batch_bucket(count)
    if bucket == count:
        return module(batch)
    padded = batch.new_zeros((bucket, *batch.shape[1:])).contiguous(memory_format=memory_format_of(batch))
    padded[:count] = batch
    return module(padded)[:count]


class GraphCache:
    """CUDA graphs of the subnets of one engine, keyed by subnet, bucket, shape and dtype; at most ``max_graphs``.

    All graphs share one memory pool (the subnets run one after another). A capture runs on a side stream of the
    network's device (the current device's stream would record nothing of a network on another device) and, unlike
    ``torch.cuda.graph``, neither synchronises the device nor empties the allocator's cache. Captures are
    thread-local, so other threads (``infer``'s readers and writers) may use the device meanwhile.

    Args:
        max_graphs (int): Graphs kept; the least recently used is dropped first. Default: :data:`MAX_GRAPHS`.
    """

    def __init__(self, max_graphs=MAX_GRAPHS):
        self.max_graphs = max_graphs
        self.graphs = OrderedDict()
        self.pool = None
        self.streams = {}

    def __len__(self):
        return len(self.graphs)

    def clear(self):
        """Drop every graph (the subnets changed)."""
        self.graphs.clear()
        self.pool = None

    def run(self, index, module, batch):
        """Subnet ``index`` (its stand-alone ``module``, eval mode, on a CUDA device) on ``batch``, through the graph
        of ``batch``'s bucket (captured on first use). The output is a view that the next replay overwrites: the
        caller copies it at once."""
        count = batch.shape[0]
        bucket = batch_bucket(count)
        memory_format = memory_format_of(batch)
        key = (index, bucket, tuple(batch.shape[1:]), batch.dtype, batch.device, memory_format)
        if key not in self.graphs:
            while len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)
            self.graphs[key] = self._capture(module, (bucket, *batch.shape[1:]), batch.dtype, batch.device,
                                             memory_format)
        self.graphs.move_to_end(key)
        captured = self.graphs[key]
        with torch.cuda.device(batch.device):
            captured.static_in[:count].copy_(batch)
            captured.graph.replay()
        return captured.static_out[:count]

    def _capture(self, module, shape, dtype, device, memory_format):
        with torch.cuda.device(device):
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            if device not in self.streams:
                self.streams[device] = torch.cuda.Stream(device)
            side, current = self.streams[device], torch.cuda.current_stream(device)
            static_in = torch.zeros(shape, dtype=dtype, device=device).contiguous(memory_format=memory_format)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up outside the graph (lazy initialisation, algorithm choice)
                    module(static_in)
                graph = torch.cuda.CUDAGraph()
                graph.capture_begin(self.pool, capture_error_mode='thread_local')
                try:
                    static_out = module(static_in)
                finally:
                    graph.capture_end()
            current.wait_stream(side)
        return Captured(graph, static_in, static_out)
