"""The naming rule of classifier config sections (lt_d2/config/defaults.py's docstring), checked
for every registered classifier, so classifiers added later are covered too.

Each classifier is built from a config whose sections it may not read (those of classifiers
that are not its base classes) are replaced by sentinels that fail on any read, and whose
parent node records which sections are read at all.
"""

import re

import pytest
from detectron2.config import CfgNode, get_cfg

from lt_d2.classifiers import (
    CLASSIFIER_REGISTRY,
    DENSE_CLASSIFIER_REGISTRY,
    build_classifier,
    build_dense_classifier,
)
from lt_d2.classifiers.two_stage.sigmoid_bce import SigmoidBCE
from lt_d2.config import add_lt_config

from helpers.registered import STATS, C

KINDS = {
    # registry -> (its config node under MODEL, its builder)
    CLASSIFIER_REGISTRY: ("CLASSIFIER", build_classifier),
    DENSE_CLASSIFIER_REGISTRY: ("DENSE_CLASSIFIER", build_dense_classifier),
}
REGISTERED = [(registry, name) for registry in KINDS for name, _ in sorted(registry)]


def section_name(class_name: str) -> str:
    """The rule: upper snake case, a word starting at each capital that follows a lower-case
    letter and at each capitalised word (a capital and two or more lower-case letters)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=.)(?=[A-Z][a-z]{2})", "_", class_name).upper()


@pytest.mark.parametrize(
    "name, section",
    [
        ("FocalLoss", "FOCAL_LOSS"),
        ("EqualizedFocalLoss", "EQUALIZED_FOCAL_LOSS"),
        ("FederatedSigmoidBCE", "FEDERATED_SIGMOID_BCE"),
        ("LGRSoftmaxCE", "LGR_SOFTMAX_CE"),
        ("EQLv2", "EQLV2"),
        ("EQLv2Softmax2C", "EQLV2_SOFTMAX2C"),
        ("EQLv2Focal", "EQLV2_FOCAL"),
        ("BAGS", "BAGS"),
    ],
)
def test_section_name_examples_of_the_docstring(name, section):
    assert section_name(name) == section


class _Forbidden(CfgNode):
    """A section the classifier being built must not read: any read fails, naming it."""

    def _refuse(self, key):
        raise AssertionError(f"reads {self.__dict__['section']}.{key}, a section it may not read")

    def __getattr__(self, name):
        if name.startswith("__"):  # copy / pickle protocol lookups
            raise AttributeError(name)
        self._refuse(name)

    def __getitem__(self, key):
        self._refuse(key)

    def get(self, key, default=None):
        self._refuse(key)


class _Recording(CfgNode):
    """MODEL.CLASSIFIER / MODEL.DENSE_CLASSIFIER, recording which of its sections are read."""

    def _record(self, key, value):
        if isinstance(value, CfgNode):
            self.__dict__.setdefault("read", set()).add(key)
        return value

    def __getattr__(self, name):
        return self._record(name, super().__getattr__(name))

    def __getitem__(self, key):
        return self._record(key, super().__getitem__(key))

    def get(self, key, default=None):
        return self._record(key, super().get(key, default))


def _sections(node: CfgNode):
    return sorted(k for k, v in node.items() if isinstance(v, CfgNode))


def allowed_sections(registry, cls):
    """Its own section and those of the registered classes it derives from."""
    return {
        section_name(base.__name__)
        for base in cls.__mro__
        if base.__name__ in registry and registry.get(base.__name__) is base
    }


def sections_read(registry, cls):
    """The sections ``cls`` reads when built from a config (AssertionError on a forbidden one)."""
    node_name, build = KINDS[registry]
    cfg = get_cfg()
    add_lt_config(cfg)
    # EQL's tail: categories 0-3 (the default lambda selects none of STATS, which EQL refuses)
    cfg.MODEL.CLASSIFIER.EQL.LAMBDA = 0.1
    node = cfg.MODEL[node_name]
    node.NAME = cls.__name__
    allowed = allowed_sections(registry, cls)
    recording = _Recording()
    for key, value in node.items():
        if isinstance(value, CfgNode) and key not in allowed:
            value = _Forbidden()
            value.__dict__["section"] = f"MODEL.{node_name}.{key}"
        dict.__setitem__(recording, key, value)
    cfg.MODEL[node_name] = recording
    build(cfg, C, STATS)
    return recording.__dict__.get("read", set())


@pytest.mark.parametrize("registry, name", REGISTERED, ids=[n for _, n in REGISTERED])
def test_classifier_reads_its_own_and_its_bases_sections_only(registry, name):
    cls = registry.get(name)
    assert name == cls.__name__, "registered under its class name"
    read = sections_read(registry, cls)  # a forbidden section fails inside
    node = get_cfg()
    add_lt_config(node)
    own = section_name(name)
    if own in node.MODEL[KINDS[registry][0]]:
        assert own in read, f"{name} does not read its own section {own}"


@pytest.mark.parametrize("registry", list(KINDS), ids=[k for k, _ in KINDS.values()])
def test_every_section_belongs_to_a_registered_classifier(registry):
    cfg = get_cfg()
    add_lt_config(cfg)
    sections = _sections(cfg.MODEL[KINDS[registry][0]])
    assert sections
    assert set(sections) <= {section_name(name) for name, _ in registry}


def test_the_check_catches_a_classifier_reading_another_ones_section():
    class ReadsSeesaw(SigmoidBCE):
        @classmethod
        def from_config(cls, cfg, num_classes):
            return {**super().from_config(cfg, num_classes), "prior": cfg.MODEL.CLASSIFIER.SEESAW.P}

    CLASSIFIER_REGISTRY.register(ReadsSeesaw)
    try:
        with pytest.raises(AssertionError, match="MODEL.CLASSIFIER.SEESAW.P"):
            sections_read(CLASSIFIER_REGISTRY, ReadsSeesaw)
    finally:
        CLASSIFIER_REGISTRY._obj_map.pop("ReadsSeesaw")


def test_subclass_reads_its_base_sections():
    from lt_d2.classifiers.two_stage.droploss import DropLoss

    assert sections_read(CLASSIFIER_REGISTRY, DropLoss) == {"DROP_LOSS", "EQL", "SIGMOID_BCE"}
