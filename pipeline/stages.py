"""pretrain -> mask -> evaluate. Stages hand each other files; each resumes from its checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock
from tqdm.auto import tqdm

from models.masking import MaskConfig, MaskedModel, ParameterFilter, make_optimizer, training_step
from models.atomic import atomic_path
from models.masking.masks import atomic_torch_save
from pipeline.config import ExperimentConfig, fingerprint, flatten
from pipeline.experiments import PRESENTATIONS, build_model
from tasks import get_task
from tasks.arithmetic import digit_loss

log = logging.getLogger(__name__)

CONTROL_MASK = "full"  # mask trained on the whole task: the check of α (Appendix C.2)


# -- paths -----------------------------------------------------------------------------------------
def pretrain_key(config: ExperimentConfig) -> str:
    """Everything that decides the pretrained weights, and nothing else."""
    values = {k: v for k, v in flatten(config).items() if k.split(".")[0] in ("task", "presentation", "model", "pretrain", "seed")}
    values["task_version"] = get_task(config.task).version
    return fingerprint(values)


def trial_id(config: ExperimentConfig) -> str:
    return f"{config.experiment}-s{config.seed}-{fingerprint(flatten(config) | {'task_version': get_task(config.task).version})}"


def pretrain_dir(config: ExperimentConfig, results_dir: Path) -> Path:
    return results_dir / "pretrained" / pretrain_key(config)


def trial_dir(config: ExperimentConfig, results_dir: Path) -> Path:
    return results_dir / "trials" / trial_id(config)


def write_json_atomic(data: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))


# -- a resumable loop ------------------------------------------------------------------------------
def run_resumable(
    step: Callable[[], None], state: dict, total_steps: int, checkpoint: Path, every: int, description: str
) -> None:
    """Call `step` until total_steps, saving `state` (objects with state_dict) every `every` steps.

    state also gets the data generator and torch's RNG so that a resumed run draws the same data.
    """
    done = 0
    if checkpoint.exists():
        saved = torch.load(checkpoint, weights_only=False)
        for name, obj in state.items():
            obj.set_state(saved[name]) if isinstance(obj, torch.Generator) else obj.load_state_dict(saved[name])
        torch.set_rng_state(saved["torch_rng"])
        done = saved["step"]
        log.info("%s: resuming at step %d from %s", description, done, checkpoint)
    with tqdm(total=total_steps, initial=done, desc=description, unit="step", mininterval=1.0) as bar:
        for i in range(done, total_steps):
            step()
            bar.update(1)
            if (i + 1) % every == 0 and i + 1 < total_steps:
                payload = {n: o.get_state() if isinstance(o, torch.Generator) else o.state_dict() for n, o in state.items()}
                atomic_torch_save(payload | {"step": i + 1, "torch_rng": torch.get_rng_state()}, checkpoint)


# -- stages ----------------------------------------------------------------------------------------
def pretrain(config: ExperimentConfig, results_dir: Path) -> Path:
    """Train the network on the full task; reuse a finished one with the same key. -> model.pt"""
    folder = pretrain_dir(config, results_dir)
    final = folder / "model.pt"
    if final.exists():
        log.info("pretrained network found: %s", final)
        return final
    folder.mkdir(parents=True, exist_ok=True)
    # Concurrent trials of a sweep that share this network wait for one of them to train it.
    with FileLock(folder / ".lock"):
        if not final.exists():
            _pretrain(config, folder, final)
    return final


def _pretrain(config: ExperimentConfig, folder: Path, final: Path) -> None:
    task, device = get_task(config.task), torch.device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config.model, task.input_size, task.output_size).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.pretrain.lr)
    generator = torch.Generator(device).manual_seed(config.seed)
    present = PRESENTATIONS[config.presentation]

    def step():
        batch = task.sample(config.pretrain.batch_size, "full", generator, device)
        optimizer.zero_grad(set_to_none=True)
        digit_loss(present(model, batch.inputs), batch.targets).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.pretrain.clip)
        optimizer.step()

    state = {"model": model, "optimizer": optimizer, "generator": generator}
    run_resumable(step, state, config.pretrain.steps, folder / "checkpoint.pt", config.checkpoint_every, "pretrain")
    write_json_atomic(flatten(config), folder / "config.json")
    atomic_torch_save(model.state_dict(), final)
    (folder / "checkpoint.pt").unlink(missing_ok=True)


def load_pretrained(config: ExperimentConfig, path: Path) -> torch.nn.Module:
    task = get_task(config.task)
    model = build_model(config.model, task.input_size, task.output_size)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.to(config.device).eval()


def mask_names(config: ExperimentConfig) -> list[str]:
    return [*get_task(config.task).subtasks, CONTROL_MASK]


def train_mask(config: ExperimentConfig, subtask: str, pretrained: Path, results_dir: Path) -> Path:
    """Train one mask on `subtask` over the frozen network. -> <trial>/masks/<subtask>.logits.pt"""
    folder = trial_dir(config, results_dir) / "masks"
    final = folder / f"{subtask}.logits.pt"
    if final.exists():
        return final
    folder.mkdir(parents=True, exist_ok=True)
    task, device = get_task(config.task), torch.device(config.device)
    seed = config.seed * 1000 + 1 + mask_names(config).index(subtask)
    torch.manual_seed(seed)
    masked = make_masked_model(config, load_pretrained(config, pretrained))
    optimizer = make_optimizer(masked, mask_lr=config.mask.lr)
    generator = torch.Generator(device).manual_seed(seed)
    present = PRESENTATIONS[config.presentation]

    def task_loss():
        batch = task.sample(config.mask.batch_size, subtask, generator, device)
        return digit_loss(present(masked, batch.inputs), batch.targets)

    def step():
        training_step(masked, optimizer, task_loss)

    state = {"logits": masked.logits, "optimizer": optimizer, "generator": generator}
    run_resumable(step, state, config.mask.steps, folder / f"{subtask}.checkpoint.pt", config.checkpoint_every,
                  f"mask {subtask}")
    masked.deterministic_masks().save(folder / f"{subtask}.masks.pt")
    # the logits file marks the stage finished, so it is written last
    atomic_torch_save({n: l.detach().cpu() for n, l in masked.logits_by_name().items()}, final)
    (folder / f"{subtask}.checkpoint.pt").unlink(missing_ok=True)
    return final


def make_masked_model(config: ExperimentConfig, model: torch.nn.Module) -> MaskedModel:
    mask_config = MaskConfig.from_beta(config.mask.beta, config.mask.batch_size, num_samples=config.mask.num_samples)
    return MaskedModel(model, mask_config, ParameterFilter(biases=config.mask.mask_biases), fused=config.mask.fused)


def write_trial_config(config: ExperimentConfig, results_dir: Path) -> Path:
    folder = trial_dir(config, results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.json"
    write_json_atomic(flatten(config) | {"task_version": get_task(config.task).version, "trial_id": trial_id(config)},
                      path)
    return path
