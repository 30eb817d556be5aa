"""A supernet's class thresholds as one value: :class:`ClassThresholds`.

Dynamic inference puts every LR patch into one of K difficulty classes by K - 1 thresholds on the
scalar difficulty. The difficulty's distribution narrows as patches grow, so thresholds hold at the
patch side they were computed on: checkpoints store a table of them per LR patch side, and the
thresholds of the patch in use are interpolated (linear in log patch side, the nearest stored side
outside their range). A single list (``wbsr.thresholds``, older checkpoints) is used at every patch
side. With the thresholds travel, when measured, every class's expected error through every subnet
(``inference/calibration.py``), which budgets spend by.

Raw lists and dicts are accepted where they enter (the engine's ``thresholds=``, a checkpoint's
``'wbsr'`` entry) and validated there, once; past that point every module takes the value.
"""
import math
from dataclasses import dataclass

import numpy as np

DEFAULT_NUM_CLASSES = 10


def check_thresholds(thresholds):
    """Validate K - 1 thresholds (a non-decreasing list of finite floats); returns them as floats."""
    values = [float(t) for t in thresholds]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f'thresholds must be finite numbers, got {values}.')
    if any(b < a for a, b in zip(values, values[1:])):
        raise ValueError(f'thresholds must be non-decreasing, got {values}.')
    return values


def check_threshold_table(table):
    """Validate ``{patch side: K - 1 thresholds}``; returns it sorted, with int keys and float lists."""
    if not table:
        raise ValueError('a threshold table needs at least one patch size.')
    checked = {}
    for size, values in table.items():
        if isinstance(size, bool) or not isinstance(size, (int, str)) or not str(size).isdigit() or int(size) < 2:
            raise ValueError(f'threshold table keys must be patch sides >= 2, got {size!r}.')
        checked[int(size)] = check_thresholds(values)
    if len({len(values) for values in checked.values()}) != 1:
        raise ValueError('every patch size of a threshold table needs the same number of thresholds.')
    return dict(sorted(checked.items()))


def check_class_errors(class_errors, num_classes, num_subnets):
    """Validate a K x M table of expected errors (finite, >= 0); returns it as lists of floats."""
    rows = [[float(e) for e in row] for row in class_errors]
    if len(rows) != num_classes or any(len(row) != num_subnets for row in rows):
        raise ValueError(f'class_errors must be {num_classes} rows (classes) of {num_subnets} values (subnets), '
                         f'got {len(rows)} rows of {sorted({len(row) for row in rows})}.')
    if not all(math.isfinite(e) and e >= 0 for row in rows for e in row):
        raise ValueError('class_errors must be finite numbers >= 0.')
    return rows


def _class_vector(values, name, num_classes, class_errors):
    """``values`` (one per class, finite, >= 0; they need ``class_errors``) as a tuple, or None."""
    if values is None:
        return None
    if class_errors is None:
        raise ValueError(f'{name} needs class_errors.')
    values = tuple(float(v) for v in values)
    if len(values) != num_classes or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f'{name} must hold {num_classes} finite values >= 0 (one per class).')
    return values


def thresholds_at(table, patch_size):
    """Thresholds for ``patch_size`` from ``{patch side: thresholds}``: linear in log patch side between the
    two nearest stored sides, the nearest stored side outside their range."""
    sizes = sorted(table)
    if patch_size <= sizes[0]:
        return list(table[sizes[0]])
    if patch_size >= sizes[-1]:
        return list(table[sizes[-1]])
    upper = next(i for i, size in enumerate(sizes) if size >= patch_size)
    low, high = sizes[upper - 1], sizes[upper]
    t = (np.log(patch_size) - np.log(low)) / (np.log(high) - np.log(low))
    return [float((1 - t) * a + t * b) for a, b in zip(table[low], table[high])]


def _frozen_rows(rows):
    return None if rows is None else tuple(tuple(row) for row in rows)


