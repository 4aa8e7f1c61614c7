"""The one way lt_d2 merges a YAML file and command-line ``opts`` into a config.

:func:`merge_lt_config` is detectron2's ``merge_from_file`` + ``merge_from_list`` with two
additions that every caller needs (train_net.py, the tests, the benchmarks, the paper tables):
errors that name the file or the command line and the fix, and config sections renamed in
lt_d2 0.1 (named after their classifiers, see :mod:`lt_d2.config.defaults`) still accepted
under their old names, translated with a warning that names the new key, for one release.

detectron2's own upgrade mechanism (``detectron2.config.compat``, ``VERSION``) versions
detectron2's keys; an extension cannot bump that number, so the renames are kept here.
"""

import ast
import logging
from typing import Any, Dict, List, Optional, Sequence

import yaml
from detectron2.config import CfgNode

__all__ = ["RENAMED_SECTIONS", "merge_lt_config", "renamed_key"]

logger = logging.getLogger(__name__)

#: Old config section -> its new name. The old names are accepted with a warning in lt_d2 0.1
#: only; the release after it refuses them as unknown keys.
RENAMED_SECTIONS: Dict[str, str] = {
    "MODEL.CLASSIFIER.FEDERATED": "MODEL.CLASSIFIER.FEDERATED_SIGMOID_BCE",
    "MODEL.DENSE_CLASSIFIER.FOCAL": "MODEL.DENSE_CLASSIFIER.FOCAL_LOSS",
    "MODEL.DENSE_CLASSIFIER.EFL": "MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS",
}


def renamed_key(key: str) -> Optional[str]:
    """The current name of a full key (``"MODEL.DENSE_CLASSIFIER.EFL.SCALE"`` ->
    ``"MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS.SCALE"``); None if it was not renamed."""
    for old, new in RENAMED_SECTIONS.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return None


def _deprecated(where: str, old_key: str, new_key: str) -> None:
    logger.warning(
        "%s: config key %s is deprecated, use %s (the old name is accepted in lt_d2 0.1 only)",
        where,
        old_key,
        new_key,
    )


def _conflict(where: str, old_key: str, old_value, new_key: str, new_value) -> ValueError:
    return ValueError(
        f"{where} sets both {old_key} = {old_value!r} (its deprecated name) and {new_key} = "
        f"{new_value!r}: keep only {new_key}"
    )


def _node(tree, path: str) -> Optional[Dict[str, Any]]:
    """The dict at dotted ``path`` of a loaded YAML tree, or None."""
    for name in path.split("."):
        tree = tree.get(name) if isinstance(tree, dict) else None
    return tree if isinstance(tree, dict) else None


class _RenamingLoader(CfgNode):
    """detectron2's YAML loader, renaming old sections in each file of a ``_BASE_`` chain
    (fvcore's ``load_yaml_with_base`` loads every base through this classmethod)."""

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> Dict[str, Any]:
        # this file merged over its bases; the bases' old keys are already renamed, so an old
        # key here is this file's own and overrides its bases, as any key does
        loaded = super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)
        own = None
        for old, new in RENAMED_SECTIONS.items():
            old_node = _node(loaded, old)
            if old_node is None:
                continue
            if own is None:  # what this file itself sets
                with cls._open_cfg(filename) as f:
                    own = (yaml.unsafe_load if allow_unsafe else yaml.safe_load)(f)
            own_new = _node(own, new) or {}
            parent, leaf = old.rsplit(".", 1)
            del _node(loaded, parent)[leaf]
            target = loaded
            for name in new.split("."):
                target = target.setdefault(name, {})
            for key, value in old_node.items():
                if key in own_new and own_new[key] != value:
                    raise _conflict(filename, f"{old}.{key}", value, f"{new}.{key}", own_new[key])
                target[key] = value
                _deprecated(filename, f"{old}.{key}", f"{new}.{key}")
        return loaded


def _decoded(value) -> Any:
    """A command-line value as yacs decodes it (a Python literal, else the string)."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def _renamed_opts(opts: Sequence) -> List:
    """``opts`` (KEY VALUE ...) with renamed keys replaced by their new names."""
    opts = list(opts)
    given = {str(k): v for k, v in zip(opts[0::2], opts[1::2])}
    for i in range(0, len(opts) - 1, 2):
        old_key = str(opts[i])
        new_key = renamed_key(old_key)
        if new_key is None:
            continue
        value = opts[i + 1]
        if new_key in given and _decoded(given[new_key]) != _decoded(value):
            raise _conflict("the command line", old_key, value, new_key, given[new_key])
        _deprecated("command line", old_key, new_key)
        opts[i] = new_key
    return opts


def merge_lt_config(cfg: CfgNode, config_file: str = "", opts: Sequence = ()) -> None:
    """Merge ``config_file`` (with its ``_BASE_`` files), then ``opts`` (KEY VALUE pairs, as
    on train_net.py's command line) into ``cfg`` in place; ``cfg`` holds lt_d2's keys
    (:func:`lt_d2.config.add_lt_config`).

    A key of a section in :data:`RENAMED_SECTIONS` is set under its new name, with a warning
    naming it; an old key in a file overrides its ``_BASE_`` files' new one, as any key does,
    and one file (or the command line) that sets the old and the new name to different values
    is refused. Unknown keys raise KeyError naming the file or the command line. A file of
    another detectron2 config VERSION is refused (detectron2's own ``merge_from_file`` would
    upgrade it; every lt_d2 config is VERSION 2).
    """
    if config_file:
        loaded = _RenamingLoader.load_yaml_with_base(config_file, allow_unsafe=True)
        version = loaded.get("VERSION", cfg.VERSION)
        if version != cfg.VERSION:
            raise ValueError(
                f"{config_file} is a detectron2 VERSION {version} config; lt_d2 merges "
                f"VERSION {cfg.VERSION} configs: convert it with detectron2.config.compat's "
                f"upgrade_config"
            )
        try:
            cfg.merge_from_other_cfg(type(cfg)(loaded))
        except KeyError as e:
            raise KeyError(
                f"{config_file}: {e.args[0]}. Check the key's spelling; lt_d2's keys are "
                f"listed with their defaults in lt_d2/config/defaults.py"
            ) from e
    if opts:
        try:
            cfg.merge_from_list(_renamed_opts(opts))
        except (KeyError, AssertionError) as e:  # yacs: unknown key / odd number of KEY VALUE
            raise KeyError(
                f"command line: {e.args[0] if e.args else e}. Check the key's spelling (lt_d2's "
                f"keys are in lt_d2/config/defaults.py) and that every key has a value"
            ) from e
