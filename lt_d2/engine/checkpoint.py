"""Checkpoints that know which classifier wrote them.

Two classifiers can produce the same number of logits with different meanings (EQL v2's C
sigmoid tasks plus objectness and softmax's C classes plus background are both C + 1 wide),
so loading one's weights into the other succeeds shape-wise and evaluates nonsense.
:class:`LTCheckpointer` (detectron2's DetectionCheckpointer) therefore stores, next to the
weights, the record ``lt_d2_classifiers`` = {module name: {name, num_classes, num_logits}} of
every :class:`~lt_d2.classifiers.Classifier` in the model, and on loading refuses a file whose
record disagrees with the model, except in a decoupled stage (``MODEL.DECOUPLE.ENABLED``),
which changes the classifier on purpose. Files without a record (ImageNet backbones,
detectron2's model zoo) are loaded as detectron2 loads them.

It also names the file when it cannot be read (a truncated copy gives torch's bare zip
error); for ``--eval-only`` it refuses weights that leave model parameters uninitialised, and
for a decoupled stage weights that leave any frozen weight uninitialised (an ImageNet
backbone, a detector of other classes: only the classifier may start fresh).
"""

import logging
import os
import pickle
import zipfile
from typing import Dict

from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from lt_d2.classifiers import Classifier
from lt_d2.classifiers.gradient_stats import GradientStats
from lt_d2.modeling.classifier_head import unwrap_ddp

__all__ = ["LTCheckpointer", "classifier_record"]

logger = logging.getLogger(__name__)

RECORD_KEY = "lt_d2_classifiers"


def classifier_record(model: nn.Module) -> Dict[str, Dict]:
    """{module name: {"name", "num_classes", "num_logits"}} of every Classifier in ``model``."""
    return {
        name: {
            "name": type(m).__name__,
            "num_classes": int(m.num_classes),
            "num_logits": int(m.num_logits),
        }
        for name, m in unwrap_ddp(model).named_modules()
        if isinstance(m, Classifier)
    }


class LTCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that records and checks the model's classifiers.

    Args (besides DetectionCheckpointer's):
        allow_classifier_change: load weights written with other classifiers (the decoupled
            stage, which re-initialises or re-scales the classifier on purpose).
        require_all_weights: refuse a file that leaves model parameters uninitialised
            (``--eval-only``: evaluating random layers would report a meaningless AP).
        require_frozen_weights: refuse a file that leaves uninitialised any weight the model
            does not train (a frozen parameter or a buffer other than a Classifier's state):
            a decoupled stage trains only its classifier, on the features of the detector it
            loads, so that file must be a trained detector of the same classes.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        allow_classifier_change: bool = False,
        require_all_weights: bool = False,
        require_frozen_weights: bool = False,
        **checkpointables,
    ):
        super().__init__(model, save_dir, **checkpointables)
        self.allow_classifier_change = allow_classifier_change
        self.require_all_weights = require_all_weights
        self.require_frozen_weights = require_frozen_weights
        self._path = ""

    def save(self, name: str, **kwargs) -> None:
        kwargs.setdefault(RECORD_KEY, classifier_record(self.model))
        super().save(name, **kwargs)

    def _load_file(self, filename: str):
        self._path = filename
        try:
            return super()._load_file(filename)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
            size = os.path.getsize(filename) if os.path.isfile(filename) else 0
            raise RuntimeError(
                f"cannot read the checkpoint {filename} ({size} bytes): {e}. The file is "
                f"damaged or truncated (an interrupted copy or a full disk): copy it again, or "
                f"point MODEL.WEIGHTS (or OUTPUT_DIR/last_checkpoint when resuming) at an "
                f"intact checkpoint"
            ) from e

    def _load_model(self, checkpoint):
        self._check_classifiers(checkpoint.pop(RECORD_KEY, None))
        incompatible = super()._load_model(checkpoint)
        missing = [] if incompatible is None else self._missing_weights(incompatible.missing_keys)
        if self.require_all_weights and missing:
            raise ValueError(
                f"{self._path} lacks {len(missing)} of the model's parameters (e.g. "
                f"{missing[:3]}): evaluating would use randomly initialised layers. Set "
                f"MODEL.WEIGHTS to a checkpoint of this detector (e.g. OUTPUT_DIR/model_final.pth)"
            )
        frozen = self._frozen(missing) if self.require_frozen_weights else []
        if frozen:
            num_classes = sorted({r["num_classes"] for r in classifier_record(self.model).values()})
            raise ValueError(
                f"MODEL.WEIGHTS {self._path} is not a trained detector of this model's "
                f"{'/'.join(map(str, num_classes))} classes: it lacks {len(frozen)} of the "
                f"weights that the decoupled stage (MODEL.DECOUPLE.ENABLED) keeps frozen (e.g. "
                f"{frozen[:3]}), which would stay randomly initialised while only the "
                f"classifier trains. Set MODEL.WEIGHTS to the first stage's model, "
                f"<stage-1 OUTPUT_DIR>/model_final.pth, trained on the same dataset with the "
                f"same config less MODEL.DECOUPLE"
            )
        return incompatible

    def _missing_weights(self, missing_keys):
        """``missing_keys`` less GradientStats' buffers (diagnostics, not weights)."""
        stats = [n for n, m in self.model.named_modules() if isinstance(m, GradientStats)]
        return [k for k in missing_keys if not any(k.startswith(f"{n}.") for n in stats)]

    def _frozen(self, missing_weights):
        """``missing_weights`` less the trained parameters and the Classifiers' state
        (accumulated statistics, which a new stage starts afresh)."""
        trained = {n for n, p in self.model.named_parameters() if p.requires_grad}
        state = [n for n, m in self.model.named_modules() if isinstance(m, Classifier)]
        return [
            k
            for k in missing_weights
            if k not in trained and not any(k.startswith(f"{n}.") for n in state)
        ]

    def _check_classifiers(self, saved) -> None:
        if not saved:
            return
        current = classifier_record(self.model)
        if saved == current:
            return
        describe = "; ".join(
            f"'{k}': {v['name']} ({v['num_logits']} logits)" for k, v in sorted(saved.items())
        )
        wanted = "; ".join(
            f"'{k}': {v['name']} ({v['num_logits']} logits)" for k, v in sorted(current.items())
        )
        if self.allow_classifier_change:
            logger.info(
                "Decoupled stage: %s was written with %s, this model has %s",
                self._path,
                describe,
                wanted,
            )
            return
        raise ValueError(
            f"{self._path} was trained with the classifier(s) {describe}, but this model has "
            f"{wanted}: the logits would be read with another layout. Set MODEL.CLASSIFIER.NAME "
            f"(or MODEL.DENSE_CLASSIFIER.NAME) to the checkpoint's, or retrain only the "
            f"classifier with MODEL.DECOUPLE.ENABLED True"
        )