@dataclass(frozen=True)
class ClassThresholds:
    """Class thresholds of a supernet: K - 1 per LR patch side, or one list for every side.

    Build it with :meth:`of` (from a list, a ``{patch side: list}`` table or another value) or
    :meth:`from_meta` (a checkpoint's ``'wbsr'`` entry); both validate.

    Attributes:
        values (tuple[float] | None): One list used at every patch side (no table).
        table (tuple[tuple[int, tuple[float]]] | None): ``(patch side, thresholds)`` by ascending side.
        class_errors (tuple[tuple[float]] | None): Expected error of each class (rows) through each
            subnet (columns, cost order), when measured.
        class_spreads (tuple[tuple[float]] | None): Standard deviation of one patch's excess error over the full
            network, per class and subnet, when the calibration stored counts (:meth:`.ClassErrors.spread_table`).
        class_detail (tuple[float] | None): Mean detail of each class's calibration patches, when stored
            (:attr:`.ClassErrors.detail`).
        class_tiling (tuple[float] | None): What tiling adds to the full network's error in each class, when
            measured (:meth:`.ClassErrors.tiling_table`).
        subnet_correlation (tuple[float] | None): Per subnet, the correlation of an image's deviation with the full
            network's error that expected losses allow for, when measured (:attr:`.ClassErrors.correlation`).
    """
    values: tuple = None
    table: tuple = None
    class_errors: tuple = None
    class_spreads: tuple = None
    class_detail: tuple = None
    class_tiling: tuple = None
    subnet_correlation: tuple = None

    @classmethod
    def of(cls, thresholds, *, class_errors=None, class_spreads=None, class_detail=None, class_tiling=None,
           subnet_correlation=None, num_classes=None, num_subnets=None):
        """The value of ``thresholds`` (list, dict, :class:`ClassThresholds` or None: then None).

        Args:
            thresholds (list[float] | dict[int, list[float]] | ClassThresholds | None): The thresholds.
            class_errors (list[list[float]] | None): Class errors; replaces those of a given value (and its
                spreads, detail and tiling, unless given too).
            class_spreads (list[list[float]] | None): Class spreads (K x M, finite, >= 0).
            class_detail (list[float] | None): Class detail (K, finite, >= 0).
            class_tiling (list[float] | None): Class tiling costs (K, finite, >= 0).
            subnet_correlation (list[float] | None): Subnet correlations (M, in [0, 1]).
            num_classes (int | None): K, checked against the thresholds when given.
            num_subnets (int | None): M, checked against the class errors when given.
        """
        if thresholds is None:
            return None
        if isinstance(thresholds, ClassThresholds):
            value = thresholds
        elif isinstance(thresholds, dict):
            table = check_threshold_table(thresholds)
            value = cls(table=tuple((size, tuple(values)) for size, values in table.items()))
        else:
            value = cls(values=tuple(check_thresholds(thresholds)))
        if num_classes is not None and num_classes != value.num_classes:
            count = value.num_classes - 1
            raise ValueError(f'{count} thresholds define {count + 1} classes, but num_classes={num_classes}.')
        if class_errors is None:
            class_errors = value.class_errors
            class_spreads = value.class_spreads if class_spreads is None else class_spreads
            class_detail = value.class_detail if class_detail is None else class_detail
            class_tiling = value.class_tiling if class_tiling is None else class_tiling
            subnet_correlation = value.subnet_correlation if subnet_correlation is None else subnet_correlation
        if class_errors is not None:
            num_subnets = len(class_errors[0]) if num_subnets is None and class_errors else num_subnets
            class_errors = _frozen_rows(check_class_errors(class_errors, value.num_classes, num_subnets))
        if class_spreads is not None:
            if class_errors is None:
                raise ValueError('class_spreads need class_errors.')
            class_spreads = _frozen_rows(check_class_errors(class_spreads, value.num_classes, len(class_errors[0])))
        class_detail = _class_vector(class_detail, 'class_detail', value.num_classes, class_errors)
        class_tiling = _class_vector(class_tiling, 'class_tiling', value.num_classes, class_errors)
        if subnet_correlation is not None:
            if class_errors is None:
                raise ValueError('subnet_correlation needs class_errors.')
            subnet_correlation = tuple(float(v) for v in subnet_correlation)
            if len(subnet_correlation) != len(class_errors[0]) or not all(0 <= v <= 1 for v in subnet_correlation):
                raise ValueError(f'subnet_correlation must hold {len(class_errors[0])} values in [0, 1] (one per '
                                 'subnet).')
        return cls(value.values, value.table, class_errors, class_spreads, class_detail, class_tiling,
                   subnet_correlation)

    @classmethod
    def from_meta(cls, meta, num_subnets=None):
        """The thresholds of a checkpoint's ``'wbsr'`` entry (the table when stored), or None; their class errors
        are the table the planner uses, a bound on the stored means (:meth:`.ClassErrors.planning_table`)."""
        from .class_errors import ClassErrors
        thresholds = meta.get('thresholds_by_patch_size') or meta.get('thresholds')
        if meta.get('class_errors'):  # the stored means are checked before they are bounded
            check_class_errors(meta['class_errors'], len(meta['class_errors']),
                               num_subnets or len(meta['class_errors'][0]))
        errors = ClassErrors.from_meta(meta)
        return cls.of(thresholds, **({} if errors is None else errors.planning_terms()), num_subnets=num_subnets)

    @property
    def num_classes(self):
        """K: the number of thresholds + 1."""
        return len(self.values if self.table is None else self.table[0][1]) + 1

    @property
    def by_patch_size(self):
        """Whether the thresholds depend on the patch side (a table)."""
        return self.table is not None

    @property
    def source(self):
        """How inference reports them: ``'model-by-patch-size'`` or ``'model'``."""
        return 'model-by-patch-size' if self.by_patch_size else 'model'

    def as_table(self):
        """``{patch side: list}``, or None without a table."""
        return None if self.table is None else {size: list(values) for size, values in self.table}

    def at(self, patch_size):
        """The K - 1 thresholds of LR patches of side ``patch_size``."""
        return list(self.values) if self.table is None else thresholds_at(dict(self.table), patch_size)

    def class_error_lists(self):
        """The class errors as lists of lists, or None."""
        return None if self.class_errors is None else [list(row) for row in self.class_errors]

    def without_class_errors(self):
        """The same thresholds without class errors (nor their spreads, detail, tiling costs and correlations)."""
        return ClassThresholds(self.values, self.table)

    def class_spread_lists(self):
        """The class spreads as lists of lists, or None."""
        return None if self.class_spreads is None else [list(row) for row in self.class_spreads]

    def class_detail_list(self):
        """The class detail as a list, or None."""
        return None if self.class_detail is None else list(self.class_detail)

    def class_tiling_list(self):
        """The class tiling costs as a list, or None."""
        return None if self.class_tiling is None else list(self.class_tiling)

    def subnet_correlation_list(self):
        """The subnet correlations as a list, or None."""
        return None if self.subnet_correlation is None else list(self.subnet_correlation)

    def meta_entries(self, patch_size):
        """The entries of a checkpoint's ``'wbsr'`` that hold this value: ``'thresholds'`` (at ``patch_size``),
        ``'num_classes'``, ``'patch_size'``, and ``'thresholds_by_patch_size'``, ``'class_errors'`` when held."""
        entries = {'thresholds': self.at(patch_size), 'num_classes': self.num_classes, 'patch_size': int(patch_size)}
        if self.table is not None:
            entries['thresholds_by_patch_size'] = self.as_table()
        if self.class_errors is not None:
            entries['class_errors'] = self.class_error_lists()
        return entries
