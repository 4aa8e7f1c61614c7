"""lt_d2: gradient-balancing classifiers and diagnostics for long-tailed detection.

Importing the package registers its classifiers, heads and datasets with detectron2.
"""

from . import classifiers, data, modeling  # noqa: F401  (registration)
from .config import add_lt_config

data.register_demo_datasets()  # lvis_demo_train / lvis_demo_val, generated on first load

__version__ = "0.1.0"
__all__ = ["add_lt_config"]
