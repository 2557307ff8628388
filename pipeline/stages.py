"""Generic stage components: a resumable step loop, a shared pretrained network, one mask.

A study's recipe (pipeline/studies/) calls these in the order its procedure needs. Stages hand each
other files; each resumes from its checkpoint. Nothing here knows a task or a model by name: the
task (tasks.registry.Task) supplies data, loss and scoring, the model registry builds the network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock

from models.common import file_hash, write_json_atomic
from models.masking import MaskConfig, MaskedModel, ParameterFilter, applied, make_optimizer, training_step
from models.masking.masks import atomic_torch_save
from models.masking.packing import MaskPack
from models.registry import build_model
from pipeline.config import ExperimentConfig, PretrainConfig, fingerprint, flatten
from pipeline.loop import Stage, learning_rate_schedule, run_stage
from pipeline.storage import Storage
from pipeline.trial import TrialSpec

log = logging.getLogger(__name__)

LAYOUT_VERSION = 2  # of the results folder; bumped when trial ids or pretrain keys change
VALIDATION_SIZE = 256  # examples in the curves' validation set
NOISE_SEED_OFFSET = 2**20  # a mask's noise seed is its data seed plus this


# -- paths -----------------------------------------------------------------------------------------
def pretrain_key(config: ExperimentConfig, task_version: int, split: str) -> str:
    """Everything that decides the pretrained weights, and nothing else."""
    sections = ("task", "task_options", "model", "pretrain", "seed")
    values = {k: v for k, v in flatten(config).items() if k.split(".")[0] in sections}
    return fingerprint(values | {"task_version": task_version, "split": split})


# -- the trial's context -----------------------------------------------------------------------------
@dataclass
class TrialContext:
    """What a recipe needs besides its config: the task, where files go, and whom to tell.

    on_stage(name) is called after each finished stage (a sweep reports it to Tune);
    log_metrics(stage, step, metrics) receives training curves (MLflow, when recorded);
    pack: where the masks of trials that run together (one thread each) train in one pass.
    """

    trial: TrialSpec
    task: object
    results_dir: Path
    storage: Storage
    on_stage: Callable[[str], None] = lambda stage: None
    log_metrics: Callable[[str, int, dict], None] = lambda stage, step, metrics: None
    flush_metrics: Callable[[], None] = lambda: None  # sends what log_metrics holds back (before each checkpoint)
    stages_done: list = field(default_factory=list)
    pack: MaskPack | None = None
    produced: list = field(default_factory=list)  # every file of the trial's finished stages (verified later)

    @property
    def config(self) -> ExperimentConfig:
        return self.trial.config

    @property
    def trial_dir(self) -> Path:
        return self.trial.folder(self.results_dir)

    @property
    def device(self) -> torch.device:
        return torch.device(self.config.device)

    def relative(self, path: Path) -> str:
        return path.relative_to(self.results_dir).as_posix()

    def stage(self, name: str, files: list[Path], produce: Callable[[], None]) -> None:
        """Run `produce` unless its files are here (or in storage) and match the checksums of the
        stage's manifest, which is written last; then push files and manifest to storage."""
        relatives = [self.relative(f) for f in [*files, manifest_path(files)]]
        self.storage.pull_all(*relatives)
        if not is_finished(files):
            produce()
            write_manifest(files)
        self.storage.push(*relatives)
        self.produced += files
        self.stages_done.append(name)
        self.on_stage(name)


# -- verified stages ---------------------------------------------------------------------------------
def manifest_path(files: list[Path]) -> Path:
    """<last file>.manifest.json: the sha256 of each of the stage's files; its presence marks the stage done."""
    return files[-1].with_name(files[-1].name + ".manifest.json")


def write_manifest(files: list[Path]) -> None:
    write_json_atomic({f.name: file_hash(f) for f in files}, manifest_path(files))


