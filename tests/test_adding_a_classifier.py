"""docs/adding_a_classifier.md's recipe, run as written: its code blocks are extracted,
the classifier file is imported under the module name its path gives (registering the class),
its test is run, its YAML file is merged over the repository's demo config and the classifier
built from it, and its train_net.py lines are checked against train_net.py, so the recipe
cannot drift from the interface it documents."""

import os
import re
import sys
import types

import pytest
import torch
from detectron2.config import get_cfg

from lt_d2.classifiers import CLASSIFIER_REGISTRY, build_classifier
from lt_d2.config import add_lt_config, merge_lt_config
from lt_d2.data.category_stats import CategoryStats

from helpers.config import REPO

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MODULE_FILE = "my_lt/class_balanced_ce.py"
TRAIN_NET = "my_lt/train_net.py"
YAML_FILE = "my_lt/configs/class_balanced_mask_rcnn_R_18_FPN_demo.yaml"
TEST_FILE = "my_lt/tests/test_class_balanced_ce.py"


PAGE = "docs/adding_a_classifier.md"


def code_blocks():
    """{the path a block names on its first line: its code}."""
    blocks = {}
    for _language, code in FENCE.findall(open(os.path.join(REPO, PAGE)).read()):
        first = code.splitlines()[0]
        assert first.startswith("# "), f"a recipe block names its file first: {first!r}"
        blocks[first[2:].split(":")[0]] = code
    return blocks


BLOCKS = code_blocks()


@pytest.fixture
def recipe_module():
    """The recipe's classifier file imported as ``my_lt.class_balanced_ce``; removed again,
    with its registration, afterwards."""
    package = types.ModuleType("my_lt")
    package.__path__ = []
    module = types.ModuleType("my_lt.class_balanced_ce")
    sys.modules.update({"my_lt": package, "my_lt.class_balanced_ce": module})
    try:
        exec(compile(BLOCKS[MODULE_FILE], f"{PAGE} ({MODULE_FILE})", "exec"), module.__dict__)
        yield module
    finally:
        sys.modules.pop("my_lt.class_balanced_ce", None)
        sys.modules.pop("my_lt", None)
        CLASSIFIER_REGISTRY._obj_map.pop("ClassBalancedSoftmaxCE", None)


def test_recipe_has_its_parts():
    assert set(BLOCKS) == {MODULE_FILE, TRAIN_NET, YAML_FILE, TEST_FILE}


def test_recipe_train_net_lines_fit_train_net():
    lines = [line for line in BLOCKS[TRAIN_NET].splitlines()[1:] if line.strip() != "..."]
    assert lines[0] == (
        "from my_lt.class_balanced_ce import add_class_balanced_ce_config  # registers the "
        "classifier"
    )
    added = "    add_class_balanced_ce_config(cfg)"
    assert lines[1:] == ["    add_lt_config(cfg)", added, lines[3]]
    # without the added line, the setup lines are train_net.py's own
    assert f"{lines[1]}\n{lines[3]}\n" in open(os.path.join(REPO, "train_net.py")).read()


def test_recipe_test_passes(recipe_module):
    namespace = {}
    exec(compile(BLOCKS[TEST_FILE], f"{PAGE} ({TEST_FILE})", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert tests
    for test in tests:
        test()


def test_recipe_builds_from_its_config(recipe_module, tmp_path):
    cfg = get_cfg()
    add_lt_config(cfg)
    recipe_module.add_class_balanced_ce_config(cfg)
    # the YAML's _BASE_ points into an lt_d2 checkout next to my_lt/: this repository
    text = BLOCKS[YAML_FILE].replace('_BASE_: "../../lt_d2/', f'_BASE_: "{REPO}/')
    assert REPO in text
    (tmp_path / "cb.yaml").write_text(text)
    merge_lt_config(cfg, str(tmp_path / "cb.yaml"))
    assert cfg.MODEL.CLASSIFIER.NAME == "ClassBalancedSoftmaxCE"
    assert cfg.MODEL.CLASSIFIER.CLASS_BALANCED_SOFTMAX_CE.BETA == 0.99

    # the demo dataset's 10 categories; counts chosen here
    counts = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    stats = CategoryStats(instance_counts=counts, image_counts=counts, num_images=1000)
    clf = build_classifier(cfg, 10, stats)
    assert isinstance(clf, recipe_module.ClassBalancedSoftmaxCE)
    assert clf.num_logits == 11
    # eq. 3 with beta 0.99, scaled to sum 10; background 1
    raw = [(1 - 0.99) / (1 - 0.99**n) for n in counts]
    expected = [10 * w / sum(raw) for w in raw] + [1.0]
    torch.testing.assert_close(clf.class_weights, torch.tensor(expected))
    # an empty batch still gives a loss that backpropagates
    logits = torch.zeros(0, 11, requires_grad=True)
    clf.losses(logits, torch.zeros(0, dtype=torch.long))["loss_cls"].backward()
    assert logits.grad.shape == (0, 11)
