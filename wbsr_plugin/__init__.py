"""WBSR for BasicSR: importing this package registers its architectures, datasets, losses and models."""
# isort: off
from . import compat  # noqa: F401  (must run before anything imports basicsr)
from .archs import *  # noqa: F401, F403
from .data import *  # noqa: F401, F403
from .losses import *  # noqa: F401, F403
from .models import *  # noqa: F401, F403
from .data.training_progress import install_progress_hook

install_progress_hook()  # every BasicSR model tells HES datasets the current iteration

__version__ = '0.1.0'
