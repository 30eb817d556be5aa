"""Shared machinery of the weight-sharing supernets.

A subnet of width ``w`` and depth ``d`` uses the first ``w`` channels of every
sliced convolution (``weight[:out, :in]``, ``bias[:out]``) and the first ``d``
blocks of every stage. Each architecture describes the convolutions a subnet
uses as a list of :class:`ConvUse`; FLOPs, parameter counts and the extraction
of a stand-alone network all derive from that one list.
"""
from dataclasses import dataclass

import torch
from torch.nn import functional as F

# FLOPs are reported for this LR patch size, the convention of ClassSR, ARM and WBSR.
REFERENCE_LQ_SIZE = 32


@dataclass(frozen=True)
class ConvUse:
    """One convolution as a subnet uses it.

    Attributes:
        name (str): Module path of the convolution in the supernet (its state dict prefix).
        in_ch (int): Input channels used.
        out_ch (int): Output channels used.
        kernel (int): Kernel size.
        resolution (int): Spatial size relative to the LR input (1, 2, 4, ...); 0 for a
            convolution applied after global pooling (one pixel per image).
    """
    name: str
    in_ch: int
    out_ch: int
    kernel: int
    resolution: int

    def flops(self, lq_h, lq_w):
        pixels = 1 if self.resolution == 0 else (lq_h * self.resolution) * (lq_w * self.resolution)
        return 2 * self.in_ch * self.out_ch * self.kernel * self.kernel * pixels

    @property
    def params(self):
        return self.in_ch * self.out_ch * self.kernel * self.kernel + self.out_ch


@dataclass(frozen=True)
class Subnet:
    """A subnet of a supernet.

    Attributes:
        index (int): Position in the cost order, 0 is the cheapest.
        width (int): Channels used in every sliced convolution.
        depth (int): Blocks used per stage.
        flops (int): FLOPs (2 x multiply-accumulates) on a 32x32 LR patch.
        params (int): Parameters the subnet uses.
    """
    index: int
    width: int
    depth: int
    flops: int
    params: int

    @property
    def name(self):
        """``'w{width}d{depth}'``, as reports, maps and exported files call it."""
        return f'w{self.width}d{self.depth}'


def conv2d_sliced(conv, x, in_ch=None, out_ch=None):
    """Run ``conv`` on the first ``in_ch`` input and ``out_ch`` output channels."""
    out_ch = conv.out_channels if out_ch is None else out_ch
    in_ch = conv.in_channels if in_ch is None else in_ch
    bias = None if conv.bias is None else conv.bias[:out_ch]
    return F.conv2d(x, conv.weight[:out_ch, :in_ch], bias, conv.stride, conv.padding)


def reject_unknown_options(arch_name, unknown, allowed):
    if unknown:
        raise ValueError(f'{arch_name}: unknown option(s) {sorted(unknown)}; allowed options are {sorted(allowed)}.')


def check_choices(arch_name, option, values, maximum, minimum=1, max_option=None):
    """Validate a list of widths or depths: ascending, within bounds, ending at the full size."""
    values = list(values)
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f'{arch_name}: {option} must be a non-empty list of integers, got {values}.')
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f'{arch_name}: {option} must be strictly ascending, got {values}.')
    if values[0] < minimum or values[-1] != maximum:
        raise ValueError(f'{arch_name}: {option} must lie in [{minimum}, {maximum}] and end with {max_option} '
                         f'= {maximum} (the largest subnet is the full network), got {values}.')
    return values


class SupernetMixin:
    """Subnet bookkeeping shared by the supernet architectures.

    Subclasses set ``self.widths``, ``self.depths``, ``self.num_feat`` and the
    depth of the full network, and implement ``conv_plan(width, depth)`` and
    ``_forward(x, width, depth)`` and ``plain_network(width, depth)``.
    """

    def _init_subnets(self):
        specs = []
        for width in self.widths:
            for depth in self.depths:
                plan = self.conv_plan(width, depth)
                flops = sum(c.flops(REFERENCE_LQ_SIZE, REFERENCE_LQ_SIZE) for c in plan)
                specs.append((flops, width, depth, sum(c.params for c in plan)))
        specs.sort()
        self.subnets = [Subnet(i, w, d, f, p) for i, (f, w, d, p) in enumerate(specs)]

    @property
    def full_subnet(self):
        """The largest subnet: the plain network."""
        return self.subnets[-1]

    def get_subnet(self, subnet=None):
        """Resolve ``None`` (full network), an index in cost order or a :class:`Subnet`."""
        if subnet is None:
            return self.full_subnet
        if isinstance(subnet, Subnet):
            if subnet not in self.subnets:
                raise ValueError(f'{subnet} is not a subnet of this {type(self).__name__}.')
            return subnet
        if isinstance(subnet, int) and not isinstance(subnet, bool) and -len(self.subnets) <= subnet < len(
                self.subnets):
            return self.subnets[subnet]
        raise ValueError(f'subnet must be None, a Subnet or an index in [0, {len(self.subnets) - 1}], got {subnet!r}.')

    def forward(self, x, subnet=None):
        """Run a batch through one subnet.

        Args:
            x (Tensor): LR batch of shape (n, c, h, w).
            subnet (int | Subnet | None): Index in cost order (0 is the cheapest), a
                :class:`Subnet`, or None for the full network. Default: None.
        """
        spec = self.get_subnet(subnet)
        return self._forward(x, spec.width, spec.depth)

    def flops(self, lq_h=REFERENCE_LQ_SIZE, lq_w=None, subnet=None):
        """FLOPs (2 x multiply-accumulates of every convolution) for one LR image."""
        spec = self.get_subnet(subnet)
        lq_w = lq_h if lq_w is None else lq_w
        return sum(c.flops(lq_h, lq_w) for c in self.conv_plan(spec.width, spec.depth))

    @torch.no_grad()
    def extract_subnet(self, subnet):
        """A stand-alone BasicSR network with contiguous copies of a subnet's weights."""
        spec = self.get_subnet(subnet)
        net = self.plain_network(spec.width, spec.depth)
        modules = dict(self.named_modules())
        state = {}
        for use in self.conv_plan(spec.width, spec.depth):
            conv = modules[use.name]
            state[f'{use.name}.weight'] = conv.weight[:use.out_ch, :use.in_ch].clone()
            state[f'{use.name}.bias'] = conv.bias[:use.out_ch].clone()
        net.load_state_dict(state, strict=True)
        reference = next(self.parameters())
        return net.to(device=reference.device, dtype=reference.dtype).eval()

    def subnet_table(self, lq_size=REFERENCE_LQ_SIZE):
        """Rows (index, width, depth, params, GFLOPs, % of full) for ``lq_size`` x ``lq_size`` LR input."""
        full = self.flops(lq_size)
        rows = []
        for spec in self.subnets:
            gflops = self.flops(lq_size, subnet=spec)
            rows.append((spec.index, spec.width, spec.depth, spec.params, gflops / 1e9, 100 * gflops / full))
        return rows


def leaky_relu(x):
    return F.leaky_relu(x, negative_slope=0.1)
