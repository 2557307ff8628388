"""The evaluate stage: accuracies with every (inverted) mask, per-layer sharing, σ(l) histograms,
and whatever rows the task adds (its `condition_rows` and `mask_rows`, where it has them).

Returns plain rows (table name -> list of dicts); pipeline.records turns them into Parquet and MLflow.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from models.masking import Masks, applied, iou, keep_probability_histogram, union
from pipeline.stages import TrialContext, accuracy, curve_file, load_network, mask_files

HISTOGRAM_BINS = 500
LOW_CUTOFF = 0.0002  # Fig. 7a: values below it are left out (10 % of the first of 500 bins)
CONVERGENCE_WINDOW = 0.2  # the kept fraction is compared over the last 20 % of a mask's steps
UNCERTAIN = (0.1, 0.9)  # σ(l) in [0.1, 0.9): a weight the mask has not decided on (Fig. 7)


def evaluate_masks(ctx: TrialContext, network: Path, mask_names: list[str]) -> dict[str, list[dict]]:
    """-> {"metrics", "layers", "histograms", "convergence", *the task's own tables} rows."""
    task = ctx.task
    model = load_network(ctx, network)
    masks = {name: Masks.load(mask_files(ctx, name)[0], model) for name in mask_names}
    batches = {split: list(task.eval_batches(split, ctx.config.eval_size, ctx.device)) for split in task.eval_splits}
    conditions = {"none": None} | masks | {f"not-{m}": ~masks[m] for m in masks}
    tables = {"metrics": [], "layers": layer_rows(masks, task.control_mask),
              "histograms": histogram_rows(ctx, mask_names), "convergence": convergence_rows(ctx, mask_names)}
    for condition, mask in conditions.items():
        inverted = condition.startswith("not-")
        with applied(model, mask) if mask is not None else contextlib.nullcontext():
            for split, split_batches in batches.items():
                tables["metrics"].append({"mask": condition, "inverted": inverted, "subtask": split,
                                          "accuracy": accuracy(task, model, split_batches)})
            if hasattr(task, "condition_rows"):
                _extend(tables, task.condition_rows(condition, inverted, model, batches))
    if hasattr(task, "mask_rows"):
        _extend(tables, task.mask_rows(model, masks))
    return tables


def _extend(tables: dict[str, list[dict]], more: dict[str, list[dict]]) -> None:
    for name, rows in more.items():
        tables.setdefault(name, []).extend(rows)


def layer_rows(masks: dict[str, Masks], control: str | None) -> list[dict]:
    """Per mask and layer: total weights, kept, and kept ones shared with the other masks (the
    control mask, trained on the whole task, is neither compared nor a reference)."""
    rows = []
    for name, mask in masks.items():
        others = [masks[s] for s in masks if s not in (name, control)]
        reference = union(others) if name != control and others else None
        both = (mask & reference).counts_per_layer() if reference else {}
        for layer, (kept, total) in mask.counts_per_layer().items():
            shared = both[layer][0] if reference else None
            rows.append({"mask": name, "layer": layer, "total": total, "kept": kept, "shared": shared})
        if reference is not None:
            rows.append({"mask": name, "layer": "all", "total": mask.total(), "kept": mask.kept(),
                         "shared": (mask & reference).kept()})
    return rows


def iou_rows(pairs: dict[str, tuple[Masks, Masks]]) -> list[dict]:
    """Per pair of masks trained for the same thing with different seeds, per layer (and "all"):
    their IoU and what each keeps (Appendix B.1)."""
    rows = []
    for pair, (first, second) in pairs.items():
        both, either = (first & second).counts_per_layer(), (first | second).counts_per_layer()
        kept_first, kept_second = first.counts_per_layer(), second.counts_per_layer()
        for layer, (total_both, total) in both.items():
            rows.append({"pair": pair, "layer": layer, "iou": total_both / either[layer][0] if either[layer][0] else None,
                         "kept_a": kept_first[layer][0], "kept_b": kept_second[layer][0], "total": total})
        rows.append({"pair": pair, "layer": "all", "iou": iou(first, second), "kept_a": first.kept(),
                     "kept_b": second.kept(), "total": first.total()})
    return rows


def histogram_rows(ctx: TrialContext, mask_names: list[str]) -> list[dict]:
    """Fig. 7: counts of σ(l) in 500 bins on [0, 1] per mask. The first bin's row also says how many
    of its values are below LOW_CUTOFF (`low_count`, `low_cutoff`; null on the other bins): Fig. 7a
    leaves out only those, the "bottom 10% of the first bin", which the bin counts cannot tell."""
    rows = []
    for name in mask_names:
        logits = torch.load(mask_files(ctx, name)[1], weights_only=True)
        counts, edges = keep_probability_histogram(logits, HISTOGRAM_BINS)
        low = count_below(logits, LOW_CUTOFF)
        rows += [{"mask": name, "bin_left": float(edges[i]), "bin_right": float(edges[i + 1]), "count": int(c),
                  "low_count": low if i == 0 else None, "low_cutoff": LOW_CUTOFF if i == 0 else None}
                 for i, c in enumerate(counts)]
    return rows


def count_below(logits: dict[str, torch.Tensor], cutoff: float) -> int:
    """How many σ(l) over all masked weights are below `cutoff` (computed as the histogram computes σ)."""
    return int(sum((torch.sigmoid(l.detach().float()) < cutoff).sum() for l in logits.values()))


def convergence_rows(ctx: TrialContext, mask_names: list[str]) -> list[dict]:
    """Per mask: its kept fraction at the end and at the first curve point at or after 80 % of its
    steps, and the share of σ(l) in [0.1, 0.9) (masks trained before curves were kept get no row)."""
    rows = []
    for name in mask_names:
        path = curve_file(ctx, name)
        if not path.exists():
            continue
        points = json.loads(path.read_text())["points"]  # [step, kept_fraction, mean_keep_probability]
        last_step = points[-1][0]
        at_80 = next(p for p in points if p[0] >= (1 - CONVERGENCE_WINDOW) * last_step)
        logits = torch.load(mask_files(ctx, name)[1], weights_only=True)
        probabilities = torch.cat([torch.sigmoid(l.float()).flatten() for l in logits.values()])
        uncertain = ((probabilities >= UNCERTAIN[0]) & (probabilities < UNCERTAIN[1])).float().mean().item()
        rows.append({"mask": name, "steps": last_step, "kept_fraction": points[-1][1], "step_at_80": at_80[0],
                     "kept_fraction_at_80": at_80[1], "uncertain_fraction": uncertain})
    return rows


def summary_metrics(tables: dict[str, list[dict]]) -> dict[str, float]:
    """Flat numbers for MLflow: accuracy/<mask>/<subtask>, kept/<mask>, shared_fraction/<mask>."""
    out = {f"accuracy/{r['mask']}/{r['subtask']}": r["accuracy"] for r in tables.get("metrics", [])}
    for r in tables.get("layers", []):
        if r["layer"] == "all":
            out[f"kept/{r['mask']}"] = r["kept"]
            out[f"shared_fraction/{r['mask']}"] = r["shared"] / r["kept"] if r["kept"] else float("nan")
    return out
