"""Training: the trainer, its hooks and the command-line set-up."""

from .checkpoint import LTCheckpointer
from .trainer import LTTrainer, check_config

__all__ = ["LTCheckpointer", "LTTrainer", "check_config"]