def damaged_files(checksums: dict[str, str], root: Path) -> list[Path]:
    """The files (relative to root) that are missing or no longer match their recorded sha256."""
    return [root / name for name, expected in checksums.items()
            if not (root / name).is_file() or file_hash(root / name) != expected]


def is_finished(files: list[Path]) -> bool:
    """The stage's manifest exists and every file matches it. A file that is missing or does not
    match (truncated, overwritten) is reported by name and the stage's files are removed, so the
    stage is redone rather than its output used."""
    manifest = manifest_path(files)
    if not manifest.exists():
        return False
    try:
        expected = json.loads(manifest.read_text())  # a stage's files all sit beside its manifest
        bad = damaged_files({f.name: expected.get(f.name) for f in files}, manifest.parent)
    except (OSError, ValueError) as error:
        bad = [manifest]
        log.warning("stage manifest %s is unreadable (%s)", manifest, error)
    if not bad:
        return True
    log.warning("%s does not match its stage's checksum (corrupt or incomplete); redoing the stage",
                ", ".join(str(f) for f in bad))
    for f in [manifest, *files]:
        f.unlink(missing_ok=True)
    return False


# -- pretraining -------------------------------------------------------------------------------------
def pretrained_network(ctx: TrialContext, split: str | None = None) -> Path:
    """The network trained on `split` (default: the task's pretraining split), trained once and shared
    by every trial with the same key, also across nodes through storage. -> model.pt"""
    split = split or ctx.task.pretrain_split
    folder = ctx.results_dir / "pretrained" / pretrain_key(ctx.config, ctx.trial.task_version, split)
    final = folder / "model.pt"
    files = [folder / "config.json", final]
    relatives = [ctx.relative(f) for f in [*files, manifest_path(files)]]
    ctx.storage.pull_all(*relatives)
    folder.mkdir(parents=True, exist_ok=True)
    # Concurrent trials of a sweep that share this network wait for one of them to train it (a
    # corrupt one is retrained once, by the first trial that finds it).
    with FileLock(folder / ".lock"):
        if not is_finished(files):
            train_network(ctx, split, folder, final)
            write_manifest(files)
    ctx.storage.push(*relatives)
    ctx.produced += files
    name = "pretrain" if split == ctx.task.pretrain_split else f"pretrain {split}"
    ctx.stages_done.append(name)
    ctx.on_stage(name)
    return final


def train_network(ctx: TrialContext, split: str, folder: Path, final: Path) -> None:
    config, task, device = ctx.config, ctx.task, ctx.device
    torch.manual_seed(config.seed)
    model = build_model(config.model, task.dims).to(device)
    optimizer = make_weight_optimizer(config.pretrain, model.parameters())
    schedule = learning_rate_schedule(optimizer, config.pretrain.warmup_steps, config.pretrain.lr_decay_steps)
    generator = torch.Generator(device).manual_seed(config.seed)
    name = "pretrain" if split == task.pretrain_split else f"pretrain {split}"

    def step():
        batch = task.sample(split, config.pretrain.batch_size, generator, device)
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.pretrain.clip)
        optimizer.step()
        schedule.step()
        return {"loss": loss}

    validation = validation_batches(ctx, split)

    def validate() -> float:
        model.eval()
        value = accuracy(task, model, validation)
        model.train()
        return value

    run_stage(ctx, Stage(name, config.pretrain.steps, folder / "checkpoint.pt", step,
                         {"model": model, "optimizer": optimizer, "schedule": schedule, "generator": generator},
                         statistics=lambda step, means: {"lr": schedule.get_last_lr()[0]}, validate=validate))
    write_json_atomic(flatten(config) | {"split": split}, folder / "config.json")
    atomic_torch_save(model.state_dict(), final)
    (folder / "checkpoint.pt").unlink(missing_ok=True)


def make_weight_optimizer(settings: PretrainConfig, parameters) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    return torch.optim.Adam(parameters, lr=settings.lr, eps=settings.adam_eps, betas=(0.9, settings.adam_beta2),
                            weight_decay=settings.weight_decay)


