"""Expected quality of a plan: from the checkpoint's class errors, or, without them, from FLOPs.

Class errors (``inference/calibration.py``) hold the mean squared error of every subnet on the patches of
every difficulty class. A plan's expected error is their sum over its patches; its expected loss against the
full network, in dB of PSNR, is ``10 log10(plan's error / the full network's error)`` on the same patches.
Without class errors, quality is read from FLOPs: the share of the full network's FLOPs that an LR pixel gets.
"""
import math


def subnet_counts(class_counts, levels, steps):
    """Patches of every class per subnet: ``[{subnet: patches}, ...]`` after ``levels`` and ``steps``
    (:func:`~.projection.budget_levels`)."""
    at_level = [{level: count} for level, count in zip(levels, class_counts)]
    for k, source, target, count in steps:
        at_level[k - 1][source] -= count
        at_level[k - 1][target] = at_level[k - 1].get(target, 0) + count
    return at_level


def tiled_error(class_counts, levels, steps, class_errors):
    """Expected error (a sum over the patches) of a tiled plan."""
    return sum(n * class_errors[k][m]
               for k, counts in enumerate(subnet_counts(class_counts, levels, steps)) for m, n in counts.items())


def whole_error(class_counts, class_errors, subnet):
    """Expected error (a sum over the patches) of ``subnet`` on the whole image."""
    return sum(n * row[subnet] for n, row in zip(class_counts, class_errors))


def loss_db(error, full_error):
    """Expected loss in dB of PSNR against the full network (negative when the plan is expected to do better)."""
    if full_error <= 0:
        return 0. if error <= 0 else math.inf
    return -math.inf if error <= 0 else 10 * math.log10(error / full_error)
