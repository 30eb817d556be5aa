"""What dynamic inference aims at (:class:`PlanningTarget`) and the default policy of a checkpoint
(:class:`InferencePolicy`).

A planning target is one immutable value, validated once, wherever it comes from: the engine's keyword
arguments, a command line (``infer``, ``curve``, ``bench_inference``) or the ``wbsr.inference`` section of a
BasicSR option file (validation, ``test.py``). Every message is one line that names the option, the same in
every command. The kinds:

* ``eq15``: the paper's Eq. 15, each class to the subnet of its rank (``m = ceil(k M / K)``);
* ``eq16``: Eq. 16 with ``target_gflops`` (C_t) and ``alpha``;
* ``budget``: a share in (0, 1] of the full network's FLOPs on the whole image, met per image;
* ``latency``: a share in (0, 1] of the fastest plain execution's predicted time (plans by time);
* ``quality``: the fastest plan whose expected loss against the full network is at most ``max_loss`` dB;
* ``subnet``: every patch through one subnet (an index in cost order, or a name such as ``w52d8``).

``plan_by`` says what "cheaper" means when plans are compared: ``flops`` (the same plan on every machine) or
``time`` (this device's measured costs, never slower than the plain network; docs/inference.md).

The default policy (:func:`inference_policy`) is what ``infer``, ``curve``, ``test.py`` and validation run
unless told otherwise: a quality target of :data:`DEFAULT_MAX_LOSS` dB when the checkpoint stores class errors,
else Eq. 15; planned by FLOPs; on patches of the size the checkpoint was calibrated on.
"""
import math
from dataclasses import dataclass

from .tile_geometry import DEFAULT_OVERLAP, DEFAULT_PATCH_SIZE

KINDS = ('eq15', 'eq16', 'budget', 'latency', 'quality', 'subnet')
PLAN_BY = ('flops', 'time')
BUDGET_UNITS = ('flops', 'time')
# The default quality target with a checkpoint that stores class errors: the largest target that lost no more
# than Eq. 15 on held-out photos (docs/RESULTS.md, "Quality target against Eq. 15 on held-out photos")
DEFAULT_MAX_LOSS = 0.03
OFF = 'off'
NEEDS_CLASS_ERRORS = ('max_loss (a quality target) needs class errors, and the checkpoint stores none '
                      '(DynamicSRModel measures them when it saves a checkpoint; inference/calibration.py).')


class PlanningTargetError(ValueError):
    """A planning option that is not valid; its message is one line naming the option."""


def _number(name, value, allowed, accept):
    """``value`` (a number, or text from a command line) as a float within ``accept``; else one-line error."""
    if isinstance(value, bool):
        raise PlanningTargetError(f'{name} must be {allowed}, got {value!r}')
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PlanningTargetError(f'{name} must be {allowed}, got {value!r}') from None
    if not (math.isfinite(number) and accept(number)):
        raise PlanningTargetError(f'{name} must be {allowed}, got {value!r}')
    return number


def _choice(name, value, choices):
    if value not in choices:
        raise PlanningTargetError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def parse_budget(value, name='budget'):
    """A share in (0, 1]."""
    return _number(name, value, 'a fraction in (0, 1]', lambda x: 0 < x <= 1)


def parse_max_loss(value, name='max_loss'):
    """A loss in dB >= 0, or ``'off'``."""
    if value == OFF:
        return OFF
    return _number(name, value, "a loss in dB >= 0 or 'off'", lambda x: x >= 0)


def _subnet_key(value):
    """An index in cost order (int or digits; negative counts from the full network) or a name like ``'w52d8'``."""
    if isinstance(value, str) and value.strip().lstrip('-').isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise PlanningTargetError(f'subnet must be an index (0 = cheapest) or a name such as w52d8, got {value!r}')


