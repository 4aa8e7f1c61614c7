"""merge_lt_config: an unknown key names the YAML file or the command line it came from and
the fix (yacs alone names only the key)."""

import pytest
from detectron2.config import get_cfg

from lt_d2.config import add_lt_config, merge_lt_config

from helpers.config import DEMO_CONFIG, load_config


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{DEMO_CONFIG}"\nMODEL:\n  NO_SUCH_KEY: 1\n')
    cfg = get_cfg()
    add_lt_config(cfg)
    with pytest.raises(KeyError, match=r"bad.yaml.*MODEL.NO_SUCH_KEY.*spelling"):
        merge_lt_config(cfg, str(bad))


def test_unknown_key_on_the_command_line_names_it():
    with pytest.raises(KeyError, match=r"command line.*MODEL.NO_SUCH_KEY.*spelling"):
        load_config(DEMO_CONFIG, "MODEL.NO_SUCH_KEY", "1")


def test_a_key_without_a_value_on_the_command_line_is_named():
    with pytest.raises(KeyError, match=r"command line.*every key has a value"):
        load_config(DEMO_CONFIG, "SOLVER.MAX_ITER")


def test_file_then_command_line_set_the_keys(tmp_path):
    leaf = tmp_path / "leaf.yaml"
    leaf.write_text(f'_BASE_: "{DEMO_CONFIG}"\nSEED: 3\nSOLVER:\n  MAX_ITER: 7\n')
    cfg = load_config(str(leaf), "SOLVER.MAX_ITER", "9")
    assert (cfg.SEED, cfg.SOLVER.MAX_ITER) == (3, 9)
