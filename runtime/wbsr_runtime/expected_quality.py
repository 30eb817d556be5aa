"""Expected quality of a plan: from the checkpoint's class errors, or, without them, from FLOPs.

Class errors (``inference/calibration.py``) hold the mean squared error of every subnet on the patches of
every difficulty class. A plan's expected error is their sum over its patches; its expected loss against the
full network, in dB of PSNR, is ``10 log10(plan's error / the full network's error)`` on the same patches.
Without class errors, quality is read from FLOPs: the share of the full network's FLOPs that an LR pixel gets.

With class spreads (the standard deviation of one patch's excess error over the full network, per class and
subnet), the expected error is a bound for one image, not only for the mean of many: the excess of an image's
patches varies around its expectation by ``sqrt(sum of n s^2)``, and the bound adds :data:`Z_IMAGE` times that, so
that an image of a few dozen patches stays within the target as often as one of thousands.
"""
import math

# one-sided normal quantile of an image's own spread: the target holds for 9 images in 10
Z_IMAGE = 1.2816


def subnet_counts(class_counts, levels, steps):
    """Patches of every class per subnet: ``[{subnet: patches}, ...]`` after ``levels`` and ``steps``
    (:func:`~.projection.budget_levels`)."""
    at_level = [{level: count} for level, count in zip(levels, class_counts)]
    for k, source, target, count in steps:
        at_level[k - 1][source] -= count
        at_level[k - 1][target] = at_level[k - 1].get(target, 0) + count
    return at_level


def error_bound(counts_by_class, class_errors, class_spreads=None):
    """Expected error (a sum over the patches) of ``counts_by_class[k][m]`` patches of class k through subnet m,
    plus :data:`Z_IMAGE` times the spread of their sum when ``class_spreads`` (K x M) are given."""
    error = sum(n * class_errors[k][m] for k, counts in enumerate(counts_by_class) for m, n in counts.items())
    if class_spreads is None:
        return error
    variance = sum(n * class_spreads[k][m]**2 for k, counts in enumerate(counts_by_class) for m, n in counts.items())
    return error + Z_IMAGE * math.sqrt(variance)


def tiled_error(class_counts, levels, steps, class_errors, class_spreads=None):
    """Expected error (a sum over the patches, a bound with ``class_spreads``) of a tiled plan."""
    return error_bound(subnet_counts(class_counts, levels, steps), class_errors, class_spreads)


def whole_error(class_counts, class_errors, subnet, class_spreads=None):
    """Expected error (a sum over the patches, a bound with ``class_spreads``) of ``subnet`` on the whole image."""
    return error_bound([{subnet: n} for n in class_counts], class_errors, class_spreads)


def loss_db(error, full_error):
    """Expected loss in dB of PSNR against the full network (negative when the plan is expected to do better)."""
    if full_error <= 0:
        return 0. if error <= 0 else math.inf
    return -math.inf if error <= 0 else 10 * math.log10(error / full_error)
