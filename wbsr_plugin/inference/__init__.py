"""Gradient-projection dynamic inference of WBSR supernets: the engine and what it is built from (tiling and
blending, projection, class thresholds, calibration, checkpoints, CUDA graphs)."""
from .class_thresholds import ClassThresholds
from .engine import DynamicInferenceEngine, InferenceReport
from .planning import InferencePlan

__all__ = ['ClassThresholds', 'DynamicInferenceEngine', 'InferencePlan', 'InferenceReport']
