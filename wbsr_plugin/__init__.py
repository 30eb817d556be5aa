"""WBSR for BasicSR: importing this package registers its architectures, datasets, losses and models (and the
ClassSR baseline)."""
# isort: off
from .utils import compat  # noqa: F401  (must run before anything imports basicsr)
from .archs import *  # noqa: F401, F403
from .data import *  # noqa: F401, F403
from .losses import *  # noqa: F401, F403
from .models import *  # noqa: F401, F403
from . import baselines  # noqa: F401  (WBSRClassSRNet, WBSRClassSRModel)
from .data.resume_position import install_resume_hook
from .data.training_progress import install_progress_hook

install_progress_hook()  # every BasicSR model tells HES datasets the current iteration
install_resume_hook()  # the training sampler knows where its epoch began and skips what a resumed run did

__version__ = '0.1.0'
