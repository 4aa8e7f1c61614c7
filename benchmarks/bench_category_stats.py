#!/usr/bin/env python
"""Time and peak memory of getting the category statistics of an LVIS v1-size training json.

    .venv/bin/python benchmarks/bench_category_stats.py [--dir /tmp/lt_d2_bench_stats]
        [--images 100170] [--scale 1.0]

Generates (once; reused when present) ``<dir>/lvis_v1_like_train_<images>_<scale>.json``:
100,170 images and, per category, LVIS v1 train's own instance and image counts
(``datasets/lvis_v1_train_category_counts.json``: 1203 categories, 1,270,141 annotations),
each annotation with a polygon of 20-60 points as real LVIS masks have, about the size of the
real 1.1 GB file. ``--scale`` shrinks the counts for a quick run.

Then, each in a fresh interpreter (so that peak memory is that of one process, like one
rank of a training job), measures wall time and peak resident memory (``ru_maxrss``, minus
the interpreter's after its imports) of:

1. ``json.load`` of the whole file and the categories read from it: how the statistics of an
   LVIS json were read by every rank of a job (the baseline);
2. :meth:`lt_d2.data.CategoryStats.from_lvis_json`: the top-level stream read;
3. :meth:`~lt_d2.data.CategoryStats.from_dataset` of a dataset registered on the file, with
   an empty cache directory (a job's first run, on rank 0: hash the file, stream-read it,
   write the cache), then
4. the same with the cache filled (every later run: hash the file, read the cache).

Printed: each time and memory, and 2. and 3. as ratios of 1.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS = os.path.join(REPO, "datasets", "lvis_v1_train_category_counts.json")

_MEASURE = r"""
import json, resource, sys, time
{imports}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
{work}
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": seconds, "peak_mib": (peak - base) / 1024, "check": check}}))
"""

# a dataset on the file, registered without reading it (only its metadata matters here)
_REGISTER = (
    "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
    "from lt_d2.data import CategoryStats\n"
    "DatasetCatalog.register('lvis_bench_stats', list)\n"
    "MetadataCatalog.get('lvis_bench_stats').set(json_file=sys.argv[1], evaluator_type='lvis')"
)

CASES = {
    "json.load (baseline)": (
        "",
        "with open(sys.argv[1]) as f:\n"
        "    data = json.load(f)\n"
        "cats = sorted(data['categories'], key=lambda c: c['id'])\n"
        "check = [sum(c['instance_count'] for c in cats), len(data['images'])]",
    ),
    "CategoryStats.from_lvis_json": (
        "from lt_d2.data import CategoryStats",
        "stats = CategoryStats.from_lvis_json(sys.argv[1])\n"
        "check = [int(stats.instance_count_array.sum()), stats.num_images]",
    ),
    "from_dataset, empty cache": (
        _REGISTER,
        "stats = CategoryStats.from_dataset('lvis_bench_stats', cache_dir=sys.argv[2])\n"
        "check = [int(stats.instance_count_array.sum()), stats.num_images]",
    ),
    "from_dataset, cache filled": (
        _REGISTER,
        "stats = CategoryStats.from_dataset('lvis_bench_stats', cache_dir=sys.argv[2])\n"
        "check = [int(stats.instance_count_array.sum()), stats.num_images]",
    ),
}


def generate(path: str, num_images: int, scale: float) -> None:
    """Write an LVIS v1-like training json to ``path``, streamed (the generator's memory does
    not grow with the file)."""
    rng = np.random.default_rng(0)
    with open(COUNTS) as f:
        cats = json.load(f)["categories"]
    polygons = [
        json.dumps([np.round(rng.uniform(0, 640, 2 * n), 2).tolist()])
        for n in rng.integers(20, 61, size=512)
    ]
    tmp = path + ".tmp"
    ann_id = 0
    with open(tmp, "w") as f:
        f.write('{"info": {"description": "generated LVIS v1-like training set"}, ')
        f.write('"annotations": [')
        first = True
        records = []
        for cat in cats:
            images = max(1, round(cat["image_count"] * scale))
            instances = max(images, round(cat["instance_count"] * scale))
            on = rng.choice(num_images, size=images, replace=False) + 1
            per_image = 1 + rng.multinomial(instances - images, np.full(images, 1.0 / images))
            for image_id in np.repeat(on, per_image).tolist():
                ann_id += 1
                x, y = rng.uniform(0, 500, 2).round(2).tolist()
                w, h = rng.uniform(1, 140, 2).round(2).tolist()
                f.write(
                    ("" if first else ", ")
                    + f'{{"area": {w * h:.2f}, "id": {ann_id}, "segmentation": '
                    f"{polygons[ann_id % len(polygons)]}, "
                    f'"image_id": {image_id}, "bbox": [{x}, {y}, {w}, {h}], '
                    f'"category_id": {cat["id"]}}}'
                )
                first = False
            records.append(
                dict(
                    cat, image_count=images, instance_count=instances, synset=f"{cat['name']}.n.01"
                )
            )
        f.write('], "images": [')
        for i in range(1, num_images + 1):
            name = f"{i:012d}.jpg"
            f.write(
                ("" if i == 1 else ", ")
                + json.dumps(
                    {
                        "date_captured": "2013-11-14 16:28:13",
                        "neg_category_ids": [],
                        "id": i,
                        "license": 1,
                        "height": 480,
                        "width": 640,
                        "flickr_url": f"http://farm4.staticflickr.com/{name}",
                        "coco_url": f"http://images.cocodataset.org/train2017/{name}",
                        "not_exhaustive_category_ids": [],
                    }
                )
            )
        f.write('], "licenses": [{"id": 1, "name": "generated"}], "categories": ')
        json.dump(records, f)
        f.write("}")
    os.replace(tmp, path)
    print(f"wrote {path}: {num_images} images, {ann_id} annotations, {len(cats)} categories")


def measure(name: str, path: str, folder: str) -> dict:
    imports, work = CASES[name]
    code = _MEASURE.format(imports=imports, work=work)
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run(
        [sys.executable, "-c", code, path, folder],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/tmp/lt_d2_bench_stats")
    parser.add_argument("--images", type=int, default=100170)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    cache = os.path.join(args.dir, "cache")
    if os.path.isdir(cache):
        shutil.rmtree(cache)
    path = os.path.join(args.dir, f"lvis_v1_like_train_{args.images}_{args.scale:g}.json")
    if not os.path.isfile(path):
        generate(path, args.images, args.scale)
    print(f"{path}: {os.path.getsize(path) / 2**20:.0f} MiB")
    results = {name: measure(name, path, cache) for name in args.cases}
    checks = {json.dumps(r["check"]) for r in results.values()}
    if len(checks) != 1:
        raise SystemExit(f"the readers disagree: {results}")
    base = results.get("json.load (baseline)")
    for name, r in results.items():
        ratio = (
            f"  ({r['seconds'] / base['seconds']:.3f}x time, "
            f"{r['peak_mib'] / max(base['peak_mib'], 1e-9):.4f}x memory of the baseline)"
            if base
            else ""
        )
        print(f"{name:<32} {r['seconds']:8.2f} s  peak +{r['peak_mib']:8.1f} MiB{ratio}")


if __name__ == "__main__":
    main()
