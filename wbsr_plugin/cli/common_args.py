"""The command-line vocabulary the commands share: one parser class, and the model, planning, device and output
arguments, each choice listed once.

* :class:`CommandParser`: help in plain text under the command's real name, ``--version``, and one
  ``prog: error: ...`` line (exit status 2) for every usage error instead of a usage block.
* ``-opt`` works wherever ``--opt`` does (BasicSR's ``train.py``/``test.py`` spell it so).
* Flags of Real-ESRGAN's ``inference_realesrgan.py`` that mean nothing here are refused with a line that says
  what to use instead; ``-t 0`` (Real-ESRGAN's "no tiling") too.
* The planning options become one :class:`~wbsr_runtime.planning_target.PlanningTarget`
  (:func:`planning_target`), validated there, with the same one-line messages as the option files'.
"""
import argparse
import re
import sys
from os import path as osp

from wbsr_plugin.archs.supernet_util import supernet_types
from wbsr_plugin.inference.runtime_choice import choose_runtime
from wbsr_plugin.inference.runtimes import PRECISIONS, RUNTIMES, RuntimeUnavailable
from wbsr_runtime.planning_target import (
    BUDGET_UNITS,
    DEFAULT_MAX_LOSS,
    PLAN_BY,
    PlanningTarget,
    PlanningTargetError,
)
from wbsr_runtime.tile_geometry import DEFAULT_OVERLAP

SCALES = (2, 3, 4, 8)
DEVICES = ('auto', 'cpu', 'cuda')

# Real-ESRGAN flags with no meaning here, and what to use instead
REFUSED_FLAGS = {
    ('-n', '--model_name'): 'name the checkpoint itself with --model',
    ('--model_path',): 'use --model',
    ('-dn', '--denoise_strength'): 'WBSR networks have no denoising strength',
    ('--outscale',): "the output is exactly the network's scale; resize it afterwards",
    ('--tile_pad',): 'neighbouring patches overlap by --overlap LR pixels',
    ('--pre_pad',): 'borders need no padding here',
    ('--face_enhance',): 'there is no face enhancement here',
    ('--alpha_upsampler',): 'an alpha channel is resized bilinearly',
    ('-g', '--gpu-id'): 'use --device cuda (and CUDA_VISIBLE_DEVICES to pick the card)',
}


def plain_text(docstring):
    """A module docstring as help text: Sphinx roles and double backquotes dropped."""
    text = re.sub(r':\w+:`~?([^`]+)`', lambda m: m.group(1).split('.')[-1] if m.group(1).startswith('.')
                  else m.group(1), docstring or '')
    return text.replace('``', '')


def command_name(module):
    """How the user called the command: its console script (``wbsr-infer``) or ``python -m wbsr_plugin.infer``."""
    invoked = osp.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ''
    if invoked.startswith('wbsr-'):
        return invoked
    return f'python -m wbsr_plugin.{module}'


def version_text():
    """``wbsr_plugin X (torch Y, basicsr Z)``: the installed versions."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return 'not installed'

    return f"wbsr_plugin {installed('wbsr_plugin')} (torch {installed('torch')}, basicsr {installed('basicsr')})"


class CommandParser(argparse.ArgumentParser):
    """An argument parser for the package's commands (see the module docstring).

    Args:
        module (str | None): The command's module under ``wbsr_plugin`` (``'infer'``); names it in help and errors.
            None: a sub-command's parser (``add_subparsers`` makes them with ``argparse``'s own arguments).
        doc (str | None): The module docstring, shown as plain text.
    """

    def __init__(self, module=None, doc=None, **kwargs):
        kwargs.setdefault('formatter_class', argparse.RawDescriptionHelpFormatter)
        if module is None:
            super().__init__(**kwargs)
            return
        super().__init__(prog=command_name(module), description=plain_text(doc), **kwargs)
        self.add_argument('--version', action='version', version=version_text())
        for flags, instead in REFUSED_FLAGS.items():
            self.add_argument(*flags, nargs='?', action=RefusedFlag, instead=instead, help=argparse.SUPPRESS)

    def error(self, message):
        """One line on stderr, exit status 2."""
        self.exit(2, f'{self.prog}: error: {message}\n')


class RefusedFlag(argparse.Action):
    """A Real-ESRGAN flag that means nothing here: a usage error that says what to use instead."""

    def __init__(self, option_strings, dest, instead, **kwargs):
        self.instead = instead
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f'{option_string} is a Real-ESRGAN option with no meaning here: {self.instead}')


def patch_side(text):
    """``-t/--patch-size``: an LR patch side >= 2; 0 (Real-ESRGAN's "no tiling") gets its own message."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an LR patch side >= 2, got {text!r}') from None
    if value == 0:
        raise argparse.ArgumentTypeError(
            "0 means no tiling in Real-ESRGAN; here -t/--patch-size is the LR patch side of dynamic inference "
            "(>= 2). To run whole images through one network, use --subnet NAME --plan-by time")
    if value < 2:
        raise argparse.ArgumentTypeError(f'expected an LR patch side >= 2, got {value}')
    return value


