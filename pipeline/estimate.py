"""What a sweep will cost, said before it starts: its training steps and, where a step time has been
measured on that kind of device, its device-hours."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.stages import pretrain_key

# Seconds per training step measured on a GPU, by (model family, masked or plain); filled from
# benchmarks/gpu_check.py once it has run on a GPU. None has yet (no GPU was available).
GPU_STEP_SECONDS: dict[tuple[str, str], float] = {}


@dataclass(frozen=True)
class Workload:
    trials: int
    pretrain_steps: int  # once per distinct pretrained network (trials share them)
    mask_steps: int
    families: frozenset[str]

    def lines(self, device: str) -> list[str]:
        total = self.pretrain_steps + self.mask_steps
        lines = [f"{self.trials} trials: about {total:,} training steps ({self.pretrain_steps:,} pretraining, "
                 f"{self.mask_steps:,} mask steps)"]
        if device.startswith("cuda"):
            lines.append(f"estimated GPU-hours: {self.gpu_hours()}")
        return lines

    def gpu_hours(self) -> str:
        missing = sorted(f for f in self.families for kind in ("plain", "masked") if (f, kind) not in GPU_STEP_SECONDS)
        if missing:
            return (f"not measured (no GPU step time for {', '.join(sorted(set(missing)))}; "
                    "python benchmarks/gpu_check.py on a GPU measures them)")
        plain = max(GPU_STEP_SECONDS[(f, "plain")] for f in self.families)  # the slowest family's times
        masked = max(GPU_STEP_SECONDS[(f, "masked")] for f in self.families)
        return f"{(self.pretrain_steps * plain + self.mask_steps * masked) / 3600:.1f}"


def workload(trials: list) -> Workload:
    """trials: [(TrialSpec, task)] of every trial of the sweep."""
    networks = {pretrain_key(trial.config, trial.task_version, task.pretrain_split): trial.config.pretrain.steps
                for trial, task in trials}
    masks = sum(len(task.mask_splits) * trial.config.mask.steps for trial, task in trials)
    return Workload(len(trials), sum(networks.values()), masks, frozenset(t.config.model.builder for t, _ in trials))
