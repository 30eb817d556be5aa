"""Expected quality of a plan: from the checkpoint's class errors, or, without them, from FLOPs.

Class errors (``inference/calibration.py``) hold the mean squared error of every subnet on the patches of
every difficulty class. A plan's expected error is their sum over its patches; its expected loss against the
full network, in dB of PSNR, is ``10 log10(plan's error / the full network's error)`` on the same patches.
Without class errors, quality is read from FLOPs: the share of the full network's FLOPs that an LR pixel gets.

Class errors are measured on patches run alone, as tiled plans run them. The loss is taken against the full network
on the whole image, which sees every pixel's surroundings: with the full network's error with context measured too,
what tiling costs (per class, :meth:`.ClassErrors.tiling_table`) counts against every tiled plan, the full network
tiled included, and not against subnets run on the whole image (:func:`untiled`). On clean photos tiling alone
lost up to 0.1 dB (docs/RESULTS.md).

With class spreads (the standard deviation of one patch's excess error over the full network, per class and
subnet), the expected error is a bound for one image, not only for the mean of many: the excess of an image's
patches varies around its expectation by ``sqrt(sum of n s^2)``, and the bound adds :data:`Z_IMAGE` times that, so
that an image of a few dozen patches stays within the target as often as one of thousands.

A subnet's squared error on a patch is the full network's ``e``, plus the squared deviation of its output from the
full network's ``d``, plus twice their cross term ``c``. Class means of the excess ``d + 2c`` average ``c`` over the
calibration photos; on one photo it need not average out, and where ``e`` is small (clean photos) it decides the
loss. With every subnet's correlation stored (how far a calibration image's ``c`` ran along ``sqrt(d e)``, summed
over its patches: :func:`.class_errors.image_correlations`), the bound adds ``2 rho_m sqrt(X_m E_m)`` per subnet m
(:func:`error_bound`; ``X_m`` its patches' expected excess over the full network, ``E_m`` the full network's error
there): the Cauchy-Schwarz bound of the cross term, scaled by the correlation that 9 calibration images in 10 stayed
under.

An image cleaner than its classes (its LR patches hold less fine detail, :func:`.difficulty.patch_detail`, than the
calibration's patches of the same classes) has a lower full-network error than the class means say, while the
smaller subnets' excess over it does not fall in proportion: the same plan then loses more dB. With the classes'
mean detail stored, the full network's error of such an image is scaled, class by class, by its patches' detail
against the class's (:func:`detail_ratios`), and every subnet keeps its excess (:func:`scaled_errors`). That is the
cautious end: the excess does fall somewhat with the image's error (flat patches lose nothing through any subnet), so
images much cleaner than their classes get plans of more FLOPs than they need, never fewer. The other way round, an
image with more detail than its classes (sharp edges, text) keeps the class's full-network error, and the subnets'
excess, which grows with what they fail to reconstruct, grows with the ratio.
"""
import math

# one-sided normal quantile of an image's own spread: the target holds for 9 images in 10
Z_IMAGE = 1.2816
# the detail of 8-bit rounding noise (variance 1/12 per pixel; the Laplacian's is 16/12 + 4/12): what an LR image
# holds at least, so that a perfectly flat patch is not taken for an error-free one
ROUNDING_DETAIL = 20 / 12
# the power of an image's detail ratio that its full-network error ratio follows (see docs/RESULTS.md)
DETAIL_POWER = 1.


def detail_ratios(class_detail_sums, class_counts, class_detail, power=None):
    """Per class, the detail of the image's patches in the class over what the class's mean detail predicts for them,
    both with :data:`ROUNDING_DETAIL` added per patch, to the power ``power`` (None: :data:`DETAIL_POWER`); 1 for a
    class without patches."""
    power = DETAIL_POWER if power is None else power
    rounding = ROUNDING_DETAIL
    return [1. if n <= 0 else ((max(float(found), 0.) + n * rounding) / (n * (d + rounding))) ** power
            for found, n, d in zip(class_detail_sums, class_counts, class_detail)]