def load_network(ctx: TrialContext, path: Path) -> torch.nn.Module:
    """The saved network in eval mode (no dropout, BatchNorm uses its running statistics)."""
    model = build_model(ctx.config.model, ctx.task.dims)
    try:
        model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    except Exception as error:
        raise RuntimeError(f"cannot load the network {path} ({type(error).__name__}: {str(error)[:200]}); delete "
                           f"its folder {path.parent} and run again to retrain it") from None
    return model.to(ctx.device).eval()


# -- masks -------------------------------------------------------------------------------------------
def mask_files(ctx: TrialContext, name: str) -> tuple[Path, Path]:
    """(<trial>/masks/<name>.masks.pt, <name>.logits.pt); the logits file marks the mask finished."""
    folder = ctx.trial_dir / "masks"
    return folder / f"{name}.masks.pt", folder / f"{name}.logits.pt"


def curve_file(ctx: TrialContext, name: str) -> Path:
    """<trial>/masks/<name>.curve.json: the mask's kept fraction every log_every steps (convergence)."""
    return ctx.trial_dir / "masks" / f"{name}.curve.json"


def mask_seed(ctx: TrialContext, name: str) -> int:
    """The seed of mask `name`'s data and noise: from its place among the task's masks, or, for a
    mask the task does not name (a repeat with another seed), from its name."""
    names = list(ctx.task.mask_splits)
    offset = names.index(name) if name in names else 100 + zlib.crc32(name.encode()) % 800
    return ctx.config.seed * 1000 + 1 + offset


class Curve:
    """[(step, kept_fraction, mean_keep_probability)] of a training mask; a stage-state object (state_dict),
    so a stage resumed from its checkpoint still has every point."""

    def __init__(self):
        self.points: list[tuple[int, float, float]] = []

    def add(self, step: int, statistics: dict) -> None:
        self.points.append((step, statistics["kept_fraction"], statistics["mean_keep_probability"]))

    def state_dict(self) -> dict:
        return {"points": list(self.points)}

    def load_state_dict(self, state: dict) -> None:
        self.points = [tuple(point) for point in state["points"]]

    def save(self, path: Path) -> None:
        write_json_atomic({"columns": ["step", "kept_fraction", "mean_keep_probability"], "points": self.points}, path)


def train_mask(ctx: TrialContext, name: str, split: str, network: Path,
               prepare: Callable[[MaskedModel], None] = lambda masked: None) -> Path:
    """Stage "mask <name>": one mask trained on `split` over the frozen network. -> logits file.

    prepare(masked) runs before training (e.g. to fix some logits); it must be deterministic.
    """
    masks_file, logits_file = mask_files(ctx, name)
    files = [curve_file(ctx, name), masks_file, logits_file]
    ctx.stage(f"mask {name}", files, lambda: _train_mask(ctx, name, split, network, prepare))
    return logits_file


def train_masks(ctx: TrialContext, splits: dict[str, str], network: Path,
                prepare: Callable[[MaskedModel], None] = lambda masked: None) -> dict[str, Path]:
    """train_mask for each {name: split}; with mask.pack, the masks train together (one thread each,
    one MaskPack: the pack of the sweep this trial is in, if any), else one after the other.
    -> {name: logits file}."""
    if not ctx.config.mask.pack or len(splits) < 2:
        return {name: train_mask(ctx, name, split, network, prepare) for name, split in splits.items()}
    packed = dataclasses.replace(ctx, pack=ctx.pack or MaskPack())
    with ThreadPoolExecutor(len(splits), thread_name_prefix="mask") as pool:
        futures = {name: pool.submit(train_mask, packed, name, split, network, prepare)
                   for name, split in splits.items()}
    return {name: future.result() for name, future in futures.items()}