@dataclass(frozen=True)
class PlanningTarget:
    """What the engine plans for; build it with :meth:`from_options` or the class methods below.

    Attributes:
        kind (str): One of :data:`KINDS`.
        value (float | int | str | None): The budget, the loss in dB, C_t in GFLOPs per 32x32 LR patch, or the
            subnet (an index, or a name until :meth:`bound` to a network); None for ``eq15``.
        alpha (float): alpha of Eq. 16 (``eq16`` only).
        plan_by (str): ``'flops'`` or ``'time'`` (``latency`` always plans by time).
    """
    kind: str = 'eq15'
    value: object = None
    alpha: float = 1.
    plan_by: str = 'flops'

    def __post_init__(self):
        _choice('planning target kind', self.kind, KINDS)
        _choice('plan_by', self.plan_by, PLAN_BY)
        if self.kind == 'latency' and self.plan_by != 'time':
            raise PlanningTargetError('a latency budget (budget_unit time) plans by time: drop plan_by flops')
        if (self.kind == 'eq15') != (self.value is None):
            raise PlanningTargetError(f'a {self.kind} target needs a value' if self.value is None
                                      else f'Eq. 15 takes no value, got {self.value!r}')

    @classmethod
    def eq15(cls, plan_by='flops'):
        return cls('eq15', None, plan_by=plan_by)

    @classmethod
    def flops_budget(cls, budget, plan_by='flops'):
        return cls('budget', parse_budget(budget), plan_by=plan_by)

    @classmethod
    def latency_budget(cls, budget):
        return cls('latency', parse_budget(budget), plan_by='time')

    @classmethod
    def quality(cls, max_loss, plan_by='flops'):
        loss = parse_max_loss(max_loss)
        if loss == OFF:
            raise PlanningTargetError("max_loss 'off' is no quality target (use Eq. 15)")
        return cls('quality', loss, plan_by=plan_by)

    @classmethod
    def eq16(cls, target_gflops, alpha=1., plan_by='flops'):
        gflops = _number('target_gflops', target_gflops, 'a positive number of GFLOPs', lambda x: x > 0)
        return cls('eq16', gflops, _number('alpha', alpha, 'a positive number', lambda x: x > 0), plan_by)

    @classmethod
    def fixed_subnet(cls, subnet, plan_by='flops'):
        return cls('subnet', _subnet_key(subnet), plan_by=plan_by)

    @classmethod
    def from_options(cls, *, budget=None, budget_unit=None, max_loss=None, target_gflops=None, alpha=None,
                     subnet=None, plan_by=None):
        """The target of loose options (a command line, ``wbsr.inference``, the engine's keyword arguments).

        At most one of ``budget``, ``max_loss`` (``'off'`` is none), ``target_gflops`` and ``subnet``.
        ``budget_unit`` ``'time'`` makes ``budget`` a latency budget (and plans by time); ``alpha`` goes with
        ``target_gflops``. Returns None when no target is set (the caller's default policy decides, planning by
        ``plan_by``).

        Raises:
            PlanningTargetError: An invalid value or combination (one line naming the option).
        """
        if budget_unit is not None:
            _choice('budget_unit', budget_unit, BUDGET_UNITS)
        if plan_by is not None:
            _choice('plan_by', plan_by, PLAN_BY)
        if max_loss is not None:
            max_loss = parse_max_loss(max_loss)
        given = [name for name, value in (('budget', budget), ('max_loss', max_loss if max_loss != OFF else None),
                                          ('target_gflops', target_gflops), ('subnet', subnet)) if value is not None]
        if len(given) > 1:
            raise PlanningTargetError(f"set at most one of budget, max_loss, target_gflops and subnet, got "
                                      f"{' and '.join(given)}")
        if budget_unit == 'time' and budget is None:
            raise PlanningTargetError("budget_unit time needs a budget (a share of the plain network's time)")
        if alpha is not None and target_gflops is None:
            raise PlanningTargetError('alpha goes with target_gflops (Eq. 16)')
        if budget_unit == 'time':
            if plan_by == 'flops':
                raise PlanningTargetError('a latency budget (budget_unit time) plans by time: drop plan_by flops')
            return cls.latency_budget(budget)
        by = plan_by or 'flops'
        if budget is not None:
            return cls.flops_budget(budget, by)
        if max_loss == OFF:
            return cls.eq15(by)
        if max_loss is not None:
            return cls.quality(max_loss, by)
        if target_gflops is not None:
            return cls.eq16(target_gflops, 1. if alpha is None else alpha, by)
        if subnet is not None:
            return cls.fixed_subnet(subnet, by)
        return None

    def bound(self, net):
        """This target with its subnet resolved to an index of ``net`` (a name or an index out of range is an
        error naming the subnets)."""
        if self.kind != 'subnet':
            return self
        names = [s.name for s in net.subnets]
        if self.value in names:
            index = names.index(self.value)
        elif isinstance(self.value, int) and -len(names) <= self.value < len(names):
            index = net.subnets[self.value].index
        else:
            raise PlanningTargetError(f"subnet must be an index in [0, {len(names) - 1}] or one of {', '.join(names)}, "
                                      f'got {self.value!r}')
        return PlanningTarget('subnet', index, plan_by=self.plan_by)

    # the engine's view: one attribute per former keyword argument
    @property
    def budget(self):
        """The FLOPs budget, or None."""
        return self.value if self.kind == 'budget' else None

    @property
    def latency(self):
        """The latency budget (a share of the fastest plain execution's time), or None."""
        return self.value if self.kind == 'latency' else None

    @property
    def max_loss(self):
        return self.value if self.kind == 'quality' else None

    @property
    def target_gflops(self):
        return self.value if self.kind == 'eq16' else None

    @property
    def subnet(self):
        return self.value if self.kind == 'subnet' else None

    @property
    def by_time(self):
        return self.plan_by == 'time'

    @property
    def needs_class_errors(self):
        return self.kind == 'quality'

    def __str__(self):
        if self.kind == 'eq15':
            text = 'Eq. 15'
        elif self.kind == 'eq16':
            text = f'Eq. 16 (C_t {self.value:g} GFLOPs, alpha {self.alpha:g})'
        elif self.kind == 'subnet':
            text = f'subnet {self.value}'
        else:
            text = {'budget': 'FLOPs budget {:g}', 'latency': 'latency budget {:g}',
                    'quality': 'quality target {:g} dB'}[self.kind].format(self.value)
        return text + (', planned by time' if self.by_time and self.kind != 'latency' else '')


