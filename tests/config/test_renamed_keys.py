"""Renamed config sections (lt_d2.config.merge.RENAMED_SECTIONS) keep working for one release:
an old key in a YAML file or on the command line sets the new key, with a warning naming it;
old and new set to different values are refused; the shipped configs use the new names only."""

import glob
import logging
import os

import pytest
from detectron2.config import get_cfg

from lt_d2.config import add_lt_config, merge_lt_config
from lt_d2.config.merge import RENAMED_SECTIONS, renamed_key
from lt_d2.evaluation.paper_table import main, read_run

from helpers.config import REPO, load_config

EFL_DEMO = os.path.join(REPO, "configs", "demo", "efl", "efl_retinanet_R_18_FPN_demo.yaml")
NEW_SCALE = "MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS.SCALE"
OLD_SCALE = "MODEL.DENSE_CLASSIFIER.EFL.SCALE"


@pytest.fixture
def warnings_of_merge(caplog):
    """The messages lt_d2.config.merge logs at WARNING (its own handler: train_net.setup may
    have stopped the 'lt_d2' loggers' propagation in an earlier test)."""
    logger = logging.getLogger("lt_d2.config.merge")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="lt_d2.config.merge")
    yield lambda: sorted({r.getMessage() for r in caplog.records if r.name == "lt_d2.config.merge"})
    logger.removeHandler(caplog.handler)


def _yaml(path, text):
    path.write_text(text)
    return str(path)


def _cfg(config_file="", opts=()):
    cfg = get_cfg()
    add_lt_config(cfg)
    merge_lt_config(cfg, config_file, opts)
    return cfg


def test_renamed_keys_table():
    assert renamed_key(OLD_SCALE) == NEW_SCALE
    assert renamed_key("MODEL.DENSE_CLASSIFIER.FOCAL.PRIOR") == (
        "MODEL.DENSE_CLASSIFIER.FOCAL_LOSS.PRIOR"
    )
    assert renamed_key("MODEL.DENSE_CLASSIFIER.FOCAL_LOSS.PRIOR") is None  # a prefix only
    assert renamed_key("MODEL.CLASSIFIER.EQL.LAMBDA") is None
    cfg = _cfg()
    for old, new in RENAMED_SECTIONS.items():
        assert new.split(".")[-1] in cfg.MODEL[new.split(".")[1]]
        assert old.split(".")[-1] not in cfg.MODEL[old.split(".")[1]]


def test_old_key_in_yaml_sets_the_new_key_with_a_warning(tmp_path, warnings_of_merge):
    leaf = _yaml(
        tmp_path / "old.yaml",
        f'_BASE_: "{EFL_DEMO}"\nMODEL:\n  DENSE_CLASSIFIER:\n    EFL:\n      SCALE: 4.0\n',
    )
    cfg = _cfg(leaf)
    assert cfg.MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS.SCALE == 4.0
    assert cfg.MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS.GAMMA_B == 2.0  # the rest: defaults
    assert "EFL" not in cfg.MODEL.DENSE_CLASSIFIER
    (message,) = warnings_of_merge()
    assert leaf in message and OLD_SCALE in message and f"use {NEW_SCALE}" in message


def test_old_key_in_a_leaf_overrides_its_bases_new_key(tmp_path, warnings_of_merge):
    # Base-RetinaNet-demo.yaml sets FOCAL_LOSS.PRIOR 0.001: a user's leaf written with the old
    # name overrides it, as it did before the rename
    leaf = _yaml(
        tmp_path / "old.yaml",
        f'_BASE_: "{EFL_DEMO}"\nMODEL:\n  DENSE_CLASSIFIER:\n    FOCAL:\n      PRIOR: 0.02\n',
    )
    assert _cfg(leaf).MODEL.DENSE_CLASSIFIER.FOCAL_LOSS.PRIOR == 0.02
    assert len(warnings_of_merge()) == 1


def test_old_key_in_a_base_file_is_renamed_there(tmp_path, warnings_of_merge):
    base = _yaml(
        tmp_path / "base.yaml",
        f'_BASE_: "{EFL_DEMO}"\nMODEL:\n  CLASSIFIER:\n    FEDERATED:\n      NUM_CLASSES: 20\n',
    )
    leaf = _yaml(tmp_path / "leaf.yaml", '_BASE_: "base.yaml"\nSEED: 3\n')
    cfg = _cfg(leaf)
    assert cfg.MODEL.CLASSIFIER.FEDERATED_SIGMOID_BCE.NUM_CLASSES == 20
    assert cfg.SEED == 3
    (message,) = warnings_of_merge()
    assert base in message and "MODEL.CLASSIFIER.FEDERATED_SIGMOID_BCE.NUM_CLASSES" in message


