"""Gradient-projection dynamic inference of WBSR supernets (tiling, projection, blending, checkpoints)."""
from .engine import DynamicInferenceEngine, InferencePlan, InferenceReport
from .projection import (budget_subnets, class_to_subnet, classify, cost_target_subnets, quantile_thresholds)

__all__ = [
    'DynamicInferenceEngine', 'InferencePlan', 'InferenceReport', 'budget_subnets', 'class_to_subnet', 'classify',
    'cost_target_subnets', 'quantile_thresholds'
]