def _train_mask(ctx: TrialContext, name: str, split: str, network: Path, prepare) -> None:
    config, task, device = ctx.config, ctx.task, ctx.device
    masks_file, logits_file = mask_files(ctx, name)
    seed = mask_seed(ctx, name)
    torch.manual_seed(seed)
    masked = make_masked_model(config, load_network(ctx, network))
    # The mask's own noise stream, kept in its checkpoint: its masks do not depend on what else
    # draws random numbers (other masks training in the same process, in a pack).
    noise = torch.Generator("cpu" if config.mask.fused else device).manual_seed(seed + NOISE_SEED_OFFSET)
    masked.noise_generator, masked.pack = noise, ctx.pack
    prepare(masked)
    optimizer = make_optimizer(masked, mask_lr=config.mask.lr)
    schedule = learning_rate_schedule(optimizer, config.mask.warmup_steps)
    generator = torch.Generator(device).manual_seed(seed)

    def task_loss():
        return task.loss(masked, task.sample(split, config.mask.batch_size, generator, device))

    def step():
        loss = training_step(masked, optimizer, task_loss, clip=config.mask.clip)
        schedule.step()
        return {"loss": loss}

    validation = validation_batches(ctx, split)
    curve = Curve()

    def statistics(step: int, means: dict) -> dict:
        values = mask_statistics(masked)
        curve.add(step, values)
        return values | {"total": means["loss"] + values["regularizer"]}

    def validate() -> float:
        with applied(masked.model, masked.deterministic_masks()):
            return accuracy(task, masked.model, validation)

    state = {"logits": masked.logits, "optimizer": optimizer, "schedule": schedule, "generator": generator,
             "noise": noise, "curve": curve}
    checkpoint = logits_file.with_name(f"{name}.checkpoint.pt")
    logits_file.parent.mkdir(parents=True, exist_ok=True)
    with ctx.pack.member() if ctx.pack else contextlib.nullcontext():
        run_stage(ctx, Stage(f"mask {name}", config.mask.steps, checkpoint, step, state, statistics, validate))
    curve.save(curve_file(ctx, name))
    masked.deterministic_masks().save(masks_file)
    atomic_torch_save({n: l.detach().cpu() for n, l in masked.logits_by_name().items()}, logits_file)
    checkpoint.unlink(missing_ok=True)


@torch.no_grad()
def mask_statistics(masked: MaskedModel) -> dict[str, float]:
    """Regulariser α·Σl, mean keep probability σ(l) and the share of weights the deterministic mask keeps."""
    count = sum(l.numel() for l in masked.logits)
    return {"regularizer": float(masked.regularization()),
            "mean_keep_probability": float(sum(torch.sigmoid(l).sum() for l in masked.logits)) / count,
            "kept_fraction": float(sum((l > 0).sum() for l in masked.logits)) / count}


def validation_batches(ctx: TrialContext, split: str) -> list:
    """A fixed, small validation set for the curves: `split`'s evaluation examples where the task
    evaluates on that split, else its first evaluation split."""
    task = ctx.task
    chosen = split if split in task.eval_splits else task.eval_splits[0]
    return list(task.eval_batches(chosen, min(ctx.config.eval_size, VALIDATION_SIZE), ctx.device))


@torch.no_grad()
def accuracy(task, model: torch.nn.Module, batches: list) -> float:
    """Share of examples the task scores correct."""
    return torch.cat([task.correct(model, batch) for batch in batches]).float().mean().item()


def make_masked_model(config: ExperimentConfig, model: torch.nn.Module, **options) -> MaskedModel:
    mask_config = MaskConfig.from_beta(config.mask.beta, config.mask.batch_size, num_samples=config.mask.num_samples)
    parameter_filter = ParameterFilter(biases=config.mask.mask_biases, embeddings=config.mask.mask_embeddings)
    return MaskedModel(model, mask_config, parameter_filter, fused=config.mask.fused, **options)
