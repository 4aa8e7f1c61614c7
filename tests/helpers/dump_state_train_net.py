"""train_net.py, unchanged, whose trainer also saves every process's classifier state and the
category statistics it trained with after training (tests/engine/test_multiprocess_training.py
and test_cluster_training.py read them).

python tests/helpers/dump_state_train_net.py <train_net.py's arguments>
"""

import json
import os
import sys

import torch
from detectron2.utils import comm

# the repository root instead of this script's folder, whose lvis.py would hide lvis-api
sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_net  # noqa: E402
from lt_d2.data import category_stats_from_cfg  # noqa: E402
from lt_d2.engine import LTTrainer  # noqa: E402
from lt_d2.modeling.classifier_head import unwrap_ddp  # noqa: E402


class StateDumpingTrainer(LTTrainer):
    def train(self):
        results = super().train()
        model = unwrap_ddp(self.model)
        state = {
            key: value
            for key, value in model.roi_heads.box_predictor.state_dict().items()
            if "classifier" in key or "gradient_stats" in key
        }
        torch.save(state, os.path.join(self.cfg.OUTPUT_DIR, f"state_rank{comm.get_rank()}.pth"))
        stats = category_stats_from_cfg(self.cfg).to_dict()  # every process calls it
        with open(os.path.join(self.cfg.OUTPUT_DIR, f"stats_rank{comm.get_rank()}.json"), "w") as f:
            json.dump(stats, f)
        return results


# Module level, so that the processes launch spawns (which re-import this file) use it too.
train_net.LTTrainer = StateDumpingTrainer

if __name__ == "__main__":
    train_net.cli()
