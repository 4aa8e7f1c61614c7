"""Dataset checks run before the first iteration, so that a bad dataset fails at start-up,
naming its file, instead of at whichever iteration first samples the bad image (or after the
whole training, for a test set).

- :func:`check_image_files`: every image a dataset dict names exists (one ``os.path.isfile``
  per image; ``benchmarks/bench_dataset_checks.py`` measures it on an LVIS-size set).
- :func:`check_test_datasets`: every dataset of ``DATASETS.TEST`` loads (its json parses and
  validates, :func:`lt_d2.data.read_lvis_json` for LVIS-format ones), has the training set's
  categories, and its images exist.

Both run once per machine in a distributed job (collectives: every process calls them; the
first process of each machine checks what that machine reads and the others wait for its
verdict, :func:`lt_d2.data.once.run_once`), so 16 processes on 2 machines load each test set
and ``stat()`` each image twice, not 16 times.

Annotation category ids outside the categories are refused where an LVIS-format file is read
(:func:`lt_d2.data.read_lvis_json`).
"""

import logging
import os
from typing import Iterable, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from .once import run_once

__all__ = ["check_image_files", "check_test_datasets"]

logger = logging.getLogger(__name__)


def _where(names: Sequence[str]) -> str:
    files = [MetadataCatalog.get(n).get("json_file", None) for n in names]
    return ", ".join(f"'{n}' ({f})" if f else f"'{n}'" for n, f in zip(names, files))


def check_image_files(dataset_dicts: Iterable[dict], dataset_names: Sequence[str]) -> None:
    """Raise FileNotFoundError, with the number of missing images and the first paths, when
    an image file named by ``dataset_dicts`` (of ``dataset_names``) does not exist. Once per
    machine in a distributed job (see the module's docstring)."""
    run_once(
        _check_image_files,
        dataset_dicts,
        dataset_names,
        per_machine=True,
        what=f"checking the image files of {_where(dataset_names)}",
    )


def _check_image_files(dataset_dicts: Iterable[dict], dataset_names: Sequence[str]) -> None:
    missing: List[str] = []
    total = 0
    for record in dataset_dicts:
        total += 1
        if not os.path.isfile(record["file_name"]):
            missing.append(record["file_name"])
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {total} images of dataset {_where(dataset_names)} are "
            f"missing, e.g. {missing[:3]}: check the image folder and DETECTRON2_DATASETS "
            f"(datasets/README.md describes the layout)"
        )
    logger.info("Images of %s: all %d files exist", _where(dataset_names), total)


def check_test_datasets(test_names: Sequence[str], train_names: Sequence[str]) -> None:
    """Load every dataset in ``test_names`` (DATASETS.TEST) now and check that it has the
    categories of ``train_names[0]`` and that its images exist; errors name the dataset and
    its annotation file. Once per machine in a distributed job (see the module's
    docstring)."""
    run_once(
        _check_test_datasets,
        test_names,
        train_names,
        per_machine=True,
        what="checking DATASETS.TEST",
    )


def _check_test_datasets(test_names: Sequence[str], train_names: Sequence[str]) -> None:
    train_classes = (
        MetadataCatalog.get(train_names[0]).get("thing_classes", None) if train_names else None
    )
    for name in test_names:
        try:
            dicts = DatasetCatalog.get(name)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(
                f"DATASETS.TEST dataset {_where([name])} cannot be loaded, so it could not be "
                f"evaluated after training: {e}"
            ) from e
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if train_classes is not None and classes is not None and classes != train_classes:
            differ = [(a, b) for a, b in zip(train_classes, classes) if a != b][:3]
            raise ValueError(
                f"DATASETS.TEST dataset {_where([name])} has {len(classes)} categories, the "
                f"training set '{train_names[0]}' {len(train_classes)} (first differences "
                f"{differ}): evaluation would compare different categories; use a test set "
                f"with the training set's categories"
            )
        _check_image_files(dicts, [name])
        logger.info("DATASETS.TEST '%s': %d images, checked before training", name, len(dicts))
