"""Gradient-projection dynamic inference of WBSR supernets: the engine and what it is built from (tiling and
blending, projection, class thresholds, calibration, checkpoints, CUDA graphs)."""
from wbsr_runtime.class_thresholds import ClassThresholds
from wbsr_runtime.planner import InferencePlan
from wbsr_runtime.report import InferenceReport

from .engine import DynamicInferenceEngine

__all__ = ['ClassThresholds', 'DynamicInferenceEngine', 'InferencePlan', 'InferenceReport']
