"""Text that names files names files that exist: every ``configs/...`` path in the README, the
docs/ pages, the scripts, lt_d2's sources and the configs' comments is in the repository, and
every other cited ``.md`` / ``.py`` / ``.yaml`` file either is too or is marked as someone
else's (the authors' official code, detectron2, ...) on the line that cites it. Every docs/
page is linked from the README."""

import fnmatch
import glob
import os
import re

import pytest

from helpers.config import REPO

SOURCES = sorted(
    os.path.relpath(p, REPO)
    for pattern in (
        "README.md",
        "docs/*.md",
        "datasets/README.md",
        "Makefile",
        "setup.py",
        "train_net.py",
        "lt_d2/**/*.py",
        "lt_d2/**/*.json",
        "configs/**/*.yaml",
        "benchmarks/**/*.py",
    )
    for p in glob.glob(os.path.join(REPO, pattern), recursive=True)
)
# a repository path: "configs/" not preceded by another path (another repository's configs/
# is written with its owner/name in front: ModelTC/United-Perception/configs/...)
CONFIG_PATH = re.compile(r"(?<![\w/.:-])configs/[\w/*.-]*")
# ``{a,b}`` in a cited name lists several files (``eqlv2/{softmax,eqlv2}_mask_rcnn_...yaml``)
CITED_FILE = re.compile(r"[\w./*{},-]*[\w*}-]\.(?:md|py|yaml)\b")
BRACES = re.compile(r"\{([^{}]*)\}")
# a file outside the repository is cited with where it lives, on the same line
EXTERNAL = re.compile(
    r"official|authors'|mmdetection|CenterNet2|United-Perception|detectron2|large-vocab-devil"
)
SKIP_DIRS = {".git", ".venv", "output", "__pycache__", "datasets"}
# files a run writes (OUTPUT_DIR/config.yaml, the benchmarks' results.md), not the repository's
RUN_OUTPUTS = re.compile(r"^(OUTPUT_DIR/.*|config\.yaml|results\.md)$")


def _repo_files():
    names = set()
    for _root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        names.update(files)
    return names


def _expanded(path: str):
    """Every name ``path`` lists: ``a_{b,c}.yaml`` -> ``a_b.yaml``, ``a_c.yaml``."""
    group = BRACES.search(path)
    if group is None:
        return [path]
    return [
        name
        for choice in group.group(1).split(",")
        for name in _expanded(path[: group.start()] + choice + path[group.end() :])
    ]


def _exists(path: str, citing_dir: str) -> bool:
    """Every file ``path`` names (``*`` and ``...`` as wildcards, ``{a,b}`` as a list) from the
    repository root, lt_d2/, configs/ or the citing file's folder."""
    bases = (REPO, os.path.join(REPO, "lt_d2"), os.path.join(REPO, "configs"))
    bases += (os.path.join(REPO, citing_dir),)
    return all(
        any(glob.glob(os.path.join(base, name.replace("...", "*"))) for base in bases)
        for name in _expanded(path)
    )


# The recipe page names the files a reader creates in a project of their own (my_lt/); its code
# blocks are run by tests/test_adding_a_classifier.py, so they are left out here.
RECIPE = "docs/adding_a_classifier.md"
FENCED = re.compile(r"^```.*?^```", re.S | re.M)


def _text(source: str) -> str:
    """The file's text (the recipe page without its code blocks and the reader's my_lt/ files)."""
    text = open(os.path.join(REPO, source)).read()
    if source == RECIPE:
        text = re.sub(r"my_lt/[\w/.]*", "", FENCED.sub("", text))
    return text


def test_sources_are_found():
    assert {"README.md", RECIPE, "train_net.py", "lt_d2/config/defaults.py"} <= set(SOURCES)
    assert any(s.startswith("configs/demo/") for s in SOURCES)


def test_every_docs_page_is_linked_from_the_readme():
    readme = open(os.path.join(REPO, "README.md")).read()
    pages = sorted(s for s in SOURCES if s.startswith("docs/"))
    assert [p for p in pages if f"]({p})" not in readme] == []


@pytest.mark.parametrize("source", SOURCES)
def test_cited_config_paths_exist(source):
    text = _text(source)
    missing = [p for p in sorted(set(CONFIG_PATH.findall(text))) if not _exists(p.rstrip("."), ".")]
    assert missing == [], f"{source} cites config paths that do not exist"


@pytest.mark.parametrize("source", SOURCES)
def test_cited_files_exist_or_are_marked_external(source):
    repo_files = _repo_files()
    citing_dir = os.path.dirname(source)
    stale = []
    for line in _text(source).splitlines():
        for name in CITED_FILE.findall(line):
            if _exists(name, citing_dir) or RUN_OUTPUTS.match(name):
                continue
            if "/" not in name and any(fnmatch.fnmatch(f, name) for f in repo_files):
                continue
            if not EXTERNAL.search(line):
                stale.append(name)
    assert stale == [], f"{source} cites files that are not in the repository"


def test_the_check_catches_a_stale_citation(tmp_path):
    line = "# Sizes measured in ENVIRONMENT.md, see configs/demo/no_such_config.yaml"
    assert [n for n in CITED_FILE.findall(line) if not _exists(n, ".")] == [
        "ENVIRONMENT.md",
        "configs/demo/no_such_config.yaml",
    ]
    assert not EXTERNAL.search(line)
    assert CONFIG_PATH.findall("United-Perception/configs/det/efl/x.yaml") == []
