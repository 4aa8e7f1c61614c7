"""Per-category training statistics, computed once and shared by everything that needs them.

BAGS groups, EQL thresholds, DropLoss's rare/common/frequent sets, bucketed class
re-weighting, evaluation bins and frequency-sorted plots all read one CategoryStats.

Shape shorthand: C = number of categories (contiguous ids 0..C-1, detectron2's convention).
"""

import functools
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from .json_stream import read_top_level
from .once import run_once

__all__ = [
    "CategoryStats",
    "annotation_file_digest",
    "category_stats_from_cfg",
    "instance_groups",
    "LVIS_FREQUENCY_BOUNDS",
    "BAGS_GROUP_BOUNDS",
]

logger = logging.getLogger(__name__)

# LVIS frequency split by training *image* count: rare 1-10, common 11-100, frequent > 100.
LVIS_FREQUENCY_BOUNDS = (10, 100)
# BAGS (sec. 4 / Table 1): groups by training *instance* count [0,10), [10,100), [100,1000),
# [1000, inf); the same bins are the evaluation's AP1..AP4.
BAGS_GROUP_BOUNDS = (0, 10, 100, 1000)


@dataclass(frozen=True)
class CategoryStats:
    """Training-set statistics of C categories.

    Args:
        instance_counts: (C,) annotated instances of each category in the training set.
        image_counts: (C,) training images containing each category.
        num_images: number of training images.
        names: optional (C,) category names.
        frequency: optional (C,) 'r' / 'c' / 'f' labels. When omitted they are derived from
            ``image_counts`` with LVIS's rule; LVIS jsons carry their own, which are kept.
    """

    instance_counts: Sequence[int]
    image_counts: Sequence[int]
    num_images: int
    names: Optional[Sequence[str]] = None
    frequency: Optional[Sequence[str]] = None
    _arrays: Dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        inst = np.asarray(self.instance_counts, dtype=np.int64)
        imgs = np.asarray(self.image_counts, dtype=np.int64)
        if inst.ndim != 1 or inst.shape != imgs.shape:
            raise ValueError(
                f"instance_counts and image_counts must be 1-D lists of equal length, got "
                f"shapes {inst.shape} and {imgs.shape}"
            )
        if len(inst) == 0:
            raise ValueError("CategoryStats needs at least one category")
        if (inst < 0).any() or (imgs < 0).any() or (imgs > inst).any():
            raise ValueError(
                "counts must be non-negative and a category cannot appear in more images than "
                "it has instances; check the annotation file"
            )
        if self.num_images < 1 or (imgs > self.num_images).any():
            raise ValueError(f"num_images={self.num_images} must be >= 1 and >= every image count")
        if self.names is not None and len(self.names) != len(inst):
            raise ValueError(f"names has {len(self.names)} entries for {len(inst)} categories")
        if self.frequency is None:
            freq = np.where(
                imgs <= LVIS_FREQUENCY_BOUNDS[0],
                "r",
                np.where(imgs <= LVIS_FREQUENCY_BOUNDS[1], "c", "f"),
            )
        else:
            freq = np.asarray(self.frequency)
            if freq.shape != inst.shape or not set(freq.tolist()) <= {"r", "c", "f"}:
                raise ValueError("frequency must hold one of 'r', 'c', 'f' per category")
        self._arrays.update(instance_counts=inst, image_counts=imgs, frequency=freq)

    # ---------------------------------------------------------------- basic views
    @property
    def num_classes(self) -> int:
        return len(self._arrays["instance_counts"])

    @property
    def instance_count_array(self) -> np.ndarray:
        """(C,) int64 instance counts."""
        return self._arrays["instance_counts"]

    @property
    def image_count_array(self) -> np.ndarray:
        """(C,) int64 image counts."""
        return self._arrays["image_counts"]

    @property
    def frequency_labels(self) -> np.ndarray:
        """(C,) array of 'r' / 'c' / 'f'."""
        return self._arrays["frequency"]

    @property
    def image_frequency(self) -> np.ndarray:
        """(C,) fraction of training images containing each category (EQL's f_j)."""
        return self.image_count_array / float(self.num_images)

    def frequency_mask(self, label: str) -> np.ndarray:
        """(C,) bool mask of the rare ('r'), common ('c') or frequent ('f') categories."""
        if label not in ("r", "c", "f"):
            raise ValueError(f"frequency label must be 'r', 'c' or 'f', got {label!r}")
        return self.frequency_labels == label

    def instance_groups(self, bounds: Sequence[int] = BAGS_GROUP_BOUNDS) -> np.ndarray:
        """(C,) group index of each category by instance count.

        Group k holds counts in [bounds[k], bounds[k+1]) (the last group is open-ended), as in
        BAGS. ``bounds`` must start at 0 and increase.
        """
        return instance_groups(self.instance_count_array, bounds)

    def order_by_instances(self) -> np.ndarray:
        """(C,) category indices sorted by descending training instance count (plots)."""
        return np.argsort(-self.instance_count_array, kind="stable")

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_dataset_dicts(
        cls, dataset_dicts: Iterable[dict], num_classes: int, names: Optional[List[str]] = None
    ) -> "CategoryStats":
        """Count instances and images per category in detectron2 dataset dicts.

        Annotations must carry contiguous ``category_id`` in [0, num_classes).
        """
        inst = np.zeros(num_classes, dtype=np.int64)
        imgs = np.zeros(num_classes, dtype=np.int64)
        num_images = 0
        for record in dataset_dicts:
            num_images += 1
            ids = np.asarray([a["category_id"] for a in record.get("annotations", [])], np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
                raise ValueError(
                    f"image {record.get('file_name', '?')} has category ids outside "
                    f"[0, {num_classes}): the dataset's categories do not match num_classes"
                )
            np.add.at(inst, ids, 1)
            imgs[np.unique(ids)] += 1
        if num_images == 0:
            raise ValueError("cannot compute category statistics of an empty dataset")
        return cls(
            instance_counts=inst.tolist(),
            image_counts=imgs.tolist(),
            num_images=num_images,
            names=names,
        )

    @classmethod
    def from_lvis_json(cls, json_file: str) -> "CategoryStats":
        """Read the statistics that an LVIS annotation file stores in its categories.

        LVIS v0.5/v1 training files carry ``image_count``, ``instance_count`` and
        ``frequency`` for every category; categories are ordered by id, which maps to
        contiguous ids in that order (as detectron2's ``load_lvis_json`` does). The number of
        training images is the length of ``images``, or, for a file that holds only the
        categories' counts (``datasets/lvis_v1_train_category_counts.json``), its
        ``num_images``. The file is read as a stream
        (:func:`~lt_d2.data.json_stream.read_top_level`): the annotations pass through one at
        a time, so the memory needed is that of the categories, not of the file.
        """
        data = read_top_level(json_file, decode=("categories", "num_images"), count=("images",))
        try:
            cats = sorted(data["categories"], key=lambda c: c["id"])
            return cls(
                instance_counts=[c["instance_count"] for c in cats],
                image_counts=[c["image_count"] for c in cats],
                num_images=data["images"] if "images" in data else data["num_images"],
                names=[c["name"] for c in cats],
                frequency=[c["frequency"] for c in cats],
            )
        except KeyError as e:
            raise ValueError(
                f"{json_file}: LVIS categories need 'image_count', 'instance_count', "
                f"'frequency' and 'name', and the file needs 'images' (or 'num_images'); "
                f"missing key {e}"
            ) from e

    @classmethod
    def from_dataset(cls, dataset_name: str, cache_dir: str = "") -> "CategoryStats":
        """Statistics of a dataset registered in detectron2.

        LVIS-format datasets (metadata ``json_file`` whose categories carry counts) are read
        from their annotation file as a stream (:meth:`from_lvis_json`); any other registered
        dataset is counted from its dataset dicts. With ``cache_dir``, the statistics of a
        dataset with an annotation file are written to / read from
        ``<cache_dir>/<dataset_name>.category_stats.json`` together with the SHA-1 of that
        file's bytes (:func:`annotation_file_digest`): a cache is reused by any copy of the
        same file, on any machine, and recomputed, with a log line, when the file's content
        differs. The cache is written atomically (a temporary file renamed into place), so a
        reader never sees half of it. A dataset without an annotation file is counted from its
        dicts every time (its content is only known by loading them). Where the statistics
        came from is logged.
        """
        from detectron2.data import DatasetCatalog, MetadataCatalog

        meta = MetadataCatalog.get(dataset_name)
        json_file = meta.get("json_file", None)
        if json_file and not os.path.isfile(json_file):
            # datasets prepared on first load (the demo) write their file in the loader;
            # a file that is really missing fails there, naming the file
            DatasetCatalog.get(dataset_name)
        cache = (
            os.path.join(cache_dir, f"{dataset_name}.category_stats.json")
            if cache_dir and json_file
            else ""
        )
        source = annotation_file_digest(json_file) if cache else None
        if cache and os.path.isfile(cache):
            cached = _read_json(cache)
            cached_source = cached.pop("source", None)
            if cached_source == source:
                logger.info(
                    "Category statistics of '%s': %s (computed from %s)",
                    dataset_name,
                    cache,
                    _describe(source),
                )
                return cls(**cached)
            logger.warning(
                "Category statistics of '%s': the cache %s was computed from %s, the dataset's "
                "file %s is now %s; recomputing it",
                dataset_name,
                cache,
                _describe(cached_source),
                json_file,
                _describe(source),
            )
        stats = None
        if json_file and meta.get("evaluator_type", None) == "lvis":
            try:
                stats = cls.from_lvis_json(json_file)
                how = f"the per-category counts stored in {json_file}"
            except ValueError:
                stats = None  # an LVIS-format file without per-category counts: count below
        if stats is None:
            dicts = DatasetCatalog.get(dataset_name)
            names = meta.get("thing_classes", None)
            if names is None:
                raise ValueError(
                    f"dataset '{dataset_name}' has no 'thing_classes' metadata, so its "
                    f"category count is unknown; register it with thing_classes"
                )
            stats = cls.from_dataset_dicts(dicts, len(names), names=list(names))
            how = f"the {len(dicts)} images' annotations (dataset dicts)"
        logger.info(
            "Category statistics of '%s': counted from %s: %d categories (%d rare, %d common, "
            "%d frequent), %d images",
            dataset_name,
            how,
            stats.num_classes,
            stats.frequency_mask("r").sum(),
            stats.frequency_mask("c").sum(),
            stats.frequency_mask("f").sum(),
            stats.num_images,
        )
        if cache:
            stats.save(cache, source=source)
            logger.info("Category statistics of '%s': wrote the cache %s", dataset_name, cache)
        return stats

    @classmethod
    def merge(cls, parts: Sequence["CategoryStats"]) -> "CategoryStats":
        """Statistics of the union of several training sets with the same categories."""
        if len({p.num_classes for p in parts}) != 1:
            raise ValueError("cannot merge statistics of datasets with different categories")
        if len(parts) == 1:
            return parts[0]
        return cls(
            instance_counts=sum(p.instance_count_array for p in parts).tolist(),
            image_counts=sum(p.image_count_array for p in parts).tolist(),
            num_images=sum(p.num_images for p in parts),
            names=parts[0].names,
        )

    # ---------------------------------------------------------------- JSON cache
    def to_dict(self) -> dict:
        return {
            "instance_counts": self.instance_count_array.tolist(),
            "image_counts": self.image_count_array.tolist(),
            "num_images": int(self.num_images),
            "names": list(self.names) if self.names is not None else None,
            "frequency": self.frequency_labels.tolist(),
        }

    def save(self, path: str, source: Optional[dict] = None) -> None:
        """Write the statistics (and ``source``, what they were computed from) as JSON,
        atomically: to a temporary file in the same folder, then renamed to ``path``."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path), suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(dict(self.to_dict(), source=source), f)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str) -> "CategoryStats":
        data = _read_json(path)
        data.pop("source", None)
        return cls(**data)


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"the category statistics cache {path} is not valid JSON ({e}): delete it, it is "
            f"recomputed on the next run"
        ) from e


def instance_groups(instance_counts, bounds: Sequence[int] = BAGS_GROUP_BOUNDS) -> np.ndarray:
    """(C,) group index of each of (C,) ``instance_counts``: group k holds counts in
    [bounds[k], bounds[k+1]) (the last group is open-ended), as in BAGS. ``bounds`` must
    start at 0 and increase."""
    bounds = list(bounds)
    if not bounds or bounds[0] != 0 or any(b >= a for b, a in zip(bounds, bounds[1:])):
        raise ValueError(f"group bounds must start at 0 and increase, got {bounds}")
    return np.searchsorted(np.asarray(bounds[1:]), np.asarray(instance_counts), side="right")


def annotation_file_digest(json_file: str) -> dict:
    """What statistics computed from ``json_file`` depend on: the SHA-1 of its bytes (read in
    chunks; about a second per GB) and its size. Two copies of one file agree wherever they
    are, whatever their path or modification time."""
    digest = hashlib.sha1()
    with open(json_file, "rb") as f:
        for block in iter(functools.partial(f.read, 1 << 24), b""):
            digest.update(block)
    return {"sha1": digest.hexdigest(), "size": os.path.getsize(json_file)}


def _describe(source: Optional[dict]) -> str:
    if not source or "sha1" not in source:
        return "an unrecorded source (a cache written by another lt_d2 version)"
    return f"a file of {source['size']} bytes with SHA-1 {source['sha1']}"


@functools.lru_cache(maxsize=8)
def _stats_of_datasets(names: tuple, cache_dir: str, files: tuple) -> CategoryStats:
    del files  # part of this process's memo key only: a changed annotation file is read again
    return CategoryStats.merge([CategoryStats.from_dataset(n, cache_dir) for n in names])


def category_stats_from_cfg(cfg) -> CategoryStats:
    """CategoryStats of ``cfg.DATASETS.TRAIN`` (merged), computed once per job.

    In a distributed job this is a collective (every process must call it): global rank 0
    computes the statistics and the others receive them (:func:`~lt_d2.data.once.run_once`),
    so every process trains with the same statistics and only rank 0 reads the annotation
    files and writes the cache. Cached as JSON in ``DATASETS.CATEGORY_STATS_CACHE_DIR`` (or
    ``OUTPUT_DIR`` when empty); see :meth:`CategoryStats.from_dataset`.
    """
    if not cfg.DATASETS.TRAIN:
        raise ValueError("DATASETS.TRAIN is empty: category statistics need a training set")
    cache_dir = cfg.DATASETS.CATEGORY_STATS_CACHE_DIR or cfg.OUTPUT_DIR
    names = tuple(cfg.DATASETS.TRAIN)
    return run_once(
        lambda: _stats_of_datasets(names, cache_dir, _annotation_files(names)),
        what=f"computing the category statistics of DATASETS.TRAIN {list(names)}",
    )


def _annotation_files(names: tuple) -> tuple:
    """(path, size, mtime) of each training set's annotation file that exists now."""
    from detectron2.data import MetadataCatalog

    found = []
    for name in names:
        path = MetadataCatalog.get(name).get("json_file", None)
        if path and os.path.isfile(path):
            st = os.stat(path)
            found.append((os.path.abspath(path), st.st_size, st.st_mtime_ns))
    return tuple(found)
