"""Baselines of the reproduction: ClassSR (network, model) and ARM (evaluation); importing this package
registers WBSRClassSRNet and WBSRClassSRModel."""
from . import classsr_arch, classsr_model  # noqa: F401
