"""Registration of LVIS-format datasets (the built-in demo and a user's own) in detectron2.

detectron2's ``register_lvis_instances`` installs the real LVIS v0.5 / v1 category list
(its loader looks the metadata up by dataset name), so a dataset with its own categories is
registered here instead: the loader is still detectron2's ``load_lvis_json`` (called without
a dataset name) and the metadata comes from the json's own categories, so detectron2's
``LVISEvaluator`` and lvis-api work unchanged. The real LVIS / COCO datasets keep detectron2's
built-in registrations (see datasets/README.md).
"""

import json
import logging
import os
from typing import Callable, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .demo_dataset import (
    DEMO_SPLITS,
    default_demo_root,
    demo_category_specs,
    demo_json_path,
    ensure_demo_dataset,
)
from .json_stream import read_top_level

__all__ = ["register_lvis_format", "register_demo_datasets", "read_lvis_json"]

logger = logging.getLogger(__name__)

_HINT = (
    "check the path and DETECTRON2_DATASETS (see datasets/README.md); for the demo dataset "
    "run `python -m lt_d2.data.demo_dataset`"
)
_REQUIRED_KEYS = {
    "images": (
        "id",
        "coco_url",
        "height",
        "width",
        "neg_category_ids",
        "not_exhaustive_category_ids",
    ),
    "annotations": ("id", "image_id", "category_id", "bbox", "segmentation"),
    "categories": ("id", "name", "frequency"),
}