def default_target(thresholds, plan_by='flops'):
    """The default target of a checkpoint's thresholds: a quality target of :data:`DEFAULT_MAX_LOSS` dB with
    class errors, else Eq. 15."""
    if thresholds is not None and thresholds.class_errors is not None:
        return PlanningTarget.quality(DEFAULT_MAX_LOSS, plan_by)
    return PlanningTarget.eq15(plan_by)


@dataclass(frozen=True)
class InferencePolicy:
    """The target and tiling a run uses: :func:`inference_policy` decides it.

    Attributes:
        target (PlanningTarget): What the plans aim at.
        patch_size (int): Largest LR patch side.
        overlap (int): Least overlap of neighbouring patches in LR pixels.
        defaulted (tuple[str]): The fields the default policy chose (not given by the caller).
    """
    target: PlanningTarget
    patch_size: int = DEFAULT_PATCH_SIZE
    overlap: int = DEFAULT_OVERLAP
    defaulted: tuple = ()

    def engine_options(self):
        """The :class:`~.engine.DynamicInferenceEngine` keyword arguments of this policy."""
        return {'target': self.target, 'patch_size': self.patch_size, 'overlap': self.overlap}

    def __str__(self):
        text = f'{self.target}, patches of {self.patch_size} LR px, overlap {self.overlap}'
        return f"{text} (default: {', '.join(self.defaulted)})" if self.defaulted else text


def _patch_option(name, value, least):
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise PlanningTargetError(f'{name} must be an integer >= {least}, got {value!r}')
    return value


def inference_policy(thresholds, stored_patch_size=None, *, target=None, patch_size=None, overlap=None,
                     plan_by=None):
    """The policy of a run: what is given, and for the rest the default of the checkpoint.

    Args:
        thresholds (ClassThresholds | None): The checkpoint's thresholds (with class errors when stored).
        stored_patch_size (int | None): The LR patch side the checkpoint's thresholds and class errors were made
            for (its ``'patch_size'``); None: :data:`~.tiling.DEFAULT_PATCH_SIZE`.
        target (PlanningTarget | None): The given target; None: :func:`default_target`.
        patch_size, overlap (int | None): Given tiling; None: the checkpoint's patch size, the default overlap.
        plan_by (str | None): How the default target plans ('flops' when None).
    """
    defaulted = []
    if target is None:
        target = default_target(thresholds, plan_by or 'flops')
        defaulted.append('target')
    if patch_size is None:
        patch_size = stored_patch_size or DEFAULT_PATCH_SIZE
        defaulted.append('patch size')
    patch_size = _patch_option('patch_size', patch_size, 2)
    overlap = DEFAULT_OVERLAP if overlap is None else _patch_option('overlap', overlap, 0)
    if overlap >= patch_size:
        raise PlanningTargetError(f'overlap must be smaller than the patch size ({patch_size}), got {overlap}')
    if target.needs_class_errors and (thresholds is None or thresholds.class_errors is None):
        raise PlanningTargetError(NEEDS_CLASS_ERRORS)
    return InferencePolicy(target, patch_size, overlap, tuple(defaulted))


def checkpoint_policy(meta, **given):
    """:func:`inference_policy` of a checkpoint's ``'wbsr'`` entry ``meta`` and the given options."""
    from .class_thresholds import ClassThresholds
    return inference_policy(ClassThresholds.from_meta(meta), meta.get('patch_size') if meta else None, **given)
