"""CUDA graphs of subnet forwards: one launch per call instead of one per layer.

A subnet's forward on a GPU issues a kernel per layer (RCAN x4: about 2,200), so with a few small
batches the time goes to launching, not computing. A captured graph replays all of them at once.
Graphs need fixed shapes: batch sizes are rounded up to a power of two (at most the chunk size), and
one graph is kept per (patch side, batch bucket, dtype), sharing one memory pool.
"""
from collections import OrderedDict

import torch

MAX_GRAPHS = 64


def batch_bucket(count, limit):
    """The power of two at or above ``count``, at most ``limit``."""
    return min(1 << max(0, count - 1).bit_length(), limit)


class GraphedSubnet:
    """Runs ``module`` through CUDA graphs captured on first use of each input shape.

    Args:
        module (nn.Module): A stand-alone subnet in eval mode on a CUDA device.
        pool: A CUDA graph memory pool shared with the other subnets of the engine
            (``torch.cuda.graph_pool_handle()``); the subnets run one after another.
        limit (int): Largest batch a call may bring (the engine's chunk).
    """

    def __init__(self, module, pool, limit):
        self.module = module
        self.pool = pool
        self.limit = limit
        self.graphs = OrderedDict()

    def _capture(self, shape, dtype, device, memory_format):
        """Capture on ``device``'s streams: a capture on another device's stream records nothing of the module."""
        with torch.cuda.device(device):
            return self._capture_on_current_device(shape, dtype, device, memory_format)

    def _capture_on_current_device(self, shape, dtype, device, memory_format):
        static_in = torch.zeros(shape, dtype=dtype, device=device).contiguous(memory_format=memory_format)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside the graph (lazy initialisation, algorithm choice)
                self.module(static_in)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.module(static_in)
        return graph, static_in, static_out

    def __call__(self, batch):
        count = batch.shape[0]
        bucket = max(count, batch_bucket(count, self.limit))
        key = (bucket, tuple(batch.shape[1:]), batch.dtype)
        if key not in self.graphs:
            if len(self.graphs) >= MAX_GRAPHS:
                self.graphs.popitem(last=False)
            memory_format = (torch.channels_last
                             if batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()
                             else torch.contiguous_format)
            self.graphs[key] = self._capture((bucket, *batch.shape[1:]), batch.dtype, batch.device, memory_format)
        self.graphs.move_to_end(key)
        graph, static_in, static_out = self.graphs[key]
        static_in[:count].copy_(batch)
        with torch.cuda.device(batch.device):  # replay on the stream the copy was queued on
            graph.replay()
        return static_out[:count]  # overwritten by the next replay: the caller copies it at once