def add_model_arguments(parser, *, required=True):
    """--model, --arch, -opt/--opt, -s/--scale."""
    group = parser.add_argument_group('model')
    group.add_argument('--model', required=required, help='checkpoint (.pth) of a WBSR supernet')
    group.add_argument('--arch', choices=supernet_types(), help='expected architecture (checked against the '
                       'checkpoint)')
    group.add_argument('-opt', '--opt', help="training YAML whose network_g builds the network (for checkpoints "
                       "without 'wbsr' metadata and non-default sizes)")
    group.add_argument('-s', '--scale', type=int, choices=SCALES, help='expected upscale factor (checked)')
    return group


def add_planning_arguments(parser, *, sweep=False):
    """The planning target and the tiling. ``sweep`` (``curve``): several budgets and quality targets."""
    group = parser.add_argument_group('planning (default: a quality target of '
                                      f'{DEFAULT_MAX_LOSS} dB with the checkpoint\'s class errors, else Eq. 15)')
    if sweep:
        group.add_argument('--budgets', nargs='+', metavar='B', help='budgets in (0, 1] to sweep')
        group.add_argument('--max-loss', nargs='+', default=[], metavar='DB', help='quality targets in dB to sweep '
                           "(need the checkpoint's class errors)")
    else:
        group.add_argument('--budget', metavar='B', help='a share in (0, 1] of the full network\'s FLOPs (or time, '
                           'see --budget-unit)')
        group.add_argument('--max-loss', metavar='DB', help='quality target: the fastest plan whose expected loss '
                           "against the full network is at most DB dB of PSNR (needs the checkpoint's class "
                           'errors); off: Eq. 15')
        group.add_argument('--subnet', help='run every patch through this subnet: an index (0 = cheapest) or a name '
                           'such as w52d8')
    group.add_argument('--budget-unit', choices=BUDGET_UNITS, help="flops (default): budgets are shares of the FLOPs; "
                       "time: of the plain network's time on this device, a latency budget (plans by time)")
    group.add_argument('--plan-by', choices=PLAN_BY, help="flops (default): the same plan on every machine; time: this "
                       "device's measured costs decide, never slower than the plain network (measured once and "
                       'cached)')
    group.add_argument('--refresh-costs', action='store_true', help="with --plan-by time: measure this device's "
                       'costs again')
    group.add_argument('-t', '--patch-size', '--tile', dest='patch_size', type=patch_side,
                       help="largest LR patch side. Default: the checkpoint's own (else 64)")
    group.add_argument('--overlap', type=int, help=f'least LR overlap between patches. Default: {DEFAULT_OVERLAP}')
    return group


def add_device_arguments(parser):
    """--device, --fp32, --threads, --runtime, --precision."""
    from wbsr_runtime.arg_types import positive_int
    group = parser.add_argument_group('device')
    group.add_argument('--device', choices=DEVICES, default='auto', help='Default: auto (CUDA when available)')
    group.add_argument('--fp32', action='store_true', help='full precision on CUDA (fp16 otherwise)')
    group.add_argument('--threads', type=positive_int, help="CPU threads per process. Default: torch's")
    group.add_argument('--runtime', choices=('auto', ) + RUNTIMES, default='torch',
                       help='what runs the subnets on the CPU: torch, openvino or onnxruntime (extras: pip install '
                       '-e ".[runtimes]"); auto: the fastest installed, measured once per machine. Default: torch')
    group.add_argument('--precision', choices=('auto', ) + PRECISIONS, default='fp32',
                       help='fp32, or bf16 on CPUs with native bfloat16 (torch autocast, OpenVINO); auto: bf16 only '
                       'where its loss on reference photos is measured below 0.01 dB. Default: fp32')
    return group


def runtime_of(args, parser, net, device, on_measure=None):
    """``(Runtime, reason)`` of ``--runtime`` and ``--precision``; one line and exit 2 when it cannot run here."""
    try:
        return choose_runtime(net, device, args.runtime, args.precision, on_measure=on_measure)
    except RuntimeUnavailable as err:
        parser.error(str(err))


def planning_target(args, parser):
    """The :class:`PlanningTarget` of ``args`` (None: the default policy decides, planning by ``args.plan_by``); a
    bad value exits with one line."""
    try:
        return PlanningTarget.from_options(budget=getattr(args, 'budget', None), budget_unit=args.budget_unit,
                                           max_loss=getattr(args, 'max_loss', None), subnet=getattr(args, 'subnet',
                                                                                                     None),
                                           plan_by=args.plan_by)
    except PlanningTargetError as err:
        parser.error(str(err))


def sweep_targets(args, parser, default_budgets):
    """``curve``'s targets: ``[PlanningTarget, ...]`` of ``--budgets`` (or ``default_budgets``) and ``--max-loss``,
    validated as single targets are; a bad value exits with one line."""
    try:
        targets = [PlanningTarget.from_options(budget=b, budget_unit=args.budget_unit, plan_by=args.plan_by)
                   for b in (args.budgets or default_budgets)]
        targets += [PlanningTarget.from_options(max_loss=loss, plan_by=args.plan_by) for loss in args.max_loss]
    except PlanningTargetError as err:
        parser.error(str(err))
    return targets
