"""What a trainer run evaluated, read through detectron2's public API."""

from typing import Dict, Sequence

from detectron2.engine import TrainerBase


def evaluation_results(
    trainer: TrainerBase, tasks: Sequence[str] = ("bbox", "segm")
) -> Dict[str, Dict[str, float]]:
    """The last evaluation of a finished ``trainer.train()``: {task: {metric: value}}.

    detectron2's EvalHook puts the evaluator's results into the trainer's EventStorage
    (``trainer.storage``) as "task/metric" scalars (``flatten_results_dict``); this nests
    those of ``tasks`` again, as the evaluator returned them.
    """
    results = {}
    for key, (value, _) in trainer.storage.latest().items():
        task, _, metric = key.partition("/")
        if task in tasks and metric:
            results.setdefault(task, {})[metric] = value
    return results
