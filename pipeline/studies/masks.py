"""The paper's basic procedure (Section 2): pretrain a network on the whole task, train one mask per
subtask (and a control mask on the whole task) over the frozen network, evaluate every mask and
its inverse on every evaluation split. Used by the arithmetic studies, SCAN and the Mathematics
Dataset; it names no task."""

from __future__ import annotations

from models.masking import Masks, applied
from pipeline.config import ExperimentConfig
from pipeline.evaluate import convergence_rows, evaluate_masks, histogram_rows, iou_rows
from pipeline.experiments import register_experiment
from pipeline.stages import TrialContext, accuracy, load_network, mask_files, pretrained_network, train_masks
from pipeline.experiments import register_study

REPEAT = "again"  # suffix of the second mask of a subtask, trained with another seed


@register_study("masks")
def pretrain_masks_evaluate(ctx: TrialContext) -> dict[str, list[dict]]:
    network = pretrained_network(ctx)
    train_masks(ctx, ctx.task.mask_splits, network)
    return evaluate_masks(ctx, network, list(ctx.task.mask_splits))


@register_study("repeat-masks")
def repeat_masks(ctx: TrialContext) -> dict[str, list[dict]]:
    """Mask stability (Appendix B.1) on any task: two masks per subtask from different mask seeds, their IoU.

    The first mask of each subtask is the one `masks` trains (same name, same seed); the second,
    `<subtask>-again`, differs only in its seed (data order and noise). -> `mask_iou` rows per subtask."""
    network = pretrained_network(ctx)
    subtasks = {name: split for name, split in ctx.task.mask_splits.items() if name != ctx.task.control_mask}
    names = {**subtasks, **{f"{name}-{REPEAT}": split for name, split in subtasks.items()}}
    train_masks(ctx, names, network)
    model = load_network(ctx, network)
    masks = {name: Masks.load(mask_files(ctx, name)[0], model) for name in names}
    return {"mask_iou": iou_rows({name: (masks[name], masks[f"{name}-{REPEAT}"]) for name in subtasks}),
            "metrics": own_split_accuracy_rows(ctx, model, masks, names),
            "histograms": histogram_rows(ctx, list(names)), "convergence": convergence_rows(ctx, list(names))}


def own_split_accuracy_rows(ctx: TrialContext, model, masks: dict[str, Masks], splits: dict[str, str]) -> list[dict]:
    """The network's accuracy on the whole task (mask "none") and each mask's on its own split."""
    task = ctx.task
    rows = [{"mask": "none", "inverted": False, "subtask": task.pretrain_split,
             "accuracy": accuracy(task, model, list(task.eval_batches(task.pretrain_split, ctx.config.eval_size, ctx.device)))}]
    for name, split in splits.items():
        with applied(model, masks[name]):
            batches = list(task.eval_batches(split, ctx.config.eval_size, ctx.device))
            rows.append({"mask": name, "inverted": False, "subtask": split, "accuracy": accuracy(task, model, batches)})
    return rows


# Your own task and model: `pipeline run custom --set task=mypkg.tasks:MyTask --set model.builder=mypkg.nets:build`.
register_experiment("custom", ExperimentConfig(), {"pretrain.steps": 2000, "mask.steps": 1000, "eval_size": 1024},
                    "a template: set task= and model.builder= (registered names or import paths)")
