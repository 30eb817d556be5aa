"""wbsr_runtime: dynamic WBSR super-resolution with numpy and OpenVINO or ONNX Runtime, without torch or basicsr.

It runs what ``wbsr-export --dynamic`` writes (every subnet as ONNX, the thresholds, class errors and planning
defaults in ``manifest.json``)::

    from wbsr_runtime import DynamicModel
    model = DynamicModel.load('model.wbsr')       # the exported folder
    sr, report = model.run(lq)                     # lq: H x W x 3 RGB float32 in [0, 1]

The planning pieces here (tile geometry, class thresholds and errors, levels, planning targets, time rules,
output names and file publishing) are also those of the torch engine in ``wbsr_plugin``.
"""
from .engine import DynamicModel
from .planning_target import PlanningTarget
from .report import InferenceReport

__version__ = '0.1.0'

__all__ = ['DynamicModel', 'InferenceReport', 'PlanningTarget']
