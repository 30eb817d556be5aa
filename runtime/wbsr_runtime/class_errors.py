"""What a checkpoint knows about its subnets' errors, and how far the planner may trust it: :class:`ClassErrors`.

Calibration (``inference/calibration.py``) measures the squared error of every subnet on every calibration
patch. Stored per class k and subnet m (cost order; the last is the full network):

* ``class_errors`` (K x M): the mean squared error of the luma (BT.601, in [0, 1]: the loss is stated in Y-PSNR;
  older checkpoints: of RGB), each patch's pixels weighted as the engine blends them (older checkpoints: the patch
  interior);
* ``calibration`` (a dict): ``counts`` (patches per class), ``images`` (calibration images with a patch in the
  class), ``excess_sd`` (K x M: the standard deviation over the class's patches of a patch's excess error
  ``e_m - e_full``, relative to the class's mean full-network error), ``detail`` (per class, the mean detail of its
  LR patches, :func:`.difficulty.patch_detail`), ``full_in_context`` (per class, the full network's mean error on
  the patches when it also sees the pixels around them, as on a whole image), ``deviation`` (K x M: the mean
  squared difference of every subnet's output on the patch alone from the full network's with context),
  ``correlation`` (per subnet: how far a calibration image's deviation ran along the full network's error,
  :func:`image_correlations`), and what was calibrated on.

The planner does not take the means at their word. It plans with a bound (:meth:`ClassErrors.planning_table`): the
full network's error with context, every other subnet's mean deviation from it (or its mean excess ``e_m - e_full``,
where larger) raised to ``deviation * MARGIN + z * sd / sqrt(n)`` (``z`` one-sided, :data:`Z_BOUND`; older
calibrations: the class mean and the excess so raised), where :data:`MARGIN` covers what differs between the
calibration photos and the user's (chosen on held-aside photos, docs/RESULTS.md), and the second term the sampling
error of a class measured on few patches. The image's correlation term (:func:`.expected_quality.error_bound`)
bounds what the cross term between an image's deviation and its full network's error may add, which class means
average away; the patches' spreads (:meth:`spread_table`) bound what one image's own few patches may add, the
classes' detail tells an image cleaner than its classes (a lower full-network error) or sharper (a larger deviation;
:func:`.expected_quality.detail_ratios`), and what tiling changes in the full network's output counts against tiled
plans (:meth:`ClassErrors.tiling_table`). A checkpoint whose class errors carry no counts is planned with a wider
margin (:data:`UNCOUNTED_MARGIN`); :meth:`ClassErrors.reliability` says so.
"""
import math
from dataclasses import dataclass

import numpy as np

from .expected_quality import Z_IMAGE

# one-sided normal quantile of the sampling term (95 %)
Z_BOUND = 1.645
# factor on every subnet's mean deviation from the full network (older calibrations: its mean excess error over it):
# calibration photos are not the user's (chosen on held-aside photos: the least of 1, 1.5, 2, 2.5 that met every
# tuning cell with the correlation term; 2.5 also for the excess before; docs/RESULTS.md)
MARGIN = 2.5
# the same for class errors stored without counts (measured on training patches, no spread to bound them by)
UNCOUNTED_MARGIN = 4.0
# a class with fewer patches than this is reported as thin
THIN_PATCHES = 30
# LR pixels around every calibration patch through which the full network also sees it (what tiling costs)
CALIBRATION_CONTEXT = 8
# what calibration's squared errors are taken of (``'channel'`` of the ``'calibration'`` entry; without it: RGB)
ERROR_CHANNEL = 'y'
# per-class statistics of a calibration's ``'calibration'`` entry besides counts and images
PER_CLASS = ('detail', 'full_in_context')
# quantile over the calibration images of their correlations (:func:`correlation_bound`)
CORRELATION_QUANTILE = 0.9
# the least correlation a subnet is planned with: what calibration photos unlike the user's may not show (textured
# photos showed 0.1 or less, clean ones up to 0.25: the largest on the tuning photos; docs/RESULTS.md)
CORRELATION_FLOOR = 0.25


