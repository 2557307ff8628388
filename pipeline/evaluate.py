"""The evaluate stage: accuracies with every (inverted) mask, per-layer sharing, Fig. 12, Fig. 7.

Returns plain rows (lists of dicts); pipeline.records turns them into Parquet and MLflow.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from models.masking import Masks, applied, keep_probability_histogram, union
from pipeline.config import ExperimentConfig
from pipeline.experiments import PRESENTATIONS
from pipeline.stages import CONTROL_MASK, load_pretrained, mask_names, trial_dir
from tasks import get_task
from tasks.addmul import operation_performed
from tasks.arithmetic import correct, numbers_from_logits

VALIDATION_SEED = 2021  # the same fixed validation sets for every trial
HISTOGRAM_BINS = 500


def validation_sets(config: ExperimentConfig) -> dict:
    """subtask -> fixed Batch of config.eval_size examples ("full" included)."""
    task = get_task(config.task)
    sets = {}
    for i, subtask in enumerate(["full", *task.subtasks]):
        generator = torch.Generator(config.device).manual_seed(VALIDATION_SEED + i)
        sets[subtask] = task.sample(config.eval_size, subtask, generator, config.device)
    return sets


@torch.no_grad()
def predict(config: ExperimentConfig, model, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    present = PRESENTATIONS[config.presentation]
    return torch.cat([present(model, chunk) for chunk in inputs.split(batch_size)])


def load_masks(config: ExperimentConfig, results_dir: Path, model) -> dict[str, Masks]:
    folder = trial_dir(config, results_dir) / "masks"
    return {name: Masks.load(folder / f"{name}.masks.pt", model) for name in mask_names(config)}


def evaluate(config: ExperimentConfig, pretrained: Path, results_dir: Path) -> dict[str, list[dict]]:
    """-> {"metrics": [...], "layers": [...], "operations": [...], "histograms": [...]} rows."""
    model = load_pretrained(config, pretrained)
    masks = load_masks(config, results_dir, model)
    sets = validation_sets(config)
    conditions = {"none": None} | {m: masks[m] for m in masks} | {f"not-{m}": ~masks[m] for m in masks}
    metrics, operations = [], []
    for condition, mask in conditions.items():
        logits = _predictions_under(config, model, mask, sets)
        for subtask, batch in sets.items():
            accuracy = correct(logits[subtask], batch.targets).float().mean().item()
            metrics.append({"mask": condition, "inverted": condition.startswith("not-"), "subtask": subtask,
                            "accuracy": accuracy})
            if config.task == "addmul" and subtask != "full" and not condition.startswith("not-"):
                operations += _operation_rows(condition, subtask, logits[subtask], batch.operands)
    return {"metrics": metrics, "layers": layer_rows(masks, get_task(config.task).subtasks),
            "operations": operations, "histograms": histogram_rows(config, results_dir)}


def _predictions_under(config, model, mask, sets) -> dict[str, torch.Tensor]:
    if mask is None:
        return {s: predict(config, model, b.inputs) for s, b in sets.items()}
    with applied(model, mask):
        return {s: predict(config, model, b.inputs) for s, b in sets.items()}


def _operation_rows(mask: str, subtask: str, logits: torch.Tensor, operands: torch.Tensor) -> list[dict]:
    """Fig. 12: share of predictions equal to the sum, the product, or neither."""
    labels = Counter(operation_performed(numbers_from_logits(logits)[:, 0], operands))
    total = sum(labels.values())
    return [{"mask": mask, "subtask": subtask, "operation": op, "fraction": labels.get(op, 0) / total}
            for op in ("add", "mul", "none")]


def layer_rows(masks: dict[str, Masks], subtasks: tuple[str, ...]) -> list[dict]:
    """Per mask and layer: total weights, kept, and kept ones shared with the other subtasks' masks."""
    rows = []
    for name, mask in masks.items():
        others = [masks[s] for s in subtasks if s != name]
        reference = union(others) if name != CONTROL_MASK else None
        both = (mask & reference).counts_per_layer() if reference else {}
        for layer, (kept, total) in mask.counts_per_layer().items():
            shared = both[layer][0] if reference else None
            rows.append({"mask": name, "layer": layer, "total": total, "kept": kept, "shared": shared})
        if reference is not None:
            rows.append({"mask": name, "layer": "all", "total": mask.total(), "kept": mask.kept(),
                         "shared": (mask & reference).kept()})
    return rows


def histogram_rows(config: ExperimentConfig, results_dir: Path) -> list[dict]:
    """Fig. 7: counts of σ(l) in 500 bins on [0, 1] per mask."""
    rows = []
    for name in mask_names(config):
        logits = torch.load(trial_dir(config, results_dir) / "masks" / f"{name}.logits.pt", weights_only=True)
        counts, edges = keep_probability_histogram(logits, HISTOGRAM_BINS)
        rows += [{"mask": name, "bin_left": float(edges[i]), "bin_right": float(edges[i + 1]), "count": int(c)}
                 for i, c in enumerate(counts)]
    return rows


def summary_metrics(tables: dict[str, list[dict]], subtasks: tuple[str, ...]) -> dict[str, float]:
    """Flat numbers for MLflow: accuracy/<mask>/<subtask>, kept/<mask>, shared_fraction/<mask>."""
    out = {f"accuracy/{r['mask']}/{r['subtask']}": r["accuracy"] for r in tables["metrics"]}
    for r in tables["layers"]:
        if r["layer"] == "all":
            out[f"kept/{r['mask']}"] = r["kept"]
            out[f"shared_fraction/{r['mask']}"] = r["shared"] / r["kept"] if r["kept"] else float("nan")
    return out

