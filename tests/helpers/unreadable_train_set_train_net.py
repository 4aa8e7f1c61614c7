"""train_net.py, unchanged, with one more dataset registered: ``lt_test_unreadable_train``, the
demo's categories whose loader raises, as a training set that is not on disk does
(tests/engine/test_eval_only.py).

python tests/helpers/unreadable_train_set_train_net.py <train_net.py's arguments>
"""

import os
import sys

from detectron2.data import DatasetCatalog, MetadataCatalog

# the repository root instead of this script's folder, whose lvis.py would hide lvis-api
sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_net  # noqa: E402

UNREADABLE = "lt_test_unreadable_train"
LOADER_ERROR = "the training set is not on disk (lt_test_unreadable_train was loaded)"


def _load():
    raise FileNotFoundError(LOADER_ERROR)


DatasetCatalog.register(UNREADABLE, _load)
MetadataCatalog.get(UNREADABLE).set(
    thing_classes=list(MetadataCatalog.get("lvis_demo_train").thing_classes),
    evaluator_type="lvis",
)

if __name__ == "__main__":
    train_net.cli()
