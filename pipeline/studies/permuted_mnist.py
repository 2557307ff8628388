"""Section 3.3 and Appendix C.5: transfer on permuted MNIST, weights and masks trained together.

For each permutation t in turn (one resumable stage "task<t>" each):
  1. start from the weights after task t-1 (a fresh network for task 0); the weights the masks of
     tasks 0..t-1 use are frozen for good, every other weight is re-initialised;
  2. a new mask: logits of used weights start at USED, of free weights at NEW (task_options.logit_init;
     the first task's logits all start at USED);
  3. train the free weights and the mask logits jointly on task t (mask.steps steps, K = mask.num_samples
     mask samples per batch, Adam with lr mask.lr on the logits and pretrain.lr on the weights);
  4. evaluate every task 0..t with its own deterministic mask on the test images (frozen weights
     never change, so earlier accuracies must not change either), and count per layer how many of
     task t's kept weights earlier tasks use (Figs. 3, 15).
A phase's files (weights, logits, masks, evaluation) let a stopped trial continue in the phase it
stopped in, at its last checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from models.registry import model_settings
from models.masking import MaskedModel, Masks, applied, continual_logits, make_optimizer, reinitialize_free_weights
from models.masking import training_step, union
from models.masking.masks import atomic_torch_save, layer_of
from models.registry import build_model
from pipeline.config import ExperimentConfig, MaskStageConfig, PretrainConfig
from pipeline.experiments import SweepSpec, register_experiment, register_sweep
from models.common import write_json_atomic
from pipeline.loop import Stage, run_stage
from pipeline.stages import TrialContext, accuracy, make_masked_model, mask_statistics
from pipeline.experiments import register_study
from tasks.registry import options_for

log = logging.getLogger(__name__)


# -- files of one phase ------------------------------------------------------------------------------
def phase_folder(ctx: TrialContext, task: int) -> Path:
    return ctx.trial_dir / "phases" / f"task{task}"


def phase_files(ctx: TrialContext, task: int) -> list[Path]:
    """masks, logits, evaluation, weights; the weights file (written last) marks the phase finished."""
    folder = phase_folder(ctx, task)
    return [folder / "masks.pt", folder / "logits.pt", folder / "evaluation.json", folder / "weights.pt"]


# -- the recipe --------------------------------------------------------------------------------------
@register_study("transfer")
def continual_masks(ctx: TrialContext) -> dict[str, list[dict]]:
    """-> {"continual", "continual_layers", "metrics"} rows."""
    task = ctx.task.with_seed(ctx.config.seed)
    for t in range(len(task.task_names)):
        ctx.stage(f"task{t}", phase_files(ctx, t), lambda t=t: train_phase(ctx, task, t))
    evaluations = [json.loads(phase_files(ctx, t)[2].read_text()) for t in range(len(task.task_names))]
    final = evaluations[-1]["accuracy"]
    return {
        "continual": [row for e in evaluations for row in e["accuracy"]],
        "continual_layers": [row for e in evaluations for row in e["layers"]],
        "metrics": [{"mask": f"task{r['evaluated_task']}", "inverted": False, "subtask": f"task{r['evaluated_task']}",
                     "accuracy": r["accuracy"]} for r in final],
    }


def prepare_phase(ctx: TrialContext, task, t: int) -> tuple[MaskedModel, Masks | None]:
    """The masked model at the start of phase t: weights of earlier tasks frozen, the others
    re-initialised, new logits. -> (masked model, union of earlier masks or None for t = 0)."""
    config = ctx.config
    if t == 0:
        torch.manual_seed(config.seed)
        model = build_model(config.model, task.dims)
        used = None
    else:
        model = build_model(config.model, task.dims)
        model.load_state_dict(torch.load(phase_files(ctx, t - 1)[3], weights_only=True, map_location="cpu"))
        used = union([Masks.load(phase_files(ctx, s)[0], model) for s in range(t)])
        reinitialize_free_weights(model, used, torch.Generator().manual_seed(phase_seed(config.seed, t)))
    model = model.to(ctx.device).train()
    frozen = {name: keep.to(ctx.device) for name, keep in used.tensors.items()} if used is not None else None
    masked = make_masked_model(config, model, train_weights=True, frozen_weights=frozen)
    check_every_parameter_masked(masked)
    used_logit, new_logit = task.initial_logits
    if used is None:
        with torch.no_grad():
            for logit in masked.logits:
                logit.fill_(used_logit)
    else:
        continual_logits(masked, used, used_logit, new_logit)
    return masked, used


def phase_seed(seed: int, t: int) -> int:
    return seed * 1000 + 1 + t


def check_every_parameter_masked(masked: MaskedModel) -> None:
    """An unmasked parameter (e.g. a bias with mask.mask_biases=false) would keep training in later
    tasks and change what earlier tasks compute; the authors' code masks the biases too."""
    unmasked = [n for n, _ in masked.model.named_parameters() if n not in masked.names]
    if unmasked:
        raise ValueError(f"the transfer study needs every parameter masked, but {unmasked[:4]} are not "
                         "(set mask.mask_biases=true and mask.mask_embeddings=true)")


