"""The one way lt_d2 merges a YAML file and command-line ``opts`` into a config.

:func:`merge_lt_config` is detectron2's ``merge_from_file`` + ``merge_from_list``; what it adds
is the error every caller needs (train_net.py, the tests, the benchmarks, the paper tables):
an unknown key names the file or the command line it came from and the fix, where yacs's
KeyError names only the key.
"""

from typing import Sequence

from detectron2.config import CfgNode

__all__ = ["merge_lt_config"]


def merge_lt_config(cfg: CfgNode, config_file: str = "", opts: Sequence = ()) -> None:
    """Merge ``config_file`` (with its ``_BASE_`` files), then ``opts`` (KEY VALUE pairs, as
    on train_net.py's command line) into ``cfg`` in place; ``cfg`` holds lt_d2's keys
    (:func:`lt_d2.config.add_lt_config`). Unknown keys raise KeyError naming the file or the
    command line."""
    if config_file:
        try:
            cfg.merge_from_file(config_file)
        except KeyError as e:
            raise KeyError(
                f"{config_file}: {e.args[0]}. Check the key's spelling; lt_d2's keys are "
                f"listed with their defaults in lt_d2/config/defaults.py"
            ) from e
    if opts:
        try:
            cfg.merge_from_list(list(opts))
        except (KeyError, AssertionError) as e:  # yacs: unknown key / odd number of KEY VALUE
            raise KeyError(
                f"command line: {e.args[0] if e.args else e}. Check the key's spelling (lt_d2's "
                f"keys are in lt_d2/config/defaults.py) and that every key has a value"
            ) from e
