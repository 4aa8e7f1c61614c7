#!/usr/bin/env python
"""Cost of lt_d2's start-up dataset checks on an LVIS-size training set.

    .venv/bin/python benchmarks/bench_dataset_checks.py [--images 100000]
        [--annotations 1200000] [--categories 1203] [--dir /tmp/lt_d2_bench_lvis]

Generates an LVIS v1-size annotation file (100k images, 1.2M annotations, 1203 categories by
default; every annotation a 4-point polygon, so the file is smaller than the real 1.1 GB one
and the times below are a lower bound for parsing) and one empty file per image (the checks
only test that the file exists), then times, one after the other in this process:

1. ``json.load`` of the file (the baseline: any reader of the file pays it);
2. :func:`lt_d2.data.read_lvis_json` (parse + every structural check, including the check that
   annotation category ids are among the categories);
3. detectron2's ``load_lvis_json`` (the dataset dicts every training run builds anyway);
4. :func:`lt_d2.data.validation.check_image_files` over those dicts (one ``os.path.isfile``
   per image; on a network file system this is the part that grows).

Printed: each time and the checks' cost as a fraction of the loading a training run does
anyway (2. minus 1. for the json checks; 4. alone for the image files). The DATASETS.TEST check
costs one more load of the validation set (LVIS v1 val: a fifth of the training set's size).
"""

import argparse
import json
import os
import random
import time

from detectron2.data.datasets.lvis import load_lvis_json

from lt_d2.data import read_lvis_json
from lt_d2.data.validation import check_image_files


def generate(folder: str, num_images: int, num_annotations: int, num_categories: int) -> str:
    """Write ``folder/lvis_bench_train.json`` and ``folder/train2017/<id>.jpg`` (empty)."""
    rng = random.Random(0)
    os.makedirs(os.path.join(folder, "train2017"), exist_ok=True)
    images = []
    for i in range(1, num_images + 1):
        name = f"{i:012d}.jpg"
        images.append(
            {
                "id": i,
                "coco_url": f"http://images.cocodataset.org/train2017/{name}",
                "height": 480,
                "width": 640,
                "neg_category_ids": [],
                "not_exhaustive_category_ids": [],
            }
        )
        path = os.path.join(folder, "train2017", name)
        if not os.path.exists(path):
            open(path, "wb").close()
    annotations = []
    for k in range(1, num_annotations + 1):
        x, y = rng.uniform(0, 500), rng.uniform(0, 350)
        annotations.append(
            {
                "id": k,
                "image_id": rng.randint(1, num_images),
                "category_id": rng.randint(1, num_categories),
                "bbox": [x, y, 40.0, 30.0],
                "area": 1200.0,
                "segmentation": [[x, y, x + 40, y, x + 40, y + 30, x, y + 30]],
            }
        )
    categories = [
        {"id": c, "name": f"cat{c}", "frequency": "f", "image_count": 1, "instance_count": 1}
        for c in range(1, num_categories + 1)
    ]
    path = os.path.join(folder, "lvis_bench_train.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--annotations", type=int, default=1_200_000)
    parser.add_argument("--categories", type=int, default=1203)
    parser.add_argument("--dir", default="/tmp/lt_d2_bench_lvis")
    args = parser.parse_args()

    start = time.perf_counter()
    path = generate(args.dir, args.images, args.annotations, args.categories)
    size_mb = os.path.getsize(path) / 2**20
    print(f"generated {path} ({size_mb:.0f} MB) in {time.perf_counter() - start:.1f} s")

    def timed(fn):
        start = time.perf_counter()
        result = fn()
        return result, time.perf_counter() - start

    def parse():
        with open(path) as f:
            return json.load(f)

    _, t_json = timed(parse)
    _, t_read = timed(lambda: read_lvis_json(path))
    dicts, t_dicts = timed(lambda: load_lvis_json(path, args.dir + "/", dataset_name=None))
    _, t_files = timed(lambda: check_image_files(dicts, ["lvis_bench_train"]))
    loading = t_read + t_dicts  # what registering + loading the dataset costs in training
    print(f"1. json.load                       {t_json:7.2f} s")
    print(f"2. read_lvis_json (parse + checks) {t_read:7.2f} s  (checks: {t_read - t_json:.2f} s)")
    print(f"3. detectron2 load_lvis_json       {t_dicts:7.2f} s")
    print(f"4. check_image_files ({len(dicts)} files) {t_files:7.2f} s")
    print(
        f"json checks / dataset loading: {(t_read - t_json) / loading:.3f}; "
        f"image-file check / dataset loading: {t_files / loading:.3f}"
    )


if __name__ == "__main__":
    main()
