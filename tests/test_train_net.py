"""train_net.py's setup: lt_d2's log lines reach OUTPUT_DIR/log.txt; --eval-only without
MODEL.WEIGHTS is refused before anything is built."""

import logging

import pytest

from helpers.train_net import demo_args, import_train_net, loggers_restored


def test_lt_d2_log_lines_reach_log_txt(tmp_path):
    with loggers_restored():
        import_train_net().setup(demo_args("OUTPUT_DIR", str(tmp_path)))
        logging.getLogger("lt_d2.classifiers.two_stage.bags").info("probe-info: BAGS groups")
        logging.getLogger("lt_d2.engine.hooks").warning("probe-warning")
        for h in logging.getLogger("lt_d2").handlers:
            h.flush()
    text = (tmp_path / "log.txt").read_text()
    assert "probe-info: BAGS groups" in text and "probe-warning" in text


def test_eval_only_without_weights_is_refused(tmp_path):
    with loggers_restored(), pytest.raises(ValueError, match=r"--eval-only.*MODEL.WEIGHTS"):
        import_train_net().setup(demo_args("--eval-only", "OUTPUT_DIR", str(tmp_path)))
