"""lt_d2's configuration: ``add_lt_config(cfg)`` adds every key with the papers' defaults;
``merge_lt_config(cfg, config_file, opts)`` merges a YAML file and command-line options."""

from .defaults import add_lt_config
from .merge import merge_lt_config

__all__ = ["add_lt_config", "merge_lt_config"]