def read_lvis_json(json_file: str) -> Dict:
    """Read and validate an LVIS-format annotation file.

    Checks what detectron2's ``load_lvis_json`` and lvis-api rely on: the top-level lists,
    the per-entry keys in ``_REQUIRED_KEYS``, category ids 1..C (detectron2 maps id to
    contiguous id - 1), annotation category ids among them, and polygon segmentations with
    at least 3 points. Raises FileNotFoundError / ValueError naming the file, the problem
    and the fix.
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"LVIS annotation file {json_file} does not exist; {_HINT}")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"LVIS annotation file {json_file} is not valid JSON ({e}); the file is damaged: "
            f"download it again (or regenerate the demo with "
            f"`python -m lt_d2.data.demo_dataset`)"
        ) from e
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}: expected a JSON object with images/annotations/categories")
    for section, keys in _REQUIRED_KEYS.items():
        entries = data.get(section)
        if not isinstance(entries, list):
            raise ValueError(
                f"{json_file}: missing the '{section}' list; an LVIS v1 file has 'images', "
                f"'annotations' and 'categories'"
            )
        for entry in entries:
            missing = [k for k in keys if k not in entry]
            if missing:
                raise ValueError(
                    f"{json_file}: an entry of '{section}' (id {entry.get('id', '?')}) lacks "
                    f"{missing}; LVIS v1 requires {list(keys)} (lvis-api reads them)"
                )
    ids = sorted(c["id"] for c in data["categories"])
    if ids != list(range(1, len(ids) + 1)):
        raise ValueError(
            f"{json_file}: category ids must be exactly 1..{len(ids)} (detectron2 maps id k to "
            f"class k - 1); renumber the categories and their annotations"
        )
    known = set(ids)
    bad = [a for a in data["annotations"] if a["category_id"] not in known]
    if bad:
        raise ValueError(
            f"{json_file}: {len(bad)} annotations have a category_id outside the file's "
            f"categories 1..{len(ids)} (e.g. annotation {bad[0]['id']} with category_id "
            f"{bad[0]['category_id']}): fix those annotations or add their categories"
        )
    for ann in data["annotations"]:
        segm = ann["segmentation"]
        if (
            not isinstance(segm, list)
            or not segm
            or any(not isinstance(p, list) or len(p) < 6 or len(p) % 2 for p in segm)
        ):
            raise ValueError(
                f"{json_file}: annotation {ann['id']} needs a non-empty list of polygons "
                f"[x1, y1, x2, y2, x3, y3, ...] with at least 3 points each"
            )
    return data


def _metadata_from_json(data: Dict) -> Dict:
    """thing_classes (in id order) and, when the categories carry it, detectron2's
    ``class_image_count`` (used by upstream detectron2's federated loss)."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    meta = {"thing_classes": [c["name"] for c in cats]}
    if all("image_count" in c for c in cats):
        meta["class_image_count"] = [{"id": c["id"], "image_count": c["image_count"]} for c in cats]
    return meta


def _load(name: str, json_file: str, image_root: str, prepare: Optional[Callable[[], None]]):
    from detectron2.data.datasets.lvis import load_lvis_json

    if prepare is not None:
        prepare()
    data = read_lvis_json(json_file)
    MetadataCatalog.get(name).set(**_metadata_from_json(data))
    # load_lvis_json joins image_root and the coco_url's folder by string concatenation
    return load_lvis_json(json_file, os.path.join(image_root, ""), dataset_name=None)


def register_lvis_format(
    name: str,
    json_file: str,
    image_root: str,
    *,
    prepare: Optional[Callable[[], None]] = None,
) -> None:
    """Register an LVIS-format dataset with its own categories under ``name``.

    Each image's file is ``image_root/<folder>/<file>`` from the last two segments of its
    ``coco_url`` (as for real LVIS, where the folder is train2017 / val2017). Metadata:
    ``json_file``, ``image_root``, ``evaluator_type="lvis"``, and from the json's categories
    ``thing_classes`` and ``class_image_count`` (read now, from the categories only, when the
    file exists, else when the dataset is first loaded; a malformed file is reported then).
    ``prepare`` is called before every load (the demo generates its files there). Registering
    the same name with the same files again does nothing; with other files it replaces the
    earlier registration (with a warning).
    """
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if meta.get("json_file", None) == json_file and meta.get("image_root", None) == image_root:
            return
        logger.warning("Dataset '%s' is registered already; replacing it with %s", name, json_file)
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: _load(name, json_file, image_root, prepare))
    meta = {"json_file": json_file, "image_root": image_root, "evaluator_type": "lvis"}
    if os.path.isfile(json_file):
        # Registration runs on import, in every process of a job: only the categories are
        # read, as a stream; the whole file is validated on its first load.
        try:
            found = read_top_level(json_file, decode=("categories",))
            meta.update(_metadata_from_json(found))
        except (ValueError, KeyError, TypeError) as e:  # report now, fail on first load
            logger.warning(
                "%s: cannot read its categories (%r); dataset '%s' will fail to load until "
                "this is fixed",
                json_file,
                e,
                name,
            )
    MetadataCatalog.get(name).set(**meta)


def register_demo_datasets(root: Optional[str] = None) -> List[str]:
    """Register ``lvis_demo_train`` and ``lvis_demo_val`` under ``root``.

    ``root`` defaults to ``$DETECTRON2_DATASETS/lvis_demo`` (DETECTRON2_DATASETS defaults to
    "datasets"). The data is generated into ``root`` the first time either split is loaded;
    until then ``thing_classes`` holds the default demo categories (what will be generated)
    and the count metadata (``class_image_count``) is set on that first load. Returns the
    registered names.
    """
    root = root if root is not None else default_demo_root()
    names = [f"lvis_demo_{split}" for split in DEMO_SPLITS]

    def prepare():
        ensure_demo_dataset(root)
        for name, split in zip(names, DEMO_SPLITS):  # both splits' metadata on either's load
            data = read_lvis_json(demo_json_path(root, split))
            MetadataCatalog.get(name).set(**_metadata_from_json(data))

    for name, split in zip(names, DEMO_SPLITS):
        register_lvis_format(name, demo_json_path(root, split), root, prepare=prepare)
        meta = MetadataCatalog.get(name)
        if not meta.get("thing_classes", None):  # not generated yet: the default categories
            meta.set(thing_classes=[spec["name"] for spec in demo_category_specs()])
    return names