def image_correlations(errors, reference, deviation, image_ids, min_patches=2):
    """(images, M): per calibration image with ``min_patches`` patches or more and per subnet, the correlation of
    the subnet's deviation from the full network with the full network's error over the image's patches:
    ``sum(c) / sqrt(sum(d) sum(e))``, where ``e`` is the full network's error (``reference``), ``d`` the deviation
    and ``c = (error - e - d) / 2`` their cross term (squared error of the subnet = e + d + 2c); 0 where d or e is
    0. No image: (0, M)."""
    errors, reference = np.asarray(errors, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    deviation, image_ids = np.asarray(deviation, dtype=np.float64), np.asarray(image_ids)
    cross = (errors - reference[:, None] - deviation) / 2
    rows = []
    for image in np.unique(image_ids):
        chosen = image_ids == image
        if chosen.sum() < min_patches:
            continue
        scale = np.sqrt(deviation[chosen].sum(0) * reference[chosen].sum())
        rows.append(np.divide(cross[chosen].sum(0), scale, out=np.zeros(errors.shape[1]), where=scale > 0))
    return np.array(rows).reshape(-1, errors.shape[1])


def correlation_bound(errors, reference, deviation, image_ids):
    """Per subnet, the :data:`CORRELATION_QUANTILE` of :func:`image_correlations` (the next value up, no
    interpolation: the largest of 10 images or fewer), at least 0, and what it was taken over. Where fewer than 2
    images hold 2 patches or more, every patch counts as an image (a patch's correlation varies more than an
    image's: a wider bound)."""
    rows = image_correlations(errors, reference, deviation, image_ids)
    units = f'{len(rows)} images'
    if len(rows) < 2:
        rows = image_correlations(errors, reference, deviation, np.arange(len(reference)), min_patches=1)
        units = f'{len(rows)} patches, one image each'
    ordered = np.sort(rows, axis=0)
    chosen = ordered[math.ceil(CORRELATION_QUANTILE * (len(rows) - 1))]
    return tuple(float(v) for v in np.clip(chosen, 0, 1)), units


def _rows(table):
    return None if table is None else tuple(tuple(float(v) for v in row) for row in table)


@dataclass(frozen=True)
class ClassErrors:
    """Measured class errors and their counts.

    Attributes:
        means (tuple[tuple[float]]): K x M mean squared errors.
        counts (tuple[int] | None): Patches per class (None: not stored, an older checkpoint).
        images (tuple[int] | None): Calibration images with a patch in each class.
        excess_sd (tuple[tuple[float]] | None): K x M standard deviation of a patch's excess error over the full
            network, relative to the class's mean full-network error.
        source (dict): What was calibrated on (``'data'``, ``'patch_size'``, ``'patches'``, ...).
        detail (tuple[float] | None): Per class, the mean detail of its LR patches (None: not stored).
        in_context (tuple[float] | None): Per class, the full network's mean error with context (None: not stored).
        deviation (tuple[tuple[float]] | None): K x M mean squared difference of every subnet's output on the patch
            alone from the full network's with context (the last column: what tiling changes in the full
            network's output), None: not stored.
        correlation (tuple[float] | None): Per subnet, how far a calibration image's deviation ran along the full
            network's error (:func:`correlation_bound`), None: not stored.
    """
    means: tuple
    counts: tuple = None
    images: tuple = None
    excess_sd: tuple = None
    source: dict = None
    detail: tuple = None
    in_context: tuple = None
    deviation: tuple = None
    correlation: tuple = None

    @classmethod
    def from_samples(cls, classes, errors, image_ids, num_classes, source=None, detail=None, in_context=None,
                     deviation=None):
        """The statistics of per-patch errors.

        Args:
            classes (np.ndarray): (n,) class 1..K of every patch.
            errors (np.ndarray): (n, M) squared error of every patch through every subnet (the last: full).
            image_ids (np.ndarray): (n,) the image each patch came from.
            num_classes (int): K.
            source (dict | None): What was calibrated on.
            detail (np.ndarray | None): (n,) detail of every LR patch (:func:`.difficulty.patch_detail`).
            in_context (np.ndarray | None): (n,) the full network's error on every patch with context.
            deviation (np.ndarray | None): (n, M) squared difference of every subnet's output from the full
                network's with context (without ``in_context``: alone).

        Raises:
            ValueError: No patch at all.
        """
        classes, errors, image_ids = np.asarray(classes), np.asarray(errors, dtype=np.float64), np.asarray(image_ids)
        if len(classes) == 0:
            raise ValueError('no calibration patch fell into any class.')
        num_subnets = errors.shape[1]
        counts = np.bincount(classes - 1, minlength=num_classes)[:num_classes]
        filled = [k for k in range(num_classes) if counts[k] > 0]
        means, sds = np.zeros((num_classes, num_subnets)), np.zeros((num_classes, num_subnets))
        images, details, contexts = np.zeros(num_classes, dtype=int), np.zeros(num_classes), np.zeros(num_classes)
        deviations = None if deviation is None else np.zeros((num_classes, num_subnets))
        for k in range(num_classes):
            source_k = k if counts[k] else min(filled, key=lambda f: (abs(f - k), f))  # empty: nearest class
            rows = errors[classes == source_k + 1]
            means[k] = rows.mean(0)
            if detail is not None:
                details[k] = np.asarray(detail, dtype=np.float64)[classes == source_k + 1].mean()
            if in_context is not None:
                contexts[k] = np.asarray(in_context, dtype=np.float64)[classes == source_k + 1].mean()
            if deviation is not None:
                deviations[k] = np.asarray(deviation, dtype=np.float64)[classes == source_k + 1].mean(0)
            if counts[k]:
                images[k] = len(np.unique(image_ids[classes == k + 1]))
                excess = (rows - rows[:, -1:]) / max(means[k, -1], 1e-12)
                sds[k] = excess.std(0, ddof=1) if len(rows) > 1 else 0.
        correlation = None
        if deviation is not None:
            reference = errors[:, -1] if in_context is None else np.asarray(in_context, dtype=np.float64)
            correlation, units = correlation_bound(errors, reference, deviation, image_ids)
            source = {**(source or {}), 'correlation_over': units}
        return cls(_rows(means), tuple(int(c) for c in counts), tuple(int(i) for i in images), _rows(sds),
                   dict(source or {}), None if detail is None else tuple(float(d) for d in details),
                   None if in_context is None else tuple(float(c) for c in contexts), _rows(deviations), correlation)

    @classmethod
    def from_meta(cls, meta):
        """The class errors of a checkpoint's ``'wbsr'`` entry, or None when it stores none."""
        if not meta or meta.get('class_errors') is None:
            return None
        stats = meta.get('calibration') or {}
        counts = stats.get('counts')
        value = cls(_rows(meta['class_errors']), None if counts is None else tuple(int(c) for c in counts),
                    None if stats.get('images') is None else tuple(int(i) for i in stats['images']),
                    _rows(stats.get('excess_sd')),
                    {k: v for k, v in stats.items()
                     if k not in ('counts', 'images', 'excess_sd', 'deviation', 'correlation') + PER_CLASS},
                    *(None if stats.get(key) is None else tuple(float(v) for v in stats[key]) for key in PER_CLASS),
                    _rows(stats.get('deviation')),
                    None if stats.get('correlation') is None else tuple(float(v) for v in stats['correlation']))
        for key, values in zip(PER_CLASS, (value.detail, value.in_context)):
            if values is not None and (len(values) != len(value.means)
                                       or not all(math.isfinite(v) and v >= 0 for v in values)):
                raise ValueError(f'calibration: {key} must hold {len(value.means)} finite values >= 0 (one per '
                                 'class).')
        if (value.deviation is None) != (value.correlation is None) or value.deviation is not None and (
                len(value.deviation) != len(value.means) or len(value.correlation) != len(value.means[0])
                or any(len(row) != len(value.means[0]) for row in value.deviation)
                or not all(math.isfinite(v) and v >= 0 for row in value.deviation for v in row)
                or not all(0 <= v <= 1 for v in value.correlation)):
            raise ValueError(f'calibration: deviation ({len(value.means)} classes x {len(value.means[0])} subnets, '
                             f'finite, >= 0) and correlation ({len(value.means[0])} values in [0, 1]) go together.')
        if value.counts is not None or value.excess_sd is not None:
            shape = (len(value.means), len(value.means[0]) if value.means else 0)
            if (value.counts is None or value.excess_sd is None or len(value.counts) != shape[0]
                    or any(len(row) != shape[1] for row in value.excess_sd) or len(value.excess_sd) != shape[0]
                    or not all(math.isfinite(v) and v >= 0 for row in value.excess_sd for v in row)
                    or min(value.counts, default=0) < 0):
                raise ValueError(f'calibration: counts and excess_sd must match class_errors ({shape[0]} classes x '
                                 f'{shape[1]} subnets) with finite values >= 0.')
        return value

    @property
    def counted(self):
        """Whether counts and spreads are stored (else: an older checkpoint, the wider margin)."""
        return self.counts is not None and self.excess_sd is not None

    def meta_entries(self):
        """``'class_errors'`` and, with counts, ``'calibration'``: entries of a checkpoint's ``'wbsr'``."""
        entries = {'class_errors': [list(row) for row in self.means]}
        if self.counted:
            entries['calibration'] = {**(self.source or {}), 'counts': list(self.counts),
                                      'images': list(self.images or [0] * len(self.counts)),
                                      'excess_sd': [list(row) for row in self.excess_sd]}
            for key, values in zip(PER_CLASS, (self.detail, self.in_context)):
                if values is not None:
                    entries['calibration'][key] = list(values)
            if self.deviation is not None:
                entries['calibration']['deviation'] = [list(row) for row in self.deviation]
                entries['calibration']['correlation'] = list(self.correlation)
        return entries

    def tiling_table(self):
        """Per class, what tiling adds to the full network's error: the mean deviation of its output on the patches
        alone from its output with context where measured, else its mean error alone over its mean error with
        context; None when not measured."""
        if self.in_context is None:
            return None
        if self.deviation is not None:
            return [row[-1] for row in self.deviation]
        return [max(row[-1] - context, 0.) for row, context in zip(self.means, self.in_context)]

    def planning_table(self, margin=None, z=Z_BOUND):
        """The K x M table the planner uses (see the module docstring; ``margin``: None for the default): with
        deviations, the full network's error with context (on the whole image) plus every subnet's mean deviation or
        mean excess, whichever is larger (times :data:`MARGIN`), and the sampling term, at least what tiling changes
        in the full network (the full network's column: that alone);
        without, the full network's mean, and every other subnet's excess over it times the margin plus the
        sampling term."""
        deviations = self.deviation is not None
        if margin is None:
            margin = MARGIN if self.counted else UNCOUNTED_MARGIN
        table, spreads = [], self._spreads()
        for k, row in enumerate(self.means):
            full = row[-1]
            sampling = ([z * sd * full / math.sqrt(max(self.counts[k], 1)) for sd in spreads[k]]
                        if self.counted else [0.] * len(row))
            if deviations:  # never below the measured excess, nor below the full network run tiled
                base, tiling = full if self.in_context is None else self.in_context[k], self.deviation[k][-1]
                table.append([base + max(margin * max(d, e - full) + s, tiling)
                              for e, d, s in zip(row[:-1], self.deviation[k][:-1], sampling)] + [base + tiling])
            else:
                table.append([full + max(e - full, 0.) * margin + s for e, s in zip(row[:-1], sampling)] + [full])
        return table

    def planning_terms(self, margin=None):
        """What :meth:`.ClassThresholds.of` takes to plan with these errors: the planning table, the spreads, the
        detail, tiling's cost and the subnets' correlations (:meth:`planning_correlation`)."""
        return {'class_errors': self.planning_table(margin), 'class_spreads': self.spread_table(),
                'class_detail': self.detail, 'class_tiling': self.tiling_table(),
                'subnet_correlation': self.planning_correlation()}

    def planning_correlation(self):
        """Per subnet, the correlation the planner allows for: the measured one, at least :data:`CORRELATION_FLOOR`
        for every subnet but the full network (whose deviation is only what tiling changes); None when not
        measured."""
        if self.correlation is None:
            return None
        return tuple(max(rho, CORRELATION_FLOOR) for rho in self.correlation[:-1]) + self.correlation[-1:]

    def spread_table(self):
        """K x M standard deviations of one patch's excess error over the full network (absolute: relative spread
        times the class's full-network error; 0 for the full network), or None without counts. What an image's
        own patches add to the bound (:func:`~.expected_quality.error_bound`)."""
        if not self.counted:
            return None
        return [[sd * row[-1] for sd in spreads[:-1]] + [0.] for row, spreads in zip(self.means, self._spreads())]

    def _spreads(self):
        """``excess_sd``, where a class has fewer than 2 patches the largest spread of any class (per subnet)."""
        if not self.counted:
            return None
        measured = [row for row, n in zip(self.excess_sd, self.counts) if n >= 2]
        widest = [max(column) for column in zip(*measured)] if measured else [0.] * len(self.means[0])
        return [row if n >= 2 else widest for row, n in zip(self.excess_sd, self.counts)]

    def thin_classes(self):
        """Classes (1..K) measured on fewer than :data:`THIN_PATCHES` patches (all of them without counts)."""
        if not self.counted:
            return list(range(1, len(self.means) + 1))
        return [k + 1 for k, n in enumerate(self.counts) if n < THIN_PATCHES]

    def reliability(self, patch_size=None):
        """One line: how far the expected loss can be trusted, and the bound used (``patch_size``: the engine's,
        noted when it is not the one calibrated on)."""
        calibrated = (self.source or {}).get('patch_size')
        other = (f'; calibrated on {calibrated} LR px patches, run on {patch_size}'
                 if patch_size and calibrated and patch_size != calibrated else '')
        return self._reliability() + other

    def _reliability(self):
        if not self.counted:
            return (f'class errors stored without counts (an older calibration): expected losses are bounds with '
                    f'a wide margin (x{UNCOUNTED_MARGIN:g} excess); run calibrate on photos like yours for a '
                    'tighter one')
        thin = self.thin_classes()
        data = (self.source or {}).get('data', 'unknown data')
        what = 'deviation' if self.deviation is not None else 'excess'
        text = (f'calibrated on {sum(self.counts)} patches of {data}; expected losses are bounds (x{MARGIN:g} '
                f'{what} + {Z_BOUND:g} sd, {Z_IMAGE:g} sd of the image\'s own patches')
        if self.deviation is not None:
            over = (self.source or {}).get('correlation_over')
            text += (f', a correlation with the full network\'s error of {max(self.planning_correlation()):.2f} '
                     f'(at least {CORRELATION_FLOOR:g}; measured up to {max(self.correlation):.2f}'
                     + (f' over {over})' if over else ')'))
        stored = (('class detail', self.detail is not None), ('tiling\'s cost', self.in_context is not None),
                  ('deviations', self.deviation is not None),
                  ('luma errors (measured in RGB)', (self.source or {}).get('channel') == ERROR_CHANNEL))
        missing = [name for name, present in stored if not present]
        context = 2 * CALIBRATION_CONTEXT + int((self.source or {}).get('patch_size') or 0)
        text += ((', errors scaled by the image\'s detail, and what tiling costs)') if not missing
                 else f'); not stored: {", ".join(missing)} (clean or colourful photos may lose more than '
                      f'expected: run calibrate again, on images of at least {context} LR px)')
        if thin:
            text += f'; thin classes (< {THIN_PATCHES} patches): {", ".join(map(str, thin))}'
        return text
