"""ClassThresholds: one value for a checkpoint's class thresholds, validated where it enters."""
import dataclasses
import math

import pytest
import torch
from conftest import TINY_RESNET

from wbsr_plugin.inference import DynamicInferenceEngine
from wbsr_plugin.inference.checkpoint import make_wbsr_meta
from wbsr_runtime.class_errors import ClassErrors
from wbsr_runtime.class_thresholds import ClassThresholds

from basicsr.archs import build_network

TABLE = {16: [1., 2., 3.], 64: [3., 6., 9.]}
ERRORS = [[0.4, 0.3, 0.2, 0.1]] * 4


def test_a_table_is_interpolated_in_log_patch_side_and_a_list_holds_everywhere():
    table = ClassThresholds.of({'64': [3, 6, 9], 16: [1, 2, 3]})
    assert table.by_patch_size and table.source == 'model-by-patch-size' and table.num_classes == 4
    assert table.as_table() == TABLE and list(dict(table.table)) == [16, 64]
    assert table.at(32) == pytest.approx([2., 4., 6.])  # log 32 is halfway between log 16 and log 64
    assert table.at(8) == [1., 2., 3.] and table.at(128) == [3., 6., 9.]
    single = ClassThresholds.of([1, 2])
    assert not single.by_patch_size and single.source == 'model' and single.at(5) == single.at(500) == [1., 2.]
    assert single.num_classes == 3 and single.as_table() is None
    assert ClassThresholds.of(None) is None and ClassThresholds.of(single) == single


def test_the_value_is_immutable_and_validated_once_with_named_errors():
    value = ClassThresholds.of(TABLE, class_errors=ERRORS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.table = None
    assert hash(value) == hash(ClassThresholds.of(TABLE, class_errors=ERRORS))
    cases = [
        ((TABLE,), {'num_classes': 3}, '3 thresholds define 4 classes, but num_classes=3.'),
        (([2., 1.],), {}, 'thresholds must be non-decreasing, got [2.0, 1.0].'),
        (([1., math.nan],), {}, 'thresholds must be finite numbers'),
        (({16: [1.], 32: [1., 2.]},), {}, 'every patch size of a threshold table needs the same number'),
        (({1: [1.]},), {}, 'threshold table keys must be patch sides >= 2, got 1.'),
        ((TABLE,), {'class_errors': ERRORS[:3]}, 'class_errors must be 4 rows (classes) of 4 values (subnets)'),
        ((TABLE,), {'class_errors': ERRORS, 'num_subnets': 9}, 'class_errors must be 4 rows (classes) of 9 values'),
        ((TABLE,), {'class_errors': [[-1.] * 4] * 4}, 'class_errors must be finite numbers >= 0.'),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError) as err:
            ClassThresholds.of(*args, **kwargs)
        assert str(err.value).startswith(message)


def test_checkpoint_entries_round_trip():
    value = ClassThresholds.of(TABLE, class_errors=ERRORS)
    entries = value.meta_entries(32)
    assert entries == {'thresholds': pytest.approx([2., 4., 6.]), 'num_classes': 4, 'patch_size': 32,
                       'thresholds_by_patch_size': TABLE, 'class_errors': ERRORS}
    # stored without counts, the class errors are planned by their bound (wbsr_runtime/class_errors.py)
    bound = ClassErrors(tuple(map(tuple, ERRORS))).planning_table()
    assert ClassThresholds.from_meta(entries) == ClassThresholds.of(TABLE, class_errors=bound)
    assert ClassThresholds.from_meta({'thresholds': [1., 2.]}) == ClassThresholds.of([1., 2.])
    # a checkpoint's entry holds the same value
    net = build_network(dict(TINY_RESNET, upscale=4))
    meta = make_wbsr_meta(net, value, 32, iteration=7)
    assert ClassThresholds.from_meta(meta) == ClassThresholds.of(TABLE, class_errors=bound) and meta['iter'] == 7
    assert make_wbsr_meta(net, TABLE, 32, class_errors=ERRORS, iteration=7) == meta


def test_the_engine_takes_the_value_or_its_raw_forms_alike():
    net = build_network(dict(TINY_RESNET, upscale=4)).eval()
    lq = torch.rand(1, 3, 20, 20)
    table = {8: [0.5 * k for k in range(1, 10)], 16: [1. * k for k in range(1, 10)]}
    errors = [[1. / (1 + k + m) for m in range(4)] for k in range(10)]
    raw = DynamicInferenceEngine(net, thresholds=table, class_errors=errors, patch_size=10, overlap=2, budget=0.6)
    value = DynamicInferenceEngine(net, thresholds=ClassThresholds.of(table, class_errors=errors), patch_size=10,
                                   overlap=2, budget=0.6)
    assert raw.thresholds == value.thresholds and raw.class_errors == value.class_errors == errors
    with torch.no_grad():
        (sr_raw, report_raw), (sr_value, report_value) = raw.run(lq), value.run(lq)
    assert torch.equal(sr_raw, sr_value) and report_raw.histogram == report_value.histogram
    assert report_value.plan.thresholds == pytest.approx(ClassThresholds.of(table).at(report_value.plan.patch_size))
    # class errors given beside a value replace its own
    other = [[0.] * 4] * 10
    assert DynamicInferenceEngine(net, thresholds=value.thresholds, class_errors=other).class_errors == other