def train_phase(ctx: TrialContext, task, t: int) -> None:
    """Stage "task<t>": joint training of free weights and the new mask, then its files."""
    config, device = ctx.config, ctx.device
    masks_file, logits_file, evaluation_file, weights_file = phase_files(ctx, t)
    masked, used = prepare_phase(ctx, task, t)
    torch.manual_seed(phase_seed(config.seed, t))
    optimizer = make_optimizer(masked, mask_lr=config.mask.lr, weight_lr=config.pretrain.lr)
    generator = torch.Generator(device).manual_seed(phase_seed(config.seed, t))
    split = task.task_names[t]

    def step():
        loss = training_step(masked, optimizer, lambda: task.loss(masked, task.sample(split, config.mask.batch_size,
                                                                                     generator, device)),
                             clip=config.mask.clip)
        return {"loss": loss}

    checkpoint = weights_file.with_name("checkpoint.pt")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    run_stage(ctx, Stage(f"task {t}", config.mask.steps, checkpoint, step,
                         {"masked": masked, "optimizer": optimizer, "generator": generator},
                         statistics=lambda step, means: mask_statistics(masked)))
    weights = settled_weights(masked)
    masks = masked.deterministic_masks()
    masks.save(masks_file)
    atomic_torch_save({n: l.detach().cpu() for n, l in masked.logits_by_name().items()}, logits_file)
    earlier = [Masks.load(phase_files(ctx, s)[0]) for s in range(t)]
    write_json_atomic(evaluate_phase(ctx, task, t, weights, earlier + [masks], used), evaluation_file)
    atomic_torch_save(weights, weights_file)
    checkpoint.unlink(missing_ok=True)


def settled_weights(masked: MaskedModel) -> dict[str, torch.Tensor]:
    """The model's weights with frozen entries at their saved values (bit for bit), on the CPU."""
    with torch.no_grad():
        effective = masked.effective_weights()
        return {name: effective[name].detach().cpu().clone() for name, _ in masked.model.named_parameters()}


# -- evaluation after a phase --------------------------------------------------------------------------
def evaluate_phase(ctx: TrialContext, task, t: int, weights: dict, masks: list[Masks], used: Masks | None) -> dict:
    """{"accuracy": rows (after_task, evaluated_task, accuracy) for tasks 0..t with their own masks,
    "layers": rows (after_task, layer, parameter, total, kept, shared_with_earlier) of task t's mask}."""
    model = build_model(ctx.config.model, task.dims)
    model.load_state_dict(weights)
    model = model.to(ctx.device).eval()
    rows = []
    for s, mask in enumerate(masks):
        with applied(model, mask):
            score = accuracy(task, model, task.eval_batches(task.task_names[s], ctx.config.eval_size, ctx.device))
        rows.append({"after_task": t, "evaluated_task": s, "accuracy": score})
        log.info("after task %d: task %d accuracy %.4f", t, s, score)
    return {"accuracy": rows, "layers": sharing_rows(t, masks[-1], used)}


def sharing_rows(t: int, mask: Masks, used: Masks | None) -> list[dict]:
    """Per parameter: task t's kept entries, and how many of them earlier tasks use (None for t = 0)."""
    rows = []
    for name, keep in mask.tensors.items():
        shared = int((keep & used.tensors[name]).sum()) if used is not None else None
        rows.append({"after_task": t, "layer": layer_of(name), "parameter": name.rsplit(".", 1)[-1],
                     "total": keep.numel(), "kept": int(keep.sum()), "shared_with_earlier": shared})
    return rows


# -- presets -----------------------------------------------------------------------------------------
BATCH_SIZE = 128
ALPHA = 1e-5  # the paper's α (Appendix C.5); MaskStageConfig takes β = b·α


def _permuted_mnist(logit_init: str) -> ExperimentConfig:
    return ExperimentConfig(
        study="transfer", task="permuted_mnist", eval_size=10_000, checkpoint_every=2000,
        task_options=options_for("permuted_mnist", permutations=11, logit_init=logit_init),
        model=model_settings("fnn", size="800,800,64"),
        pretrain=PretrainConfig(lr=1e-2),  # the weights' lr in the joint phases: C.5 has one lr, 1e-2
        mask=MaskStageConfig(steps=30_000, lr=1e-2, beta=ALPHA * BATCH_SIZE, batch_size=BATCH_SIZE, num_samples=8,
                             mask_biases=True),
    )


# 150 steps per task left the first mask keeping every weight (all later tasks at chance); at 300
# steps with a 400-400-64 net the first mask already prunes (input layer 10 % kept).
_SMOKE = {"task_options.permutations": 3, "mask.steps": 300, "model.size": "400,400,64", "eval_size": 2000,
          "checkpoint_every": 100}
_TINY = {"task_options.permutations": 2, "model.size": "16,16,8"}
# CPU scale (reproduction/): 5 tasks of 3,000 steps on a 400-400-64 net (the paper: 11 of 30k on 800-800-64).
_CPU = {"task_options.permutations": 5, "mask.steps": 3000, "model.size": "400,400,64", "checkpoint_every": 500}

register_experiment("permuted-mnist", _permuted_mnist("default"), _SMOKE,
                    "Section 3.3, Fig. 3: 11 permuted MNIST tasks, weights and masks trained together, "
                    "used weights frozen", _TINY, _CPU)
register_experiment("permuted-mnist-prefer-old", _permuted_mnist("prefer-old"), _SMOKE,
                    "Fig. 15a: as permuted-mnist, new masks start at logit 2 on used weights, 0 on free ones", _TINY, _CPU)
register_experiment("permuted-mnist-prefer-old-more", _permuted_mnist("prefer-old-more"), _SMOKE,
                    "Fig. 15b: as permuted-mnist, new masks start at logit 2 on used weights, -1 on free ones", _TINY, _CPU)

register_sweep("permuted-mnist", SweepSpec(
    ("permuted-mnist", "permuted-mnist-prefer-old", "permuted-mnist-prefer-old-more"),
    smoke_grid={"model.size": ["200,200,64"]},  # 2 seeds x 3 initialisations in minutes on 2 cores
    scales={"cpu": {"seeds": 5}},
    description="Figs. 3, 15a, 15b: sharing per layer after every second task, three mask initialisations",
))
