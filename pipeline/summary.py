"""What a sweep did, read from its trials' own folders: done, failed, retried, resumed."""

from __future__ import annotations

import json
import shlex
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.trial import TrialSpec


@dataclass
class SweepSummary:
    name: str
    done: int
    failed: int
    unfinished: int  # not failed, not done: the sweep was interrupted
    retried: int  # trials that failed in this run and were retried
    resumed_trials: int  # trials continued from an earlier, interrupted run
    wall_seconds: float
    results_dir: Path
    tracking_uri: str
    parent_run_id: str
    resumed: bool
    interrupted: bool = False
    stopped_by: str = ""  # the signal that stopped the sweep: "SIGINT" (Ctrl-C) or "SIGTERM" (a scheduler)
    finished_earlier: int = 0  # trials an earlier run finished (not run again)
    killed_for_memory: list = field(default_factory=list)  # ids of failed trials whose worker Ray killed for memory
    node_memory: str = ""  # what Ray said the node had when it killed one ("5.00GB used / 23.54GB limit")


def attempts(trials: list[TrialSpec], results_dir: Path) -> dict[str, tuple[int, bool]]:
    """(attempts so far, finished) of every trial, by trial id: a resumed sweep's trials keep the
    driver id they started with, so what ran in this run is told by comparing with this snapshot
    from its start."""
    return {trial.id: (sum(_attempts_of(trial, results_dir).values()),
                       (trial.folder(results_dir) / "recorded.json").exists()) for trial in trials}


def _attempts_of(trial: TrialSpec, results_dir: Path) -> dict[str, int]:
    path = trial.folder(results_dir) / "attempts.json"
    return json.loads(path.read_text()) if path.exists() else {}


def summarise(name: str, outcomes: list[tuple[TrialSpec, BaseException | None]], results_dir: Path, uri: str,
              parent: str, seconds: float, resumed: bool, stopped_by: str, before: dict) -> SweepSummary:
    """Counts per trial, read from the trials' own folders. outcomes: (trial, the error its Tune trial
    ended with, or None) for every trial (a pack counts each of its members); done = recorded in
    Parquet and MLflow; failed = not done, in a Tune trial that ended in error; before: attempts()
    at the start."""
    done = failed = retried = resumed_trials = finished_earlier = 0
    killed, node_memory = [], ""
    for trial, error in outcomes:
        finished = (trial.folder(results_dir) / "recorded.json").exists()
        done += finished
        failed += not finished and error is not None
        if not finished and (said := memory_kill(error)) is not None:
            killed.append(trial.id)
            node_memory = said
        ran_before, finished_before = before.get(trial.id, (0, False))
        ran_now = sum(_attempts_of(trial, results_dir).values()) - ran_before
        retried += ran_now > 1
        resumed_trials += ran_before > 0 and not finished_before and ran_now > 0  # continued in this run
        finished_earlier += finished_before
    return SweepSummary(name, done, failed, len(outcomes) - done - failed, retried, resumed_trials, seconds,
                        results_dir, uri, parent, resumed, bool(stopped_by), stopped_by, finished_earlier, killed,
                        node_memory)


def memory_kill(error: BaseException | None) -> str | None:
    """What the node had when Ray's memory monitor killed the trial's worker ("5.00GB used / 23.54GB
    limit"; "" where Ray did not say), or None if the error is something else."""
    text = str(error) if error is not None else ""
    if "running low on memory" not in text:
        return None
    said = re.search(r"was ([\d.]+\s*[KMGT]?B used / [\d.]+\s*[KMGT]?B limit)", text)
    return said.group(1) if said else ""


def summary_lines(summary: SweepSummary) -> list[str]:
    lines = [
        f"sweep {summary.name}{' (resumed)' if summary.resumed else ''}"
        f"{' INTERRUPTED' if summary.interrupted or summary.unfinished else ''}"
        f"{f' by {summary.stopped_by}' if summary.stopped_by else ''}: {summary.done} trials done, "
        f"{summary.failed} failed, {summary.unfinished} unfinished, {summary.retried} retried after a failure, "
        f"{summary.resumed_trials} resumed from an earlier run, "
        f"{f'{summary.finished_earlier} finished in an earlier run, ' if summary.finished_earlier else ''}"
        f"{summary.wall_seconds:.0f} s",
        f"Parquet:  {summary.results_dir / 'parquet'}",
        f"MLflow:   mlflow ui --backend-store-uri {shlex.quote(summary.tracking_uri)}  (parent run {summary.parent_run_id})",
    ]
    if summary.killed_for_memory:
        lines.append(f"memory:   {len(summary.killed_for_memory)} failed trials were killed by Ray for memory (the node "
                     f"had {summary.node_memory or 'too little free'}): {', '.join(summary.killed_for_memory)}; run "
                     "fewer at once (--memory-per-trial reserves memory for each) or free the node's memory")
    if summary.unfinished or summary.failed:
        lines.append(f"resume:   run the same `pipeline sweep {summary.name} ...` command again "
                     f"(with --results-dir {summary.results_dir}); finished trials are not redone")
    return lines
