"""Gradient-projection dynamic inference of WBSR supernets (tiling, projection, blending, checkpoints)."""
from wbsr_plugin.data.difficulty import quantile_thresholds

from .engine import DynamicInferenceEngine, InferencePlan, InferenceReport
from .projection import budget_subnets, class_to_subnet, classify, cost_target_subnets

__all__ = [
    'DynamicInferenceEngine', 'InferencePlan', 'InferenceReport', 'budget_subnets', 'class_to_subnet', 'classify',
    'cost_target_subnets', 'quantile_thresholds'
]
