"""The subnets a dynamic-inference engine runs: stand-alone copies of their weights, and batch sizes.

Each subnet runs through a stand-alone copy of its weights (``extract_subnet``: contiguous tensors
run at the speed their FLOPs promise), made on first use and kept until a parameter of the supernet
changes (training updates it between validations). On CUDA a subnet can replay as CUDA graphs, and
batches can be padded to a few bucket sizes (:mod:`.cuda_graphs`).
"""
import torch

from wbsr_plugin.archs.channels_last import to_channels_last
from wbsr_plugin.archs.supernet_util import padded_width
from wbsr_runtime.engine import DEFAULT_MAX_BATCH_PIXELS

from .cuda_graphs import GraphCache, bucket_floor, padded_forward

# CUDA batch sizing: bytes per patch ~ factor x width x (patch x scale)^2 x element size, within a share of the
# memory the device and the allocator's cache have available, and at most a cap (several processes may share the GPU;
# a GPU is busy long before one call takes gigabytes)
CUDA_ACTIVATION_FACTOR = 6
CUDA_MEMORY_SHARE = 0.5
CUDA_MAX_BATCH_BYTES = 4 * 2**30


def available_cuda_memory(device):
    """Bytes a forward on CUDA ``device`` may take now: the driver's free memory and what the allocator holds unused
    (its reusable cache)."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


class SubnetCache:
    """Extracted subnets of a supernet, their CUDA graphs, FLOPs and batch sizes.

    Args:
        net (SupernetMixin): The supernet.
        channels_last (bool): Keep the extracted subnets in channels-last memory format.
        cuda_graphs (bool): On CUDA, run each subnet through CUDA graphs.
        max_batch_pixels (int | None): LR pixels per forward call; None: 32768 on CPU, on CUDA sized
            from the available memory.
        pad_batches (bool): Pad eager batches to bucket sizes (graphs always are). Default: False.
        pad_widths (int | None): Zero-pad the subnets' widths to a multiple of this. Default: None.
        compiler (CompiledSubnets | None): Runs the subnets in another runtime or precision
            (:mod:`.runtimes`); None: torch fp32. Default: None.
    """

    def __init__(self, net, *, channels_last, cuda_graphs, max_batch_pixels, pad_batches=False, pad_widths=None,
                 compiler=None):
        self.net = net
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs
        self.max_batch_pixels = max_batch_pixels
        self.pad_batches = pad_batches
        self.pad_widths = pad_widths
        self.modules = {}
        self.graphs = GraphCache()
        self.cuda_batch = {}
        self.fingerprint = None
        self.holders = None  # the supernet's modules that hold parameters, listed once (walking RCAN's takes 2 ms)
        self.flops_cache = {}
        self.elements_cache = {}
        self.compiler = compiler
        self.compiled = {}

    def refresh(self):
        """Forget the extracted subnets (they are rebuilt from the supernet on next use), and list the supernet's
        modules again (needed after a module of it was replaced)."""
        self.modules.clear()
        self.compiled.clear()
        self.graphs.clear()
        self.fingerprint = None
        self.holders = None

    def _weights_fingerprint(self):
        """Where every parameter lives and how often it was written in place (a move, a cast or a new parameter
        changes where it lives). RCAN: 0.3 ms, against 2.5 ms when the module tree is walked every time."""
        if self.holders is None:
            self.holders = [m for m in self.net.modules() if m._parameters]
        return tuple((p.data_ptr(), p._version) for m in self.holders for p in m._parameters.values()
                     if p is not None)

    def drop_stale(self):
        """Forget the extracted subnets if a parameter of the supernet changed since they were made."""
        fingerprint = self._weights_fingerprint()
        if fingerprint != self.fingerprint:
            self.refresh()
            self.fingerprint = fingerprint

    def module(self, index):
        """The stand-alone network of subnet ``index`` (cached; see :meth:`drop_stale`)."""
        if index not in self.modules:
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, also inside inference mode
                module = self.net.extract_subnet(index, width_multiple=self.pad_widths)
                if self.channels_last:
                    module = to_channels_last(module)
            for p in module.parameters():
                p.requires_grad_(False)
            self.modules[index] = module
        return self.modules[index]

    def runner(self, index):
        """What runs subnet ``index`` on a batch: its module, the module on batches padded to a bucket, or its CUDA
        graphs (whose output the next call overwrites), or its compiled model in another runtime (float32 in and
        out, on the CPU)."""
        if self.compiler is not None:
            if index not in self.compiled:
                if self.compiler.runtime.name == 'torch':  # bf16 autocast around the engine's own module
                    self.compiled[index] = self.compiler.compile(self.module(index))
                else:
                    with torch.inference_mode(False), torch.no_grad():
                        plain = self.net.extract_subnet(index, width_multiple=self.pad_widths)
                    self.compiled[index] = self.compiler.compile(plain, self.net.conv_first.in_channels)
            return self.compiled[index]
        module = self.module(index)
        if self.cuda_graphs and next(module.parameters()).device.type == 'cuda':
            return lambda batch: self.graphs.run(index, module, batch)
        if self.pad_batches:
            return lambda batch: padded_forward(module, batch)
        return module

    @property
    def runs_torch(self):
        """True when the subnets run as torch modules (in channels-last when asked), False in another runtime."""
        return self.compiler is None or self.compiler.runtime.name == 'torch'

    def elements_per_pixel(self, index):
        """Elements per LR pixel of the largest tensor subnet ``index`` makes (its widest output, at its resolution;
        padded widths included)."""
        if index not in self.elements_cache:  # RCAN's conv plan lists about 400 convolutions: once per subnet
            spec = self.net.subnets[index]
            uses = self.net.conv_plan(spec.width, spec.depth)
            largest = max(use.out_ch * use.resolution**2 for use in uses if use.resolution)
            self.elements_cache[index] = -(-largest * padded_width(spec.width, self.pad_widths) // spec.width)
        return self.elements_cache[index]

    def flops(self, h, w, subnet):
        """FLOPs of subnet ``subnet`` on an h x w LR input (cached)."""
        key = (h, w, subnet)
        if key not in self.flops_cache:
            self.flops_cache[key] = self.net.flops(h, w, subnet=subnet)
        return self.flops_cache[key]

    def batch_size(self, index, patch, param):
        """Patches of ``patch`` x ``patch`` LR pixels per forward call of subnet ``index``."""
        if self.max_batch_pixels is not None:
            return max(1, self.max_batch_pixels // (patch * patch))
        if param.device.type != 'cuda':
            return max(1, DEFAULT_MAX_BATCH_PIXELS // (patch * patch))
        key = (index, patch, param.dtype, param.device)
        if key not in self.cuda_batch:  # sized once, so batch shapes (and CUDA graphs) stay the same
            allowed = min(int(available_cuda_memory(param.device) * CUDA_MEMORY_SHARE), CUDA_MAX_BATCH_BYTES)
            # the largest activations live at the output resolution: a few tensors of width x (p s)^2
            width = max(self.net.subnets[index].width, 3)
            per_patch = CUDA_ACTIVATION_FACTOR * width * (patch * self.net.upscale)**2 * param.element_size()
            self.cuda_batch[key] = bucket_floor(allowed // per_patch)  # a bucket: full chunks need no padding
        return self.cuda_batch[key]
