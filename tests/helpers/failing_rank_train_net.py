"""train_net.py, unchanged, whose process of rank 1 raises at iteration 2 of training, as a
worker that runs out of memory or reads a damaged image would
(tests/engine/test_cluster_training.py).

python tests/helpers/failing_rank_train_net.py <train_net.py's arguments>
"""

import os
import sys

from detectron2.utils import comm

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if os.path.abspath(sys.path[0]) == HERE:  # run as a script: lvis.py here would hide lvis-api
    sys.path[0] = REPO
elif REPO not in sys.path:  # imported by a test, for ERROR
    sys.path.insert(0, REPO)
import train_net  # noqa: E402
from lt_d2.engine import LTTrainer  # noqa: E402

FAILING_RANK, FAILING_ITER = 1, 2
ERROR = "the worker of rank 1 fails at iteration 2"


class FailingRankTrainer(LTTrainer):
    def run_step(self):
        if comm.get_rank() == FAILING_RANK and self.iter == FAILING_ITER:
            raise RuntimeError(ERROR)
        super().run_step()


# Module level, so that the processes launch spawns (which re-import this file) use it too.
train_net.LTTrainer = FailingRankTrainer

if __name__ == "__main__":
    train_net.cli()
