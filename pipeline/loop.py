"""The one stage loop every recipe trains with: resume from the stage's checkpoint, step, report the
curves, checkpoint. A stage says only what varies — its step (the task's batch and loss through the
model it trains), what it checkpoints, its extra curve values and how it validates."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from models.masking.masks import atomic_torch_save

log = logging.getLogger(__name__)

VALIDATE_EVERY = 10  # validation accuracy on the curves every VALIDATE_EVERY * log_every steps


@dataclass
class Stage:
    """name: of its curves and progress bar; step() -> {name: scalar tensor} (means reported);
    state: objects with state_dict (or torch.Generators) saved in the checkpoint, so that a resumed
    stage draws the same data and continues the same optimisation; statistics(step, means) -> more
    curve values at each report; validate() -> accuracy on the curves every VALIDATE_EVERY reports."""

    name: str
    steps: int
    checkpoint: Path
    step: Callable[[], dict]
    state: dict
    statistics: Callable[[int, dict], dict] | None = None
    validate: Callable[[], float] | None = None


def run_stage(ctx, stage: Stage) -> None:
    """Run `stage` to its last step under the trial's settings (checkpoint_every, log_every), its
    curves to ctx.log_metrics. The curves are flushed before each checkpoint: a worker that dies
    later resumes from that checkpoint with every point up to it recorded (no hole in the curve)."""
    config = ctx.config

    def report(step: int, means: dict) -> None:
        values = means | (stage.statistics(step, means) if stage.statistics else {})
        if stage.validate and (step % (VALIDATE_EVERY * config.log_every) == 0 or step == stage.steps):
            values["validation_accuracy"] = stage.validate()
        ctx.log_metrics(stage.name, step, values)

    run_resumable(stage.step, stage.state, stage.steps, stage.checkpoint, config.checkpoint_every, stage.name,
                  report, config.log_every, before_checkpoint=ctx.flush_metrics)


def run_resumable(
    step: Callable[[], dict | None], state: dict, total_steps: int, checkpoint: Path, every: int, description: str,
    report: Callable[[int, dict], None] | None = None, report_every: int = 100,
    before_checkpoint: Callable[[], None] = lambda: None,
) -> None:
    """Call `step` until total_steps, saving `state` (objects with state_dict) every `every` steps.

    state also gets the data generator and torch's RNG so that a resumed run draws the same data.
    step() may return {name: scalar tensor}; every `report_every` steps report(step, means) gets
    their means over those steps (read from the tensors only then, so steps do not wait on them).
    """
    done = _restore(state, checkpoint, description)
    sums: dict = {}
    with tqdm(total=total_steps, initial=done, desc=description, unit="step", mininterval=1.0) as bar:
        for i in range(done, total_steps):
            values = step() or {}
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value.detach()
            bar.update(1)
            if report and ((i + 1) % report_every == 0 or i + 1 == total_steps) and sums:
                count = (i + 1) % report_every or report_every
                report(i + 1, {name: float(total) / count for name, total in sums.items()})
                sums = {}
            if (i + 1) % every == 0 and i + 1 < total_steps:
                before_checkpoint()
                payload = {n: o.get_state() if isinstance(o, torch.Generator) else o.state_dict() for n, o in state.items()}
                atomic_torch_save(payload | {"step": i + 1, "torch_rng": torch.get_rng_state()}, checkpoint)


def _restore(state: dict, checkpoint: Path, description: str) -> int:
    """Load a mid-stage checkpoint into `state`. -> steps done (0 without one, or with a corrupt one,
    which is reported and removed: the stage restarts from its beginning)."""
    if not checkpoint.exists():
        return 0
    try:
        saved = torch.load(checkpoint, weights_only=False)
        for name, obj in state.items():
            obj.set_state(saved[name]) if isinstance(obj, torch.Generator) else obj.load_state_dict(saved[name])
        torch.set_rng_state(saved["torch_rng"])
    except Exception as error:  # torch raises several types for a truncated or foreign file
        log.warning("%s: checkpoint %s is corrupt (%s: %s); restarting the stage from step 0", description,
                    checkpoint, type(error).__name__, str(error)[:200])
        checkpoint.unlink(missing_ok=True)
        return 0
    log.info("%s: resuming at step %d from %s", description, saved["step"], checkpoint)
    return saved["step"]


def learning_rate_schedule(optimizer, warmup_steps: int = 0, decay_steps: tuple[int, ...] = ()):
    """LambdaLR: linear warm-up from 0 over warmup_steps, then ÷10 at each of decay_steps."""

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        return warm * 0.1 ** sum(step >= s for s in decay_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