def test_old_key_on_the_command_line_sets_the_new_key_with_a_warning(warnings_of_merge):
    cfg = load_config(EFL_DEMO, OLD_SCALE, 4.0, "MODEL.DENSE_CLASSIFIER.FOCAL.GAMMA", 1.5)
    assert cfg.MODEL.DENSE_CLASSIFIER.EQUALIZED_FOCAL_LOSS.SCALE == 4.0
    assert cfg.MODEL.DENSE_CLASSIFIER.FOCAL_LOSS.GAMMA == 1.5
    messages = warnings_of_merge()
    assert len(messages) == 2
    assert any(OLD_SCALE in m and f"use {NEW_SCALE}" in m for m in messages)
    assert all(m.startswith("command line") for m in messages)


def test_old_and_new_key_in_one_file_with_different_values_are_refused(tmp_path):
    both = _yaml(
        tmp_path / "both.yaml",
        f'_BASE_: "{EFL_DEMO}"\nMODEL:\n  DENSE_CLASSIFIER:\n    EFL:\n      SCALE: 4.0\n'
        f"    EQUALIZED_FOCAL_LOSS:\n      SCALE: 6.0\n",
    )
    with pytest.raises(ValueError) as err:
        _cfg(both)
    assert both in str(err.value)
    assert f"{OLD_SCALE} = 4.0" in str(err.value) and f"{NEW_SCALE} = 6.0" in str(err.value)


def test_old_and_new_key_on_the_command_line_with_different_values_are_refused():
    with pytest.raises(ValueError, match=rf"{OLD_SCALE} = '4.0'.*{NEW_SCALE} = '6.0'"):
        load_config(EFL_DEMO, OLD_SCALE, 4.0, NEW_SCALE, 6.0)


def test_old_and_new_key_with_equal_values_are_accepted(tmp_path, warnings_of_merge):
    assert load_config(EFL_DEMO, OLD_SCALE, "4.0", NEW_SCALE, "4.00").MODEL.DENSE_CLASSIFIER[
        "EQUALIZED_FOCAL_LOSS"
    ].SCALE == pytest.approx(4.0)
    assert len(warnings_of_merge()) == 1


def test_config_of_another_detectron2_version_is_refused(tmp_path):
    old = _yaml(tmp_path / "v1.yaml", f'_BASE_: "{EFL_DEMO}"\nVERSION: 1\n')
    with pytest.raises(ValueError, match=r"v1.yaml is a detectron2 VERSION 1 config.*upgrade"):
        _cfg(old)


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    bad = _yaml(tmp_path / "bad.yaml", f'_BASE_: "{EFL_DEMO}"\nMODEL:\n  NO_SUCH_KEY: 1\n')
    with pytest.raises(KeyError, match=r"bad.yaml.*MODEL.NO_SUCH_KEY.*spelling"):
        _cfg(bad)


def test_a_run_written_with_old_keys_matches_its_config_row(tmp_path):
    # a RetinaNet EFL run's config.yaml as an lt_d2 with the old section names wrote it: the
    # paper table lists the keys only one side has and matches the run on the others
    cfg = load_config(
        os.path.join(REPO, "configs", "efl", "efl_retinanet_R_50_FPN_2x_lvis_v1.yaml")
    )
    dumped = cfg.dump().replace("EQUALIZED_FOCAL_LOSS:", "EFL:").replace("FOCAL_LOSS:", "FOCAL:")
    assert "    EFL:\n" in dumped and "    FOCAL:\n" in dumped
    (tmp_path / "config.yaml").write_text(dumped)
    (tmp_path / "metrics.json").write_text('{"bbox/AP": 20.0, "iteration": 179999}\n')
    run = read_run(str(tmp_path))
    assert OLD_SCALE in run.unknown and NEW_SCALE in run.absent
    table = main([str(tmp_path)])
    assert "EFL Table 6, RetinaNet + EFL" in table
    assert f"typed otherwise: {', '.join(run.unknown)}; not in the run:" in table


SHIPPED = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))


def test_every_shipped_config_loads_without_a_deprecation_warning(warnings_of_merge):
    assert len(SHIPPED) > 100
    for path in SHIPPED:
        _cfg(path)
    assert warnings_of_merge() == []
