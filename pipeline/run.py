"""One trial end to end: pretrain -> masks -> evaluate -> Parquet + MLflow. CLI and Ray call this."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline import records
from pipeline.config import ExperimentConfig, flatten
from pipeline.evaluate import evaluate, summary_metrics
from pipeline.experiments import validate
from pipeline.stages import (
    mask_names,
    pretrain,
    pretrain_dir,
    train_mask,
    trial_dir,
    trial_id,
    write_json_atomic,
    write_trial_config,
)
from pipeline.storage import Storage
from tasks import get_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialResult:
    trial_id: str
    trial_dir: Path
    parquet_dir: Path
    tracking_uri: str
    run_id: str
    metrics: dict


def check_results_dir(results_dir: Path) -> None:
    """Fail before any work when the output folder cannot be written."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", str(results_dir)):
        raise ValueError(f"results directory {str(results_dir)!r} looks like a URI; it must be a local or shared "
                         "(NFS) path — pass the URI as --storage to keep results there as well")
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=".write-check-"):
            pass
    except OSError as error:
        raise PermissionError(f"cannot write to the results directory {str(results_dir)!r}: {error.strerror}; "
                              "choose another with --results-dir") from None


def run_trial(config: ExperimentConfig, results_dir: Path, parent_run_id: str | None = None,
              tags: dict | None = None, mlflow_experiment: str | None = None,
              tracking_uri: str | None = None, on_stage: Callable[[str], None] = lambda stage: None,
              storage_uri: str | None = None) -> TrialResult:
    """Run (or resume) every stage of one trial; finished stages are not redone.

    on_stage(name) is called after each finished stage (a sweep reports it to Tune).
    storage_uri: where finished stages are also kept and looked for (see pipeline.storage), so
    that nodes without a shared filesystem share pretrained networks and finished trials.
    """
    validate(config)
    results_dir = Path(results_dir)
    check_results_dir(results_dir)
    storage = Storage(results_dir, storage_uri)
    uri = tracking_uri or records.tracking_uri(results_dir)
    records.check_tracking(uri)
    trial = trial_id(config)
    write_trial_config(config, results_dir)
    done_marker = trial_dir(config, results_dir) / "recorded.json"
    if storage.pull(_relative(done_marker, results_dir)):
        log.info("trial %s already finished; nothing to do", trial)
        recorded = json.loads(done_marker.read_text())
        return TrialResult(trial, trial_dir(config, results_dir), results_dir / "parquet", uri, recorded["run_id"],
                           recorded["metrics"])

    network = [_relative(pretrain_dir(config, results_dir) / f, results_dir) for f in ("config.json", "model.pt")]
    storage.pull(network[-1])
    pretrained = pretrain(config, results_dir)
    storage.push(*network)
    on_stage("pretrain")
    for name in mask_names(config):
        mask_files = [_relative(trial_dir(config, results_dir) / "masks" / f"{name}.{kind}.pt", results_dir)
                      for kind in ("masks", "logits")]
        storage.pull_all(*mask_files)
        train_mask(config, name, pretrained, results_dir)
        storage.push(*mask_files)
        on_stage(f"mask {name}")
    tables = evaluate(config, pretrained, results_dir)

    task = get_task(config.task)
    context = {"trial_id": trial, "task_version": task.version, **flatten(config)}
    written = records.write_tables(tables, context, results_dir, trial)
    metrics = summary_metrics(tables, task.subtasks)
    run_id = records.log_trial(
        uri, mlflow_experiment or f"modular/{config.experiment}", trial, flatten(config) | {"task_version": task.version}, metrics,
        {"experiment": config.experiment, "seed": config.seed, "size": config.model.size, "beta": config.mask.beta,
         **(tags or {})},
        [("masks", trial_dir(config, results_dir) / "masks"), ("", trial_dir(config, results_dir) / "config.json"),
         *[(f"tables/{path.parent.parent.name}", path) for path in written]],
        parent_run_id, artifact_root=results_dir / "mlartifacts",
    )
    write_json_atomic({"run_id": run_id, "metrics": metrics}, done_marker)
    storage.push(*[_relative(p, results_dir) for p in written], _relative(trial_dir(config, results_dir) / "config.json",
                 results_dir), _relative(done_marker, results_dir))
    return TrialResult(trial, trial_dir(config, results_dir), results_dir / "parquet", uri, run_id, metrics)


def _relative(path: Path, results_dir: Path) -> str:
    return path.relative_to(results_dir).as_posix()

