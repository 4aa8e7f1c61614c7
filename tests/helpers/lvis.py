"""A small LVIS-format dataset of square boxes for a test: its annotation file, and square
detections on its images run through an evaluator."""

import json
from typing import Dict, Iterable, Sequence, Tuple

import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import Boxes, Instances


def write_lvis_json(
    path,
    categories: Sequence[dict],
    boxes: Iterable[Tuple[int, int, float, float]],
    *,
    num_images: int,
    image_size: int,
    box_size: float,
    url: str = "http://localhost/train/{:06d}.jpg",
) -> str:
    """Writes an LVIS-format json to ``path`` and returns the path as a string.

    Args:
        categories: one dict per category, at least its "name" and "frequency" ("r", "c" or
            "f"); they get the ids 1, 2, ... in this order.
        boxes: (image id, category id, x, y) per annotation: a ``box_size`` square with its
            top-left corner at (x, y), the square's polygon as its segmentation.
        num_images: images 1..num_images, each ``image_size`` pixels square, exhaustively
            annotated; ``url.format(image id)`` is the coco_url (its last two path parts are
            the file name lt_d2's reader looks for under the image root).
    """
    s = float(box_size)
    images = [
        {
            "id": i,
            "width": image_size,
            "height": image_size,
            "coco_url": url.format(i),
            "neg_category_ids": [],
            "not_exhaustive_category_ids": [],
        }
        for i in range(1, num_images + 1)
    ]
    annotations = []
    for image_id, category_id, x, y in boxes:
        x, y = float(x), float(y)
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [x, y, s, s],
                "area": s * s,
                "segmentation": [[x, y, x + s, y, x + s, y + s, x, y + s]],
            }
        )
    categories = [{"id": k + 1, **c} for k, c in enumerate(categories)]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return str(path)


def evaluate_detections(
    evaluator: DatasetEvaluator,
    detections: Sequence[Tuple[int, int, float, float, float]],
    image_ids: Iterable[int],
    *,
    image_size: int,
    box_size: float,
) -> Dict:
    """``evaluator.evaluate()`` after it processed, image by image, the detections
    (image id, contiguous category, x, y, score) of ``box_size`` squares with their top-left
    corner at (x, y), on ``image_size`` square images."""
    s = float(box_size)
    evaluator.reset()
    for img in image_ids:
        dets = [d for d in detections if d[0] == img]
        inst = Instances((image_size, image_size))
        inst.pred_boxes = Boxes(torch.tensor([[x, y, x + s, y + s] for _, _, x, y, _ in dets]))
        inst.scores = torch.tensor([score for *_, score in dets])
        inst.pred_classes = torch.tensor([c for _, c, *_ in dets])
        evaluator.process([{"image_id": img}], [{"instances": inst}])
    return evaluator.evaluate()


def write_tiny_lvis_json(
    path,
    names: Sequence[str],
    annotations: Iterable[Tuple[int, int]],
    *,
    num_images=3,
    frequency="f",
) -> str:
    """An LVIS-format json of ``num_images`` 32-pixel images, one category per name (all of
    ``frequency``), one 8-pixel box per (image id, category id) pair of ``annotations``."""
    return write_lvis_json(
        path,
        [{"name": n, "frequency": frequency} for n in names],
        [(img, cat, 2.0, 2.0) for img, cat in annotations],
        num_images=num_images,
        image_size=32,
        box_size=8,
    )
