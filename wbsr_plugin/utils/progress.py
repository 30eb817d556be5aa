"""Progress bars for loops that take minutes: shown only where someone watches them.

A bar is drawn when stderr is a terminal and this process is rank 0 (``RANK`` and ``LOCAL_RANK`` unset or 0, and
``torch.distributed``, when initialised, says rank 0), so logs, pipes and the other ranks of ``torchrun`` get no
bar lines.
"""
import os
import sys

import torch
from tqdm import tqdm


def is_rank_zero():
    """True unless this process is a rank other than 0 of a distributed run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return all(os.environ.get(name, '0') in ('', '0') for name in ('RANK', 'LOCAL_RANK'))


def show_progress(stream=None):
    """True when a bar would be seen: ``stream`` (default: stderr) is a terminal and this is rank 0."""
    stream = sys.stderr if stream is None else stream
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        interactive = False
    return interactive and is_rank_zero()


def progress_bar(iterable=None, *, total=None, desc=None, unit='it', leave=False):
    """A tqdm bar over ``iterable`` (or one updated by hand with ``total``), disabled unless :func:`show_progress`.

    Args:
        iterable (Iterable | None): What to iterate. Default: None (call ``update`` on the bar).
        total (int | None): Number of steps, when ``iterable`` has no length. Default: None.
        desc (str | None): Label before the bar. Default: None.
        unit (str): Name of one step. Default: 'it'.
        leave (bool): Keep the finished bar on screen. Default: False.
    """
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, disable=not show_progress())