def scaled_errors(class_errors, ratios, tiling=None):
    """Class errors (K x M, the last the full network) of an image whose patches of class k hold ``ratios[k]`` times
    the class's detail: below 1, the full network's error (on the whole image: less ``tiling[k]``, what tiling adds)
    falls in proportion; above 1, every subnet's excess over it grows in proportion; tiling keeps its cost. Never a
    discount on what a subnet loses."""
    if ratios is None or all(ratio == 1 for ratio in ratios):
        return class_errors
    tiling = tiling or [0.] * len(class_errors)
    rows = []
    for row, ratio, t in zip(class_errors, ratios, tiling):
        full = min(ratio, 1.) * (row[-1] - t) + t
        rows.append([full + max(ratio, 1.) * (e - row[-1]) for e in row[:-1]] + [full])
    return rows


def untiled(class_errors, tiling):
    """Class errors of subnets run on the whole image: the tiled ones less what tiling costs (``tiling``, per class;
    None: nothing)."""
    if tiling is None:
        return class_errors
    return [[e - t for e in row] for row, t in zip(class_errors, tiling)]


def subnet_counts(class_counts, levels, steps):
    """Patches of every class per subnet: ``[{subnet: patches}, ...]`` after ``levels`` and ``steps``
    (:func:`~.projection.budget_levels`)."""
    at_level = [{level: count} for level, count in zip(levels, class_counts)]
    for k, source, target, count in steps:
        at_level[k - 1][source] -= count
        at_level[k - 1][target] = at_level[k - 1].get(target, 0) + count
    return at_level


def error_bound(counts_by_class, class_errors, class_spreads=None, full_errors=None, correlations=None):
    """Expected error (a sum over the patches) of ``counts_by_class[k][m]`` patches of class k through subnet m,
    plus :data:`Z_IMAGE` times the spread of their sum when ``class_spreads`` (K x M) are given, plus the image's
    correlation term when ``full_errors`` (per class, the full network's error on the whole image) and
    ``correlations`` (per subnet) are given: ``2 rho_m sqrt(X_m E_m)`` for every subnet m, ``X_m`` the expected
    excess of its patches over ``full_errors`` and ``E_m`` the full network's error there (see the module)."""
    error = sum(n * class_errors[k][m] for k, counts in enumerate(counts_by_class) for m, n in counts.items())
    if class_spreads is not None:
        variance = sum(n * class_spreads[k][m]**2 for k, counts in enumerate(counts_by_class)
                       for m, n in counts.items())
        error += Z_IMAGE * math.sqrt(variance)
    if correlations is not None and full_errors is not None:
        excess, full = [0.] * len(correlations), [0.] * len(correlations)
        for k, counts in enumerate(counts_by_class):
            for m, n in counts.items():
                excess[m] += n * (class_errors[k][m] - full_errors[k])
                full[m] += n * full_errors[k]
        error += 2 * sum(rho * math.sqrt(max(x, 0.) * max(e, 0.)) for rho, x, e in zip(correlations, excess, full))
    return error


def tiled_error(class_counts, levels, steps, class_errors, class_spreads=None, **bound):
    """Expected error (a sum over the patches, a bound with ``class_spreads`` and ``bound``, :func:`error_bound`)
    of a tiled plan."""
    return error_bound(subnet_counts(class_counts, levels, steps), class_errors, class_spreads, **bound)


def whole_error(class_counts, class_errors, subnet, class_spreads=None, **bound):
    """Expected error (a sum over the patches, a bound with ``class_spreads`` and ``bound``, :func:`error_bound`)
    of ``subnet`` on the whole image."""
    return error_bound([{subnet: n} for n in class_counts], class_errors, class_spreads, **bound)


def loss_db(error, full_error):
    """Expected loss in dB of PSNR against the full network (negative when the plan is expected to do better)."""
    if full_error <= 0:
        return 0. if error <= 0 else math.inf
    return -math.inf if error <= 0 else 10 * math.log10(error / full_error)
