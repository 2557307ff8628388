"""The paper's basic procedure (Section 2): pretrain a network on the whole task, train one mask per
subtask (and a control mask on the whole task) over the frozen network, evaluate every mask and
its inverse on every evaluation split. Used by the arithmetic studies, SCAN and the Mathematics
Dataset; it names no task."""

from __future__ import annotations

from pipeline.config import ExperimentConfig
from pipeline.evaluate import evaluate_masks
from pipeline.experiments import register_experiment
from pipeline.stages import TrialContext, pretrained_network, train_masks
from pipeline.studies import register_study


@register_study("masks")
def pretrain_masks_evaluate(ctx: TrialContext) -> dict[str, list[dict]]:
    network = pretrained_network(ctx)
    train_masks(ctx, ctx.task.mask_splits, network)
    return evaluate_masks(ctx, network, list(ctx.task.mask_splits))


# Your own task and model: `pipeline run custom --set task=mypkg.tasks:MyTask --set model.builder=mypkg.nets:build`.
register_experiment("custom", ExperimentConfig(), {"pretrain.steps": 2000, "mask.steps": 1000, "eval_size": 1024},
                    "a template: set task= and model.builder= (registered names or import paths)")
