"""Shared machinery of the weight-sharing supernets.

A subnet of width ``w`` and depth ``d`` uses the first ``w`` channels of every
sliced convolution (``weight[:out, :in]``, ``bias[:out]``) and the first ``d``
blocks of every stage. Each architecture describes the convolutions a subnet
uses as a list of :class:`ConvUse`; FLOPs, parameter counts and the extraction
of a stand-alone network all derive from that one list.

Every supernet also says everything else about itself (its plain BasicSR counterpart,
its options, how to recognise itself from a state dict), so that checkpoints, export,
model cards, evaluation and the reproduction ask ``ARCH_REGISTRY`` through the functions
at the end of this module and never name an architecture.
"""
import copy
import functools
import re
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from basicsr.utils.registry import ARCH_REGISTRY

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


def padded_width(width, multiple=None):
    """``width`` rounded up to a multiple of ``multiple`` (None: ``width`` itself)."""
    return width if multiple is None else -(-width // multiple) * multiple


def conv2d_sliced(conv, x, in_ch=None, out_ch=None):
    """Run ``conv`` on the first ``in_ch`` input and ``out_ch`` output channels."""
    out_ch = conv.out_channels if out_ch is None else out_ch
    in_ch = conv.in_channels if in_ch is None else in_ch
    bias = None if conv.bias is None else conv.bias[:out_ch]
    return F.conv2d(x, conv.weight[:out_ch, :in_ch], bias, conv.stride, conv.padding)


def count_indexed(keys, pattern):
    """1 + the largest index that ``pattern``'s group matches among ``keys`` (0 when none matches)."""
    found = {int(m.group(1)) for m in (re.match(pattern, k) for k in keys) if m}
    return max(found) + 1 if found else 0


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
    """Subnet bookkeeping shared by the supernet architectures, and what each says about itself.

    Subclasses take keyword-only constructor options (defaults: the paper's network), keep each
    option of ``OPTIONS`` as an attribute of the same name, call ``self._init_subnets()``, and
    implement ``conv_plan(width, depth)``, ``_forward(x, width, depth)`` and the classmethod
    ``shape_options(state)``.

    Attributes:
        PLAIN_TYPE (str): BasicSR's registry name of the plain network; it takes every option
            but ``widths`` and ``depths``, a subnet's width and depth being its ``num_feat`` and
            ``num_block``.
        LABEL (str): The network's usual name in tables and reports (``'SRResNet'``).
        OPTIONS (tuple[str]): Constructor options (besides ``widths`` and ``depths``).
        CARD_OPTIONS (tuple[str]): Options a model card shows beside the size, widths and depths.
        SPANDREL_LAYOUT (callable | None): ``(plain state dict, plain options) -> state dict`` in the layout
            spandrel recognises for the plain network, or None when spandrel has no such architecture.
    """
    PLAIN_TYPE = None
    LABEL = None
    OPTIONS = ()
    CARD_OPTIONS = ()
    SPANDREL_LAYOUT = None

    @classmethod
    def default_options(cls):
        """The options of the network the constructor builds by default (the paper's), ``type`` aside."""
        return copy.deepcopy(_built_default_options(cls))

    @classmethod
    def default_choices(cls, num_feat, num_block):
        """Widths and depths of a network of this size when none are given: the defaults for the
        default size, None (unknown) for any other."""
        defaults = cls.default_options()
        if (num_feat, num_block) == (defaults['num_feat'], defaults['num_block']):
            return defaults['widths'], defaults['depths']
        return None

    @classmethod
    def shape_options(cls, state):
        """Options read from the tensor shapes of a state dict of this architecture (or of its plain
        network): ``num_feat``, ``num_block``, ``upscale`` and whatever else the shapes fix; None when
        ``state`` is not of this architecture."""
        raise NotImplementedError

    def _keep_options(self, arguments):
        """Refuse unknown options and keep each option of ``OPTIONS`` as an attribute (sequences as tuples).

        Args:
            arguments (dict): The constructor's ``locals()`` (its options, ``unknown`` holding the rest).

        Returns:
            str: The class name, for error messages.
        """
        name = type(self).__name__
        reject_unknown_options(name, arguments.get('unknown', {}), self.OPTIONS + ('widths', 'depths'))
        for key in self.OPTIONS:
            value = arguments[key]
            setattr(self, key, tuple(value) if isinstance(value, (list, tuple)) else value)
        return name

    def network_options(self):
        """``build_network`` options that rebuild this supernet."""
        opt = {'type': type(self).__name__}
        for key in self.OPTIONS + ('widths', 'depths'):
            value = getattr(self, key)
            opt[key] = list(value) if isinstance(value, (tuple, list)) else value
        return opt

    def plain_network_options(self, width, depth):
        """``build_network`` options of the plain BasicSR network that subnet (width, depth) is."""
        opt = {key: value for key, value in self.network_options().items() if key not in ('widths', 'depths')}
        return {**opt, 'type': self.PLAIN_TYPE, 'num_feat': width, 'num_block': depth}

    def plain_network(self, width, depth):
        """The plain BasicSR network of subnet (width, depth), freshly initialised."""
        opt = self.plain_network_options(width, depth)
        return ARCH_REGISTRY.get(opt.pop('type'))(**opt)

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
    def extract_subnet(self, subnet, width_multiple=None):
        """A stand-alone BasicSR network with contiguous copies of a subnet's weights.

        Args:
            subnet (int | Subnet | tuple): The subnet (see :meth:`get_subnet`).
            width_multiple (int | None): Zero-pad the width to a multiple of this (hardware-friendly channel
                counts): the extra channels get zero weights and biases, so they stay zero and the output is the
                same up to rounding. Default: None (the subnet's own width).
        """
        spec = self.get_subnet(subnet)
        net = self.plain_network(padded_width(spec.width, width_multiple), spec.depth)
        shapes = {key: value.shape for key, value in net.state_dict().items()}
        modules = dict(self.named_modules())
        state = {}
        for use in self.conv_plan(spec.width, spec.depth):
            conv = modules[use.name]
            used = {'weight': conv.weight[:use.out_ch, :use.in_ch], 'bias': conv.bias[:use.out_ch]}
            for kind, value in used.items():
                key = f'{use.name}.{kind}'
                state[key] = value.detach().new_zeros(shapes[key])  # the leading slices hold the subnet's weights
                state[key][tuple(slice(0, n) for n in value.shape)] = value.detach()
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


def check_upscale_power_of_two_or_three(arch_name, upscale):
    """The upscale factors BasicSR's ``Upsample`` supports: 3 and powers of 2."""
    if not isinstance(upscale, int) or upscale < 2 or (upscale & (upscale - 1) and upscale != 3):
        raise ValueError(f'{arch_name}: upscale must be 3 or a power of 2 (2, 4, 8), got {upscale!r}.')


def residual_blocks_sliced(blocks, x, width):
    """BasicSR ``ResidualBlockNoBN`` blocks (conv, ReLU, conv, scaled residual) at ``width`` channels."""
    for block in blocks:
        res = conv2d_sliced(block.conv2, F.relu(conv2d_sliced(block.conv1, x, width, width)), width, width)
        x = x + res * block.res_scale
    return x


def upsample_plan(upsample, num_feat, width, prefix='upsample'):
    """:class:`ConvUse` of BasicSR's ``Upsample`` at ``width`` channels, and the resolution after it."""
    plan, resolution = [], 1
    for i, module in enumerate(upsample):
        if isinstance(module, nn.Conv2d):
            plan.append(ConvUse(f'{prefix}.{i}', width, module.out_channels // num_feat * width, 3, resolution))
        else:
            resolution *= module.upscale_factor
    return plan, resolution


def upsample_sliced(upsample, x, num_feat, width):
    """BasicSR's ``Upsample`` (convolutions and pixel shuffles) at ``width`` channels."""
    for module in upsample:
        if isinstance(module, nn.Conv2d):
            x = conv2d_sliced(module, x, width, module.out_channels // num_feat * width)
        else:
            x = module(x)
    return x


def upsample_scale(state, num_feat, prefix='upsample'):
    """The factor of a BasicSR ``Upsample`` from its convolutions' shapes in a state dict."""
    convs = sorted(int(m.group(1)) for m in (re.match(rf'{prefix}\.(\d+)\.weight$', k) for k in state) if m)
    if len(convs) == 1 and state[f'{prefix}.{convs[0]}.weight'].shape[0] == 9 * num_feat:
        return 3
    return 2**len(convs)


@functools.lru_cache(maxsize=None)
def _built_default_options(cls):
    """:meth:`SupernetMixin.default_options`, read once per class from a network built on the meta device."""
    with torch.device('meta'):
        options = cls().network_options()
    del options['type']
    return options


def _supernets():
    """``{registry name: class}`` of every supernet in ``ARCH_REGISTRY``, sorted by name."""
    return dict(sorted((name, obj) for name, obj in ARCH_REGISTRY
                       if isinstance(obj, type) and issubclass(obj, SupernetMixin)))


def supernet_types():
    """Registry names of every supernet in ``ARCH_REGISTRY``, sorted."""
    return tuple(_supernets())


def supernet_class(name):
    """The supernet class registered as ``name``, or None."""
    return _supernets().get(name)


def supernet_for_plain(plain_type):
    """The supernet class whose plain network is ``plain_type`` (``'MSRResNet'``), or None."""
    return next((cls for cls in _supernets().values() if cls.PLAIN_TYPE == plain_type), None)


def supernet_for_label(label):
    """The supernet class whose ``LABEL`` is ``label``, case-insensitively (``'srresnet'``), or None."""
    return next((cls for cls in _supernets().values() if cls.LABEL.lower() == label.lower()), None)


def recognise_state_dict(state):
    """``(supernet class, shape options)`` of the one supernet that recognises ``state``, or (None, None)."""
    for cls in _supernets().values():
        options = cls.shape_options(state)
        if options is not None:
            return cls, options
    return None, None


def plain_flops_counter(network_opt):
    """``flops(lq_h, lq_w)`` of the plain BasicSR network ``network_opt`` (a supernet's counterpart), counted
    through a one-subnet supernet built once on the meta device."""
    opt = dict(network_opt)
    cls = supernet_for_plain(opt.pop('type'))
    if cls is None:
        raise ValueError(f"plain_flops: {network_opt['type']!r} is not the plain network of a supernet; "
                         f'expected one of {sorted(c.PLAIN_TYPE for c in _supernets().values())}.')
    with torch.device('meta'):
        net = cls(**opt, widths=[opt['num_feat']], depths=[opt['num_block']])
    return net.flops


def plain_flops(network_opt, lq_h, lq_w):
    """FLOPs of the plain BasicSR network ``network_opt`` on an LR image (:func:`plain_flops_counter`)."""
    return plain_flops_counter(network_opt)(lq_h, lq_w)
