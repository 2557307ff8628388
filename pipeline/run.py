"""One trial end to end: the study's stages -> Parquet + MLflow. The CLI and Ray both call this."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipeline import records
from models.common import file_hash, write_json_atomic
from pipeline.config import ExperimentConfig
from pipeline.evaluate import summary_metrics
from pipeline.experiments import get_study, validate
from pipeline.stages import LAYOUT_VERSION, TrialContext, damaged_files
from pipeline.storage import Storage
from pipeline.trial import TrialSpec, resolve

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
    """Fail before any work when the output folder cannot be written or was written by an older
    version whose trial ids differ (its results would silently sit beside, not match, new ones)."""
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
    _check_layout(results_dir)


def _check_layout(results_dir: Path) -> None:
    marker = results_dir / "LAYOUT"
    found = int(marker.read_text().strip() or 0) if marker.exists() else None
    if found is None and any((results_dir / d).exists() for d in ("pretrained", "trials", "parquet")):
        found = 1
    if found is not None and found != LAYOUT_VERSION:
        raise ValueError(
            f"the results directory {str(results_dir)!r} was written by an older version of this tool (layout "
            f"{found}, now {LAYOUT_VERSION}: trial ids and pretrained-network keys changed), so its trials would not be "
            "found again; use a new --results-dir (the old one stays readable by `pipeline analyze`)")
    if found is None:
        marker.write_text(f"{LAYOUT_VERSION}\n")


def trial_is_intact(done_marker: Path, results_dir: Path, storage: Storage) -> bool:
    """A finished trial's files (networks, masks, logits, curves, Parquet parts) still match the
    checksums recorded when it finished. A damaged one is reported by name and the trial is redone:
    the stages whose files no longer match their own manifests run again, its Parquet rows are
    rewritten and its MLflow run is finished again (the same run). With a storage URI, a file this
    node never pulled (the trial finished on another node) is not damage; a local copy must match."""
    recorded = json.loads(done_marker.read_text())
    checksums = recorded.get("files", {})
    if storage.uri:
        checksums = {name: digest for name, digest in checksums.items() if (results_dir / name).exists()}
    damaged = damaged_files(checksums, results_dir)
    if not damaged:
        return True
    log.warning("finished trial %s: %s damaged (missing or not matching its checksum); redoing what made it",
                done_marker.parent.name, ", ".join(str(p) for p in damaged))
    done_marker.unlink()
    return False


def run_trial(trial: TrialSpec | ExperimentConfig, results_dir: Path, parent_run_id: str | None = None,
              tags: dict | None = None, mlflow_experiment: str | None = None,
              tracking_uri: str | None = None, on_stage: Callable[[str], None] = lambda stage: None,
              storage_uri: str | None = None, pack=None) -> TrialResult:
    """Run (or resume) every stage of one trial; finished stages are not redone.

    trial: resolved (pipeline.trial.resolve); a config is resolved here, as it is.

    on_stage(name) is called after each finished stage (a sweep reports it to Tune).
    storage_uri: where finished stages are also kept and looked for (see pipeline.storage), so
    that nodes without a shared filesystem share pretrained networks and finished trials.
    pack: a models.masking.packing.MaskPack shared by trials running at once in threads of this
    process, whose masks then train in one pass (see pipeline.sweep).
    """
    trial = trial if isinstance(trial, TrialSpec) else resolve(trial)
    config = trial.config
    task = validate(config)
    results_dir = Path(results_dir)
    check_results_dir(results_dir)
    uri = tracking_uri or records.tracking_uri(results_dir)
    records.check_tracking(uri)
    ctx = TrialContext(trial, task, results_dir, Storage(results_dir, storage_uri), on_stage, pack=pack)
    config_file = ctx.trial_dir / "config.json"
    write_json_atomic(trial.params | {"trial_id": trial.id}, config_file)
    done_marker = ctx.trial_dir / "recorded.json"
    if ctx.storage.pull(ctx.relative(done_marker)) and trial_is_intact(done_marker, results_dir, ctx.storage):
        log.info("trial %s already finished; nothing to do", trial.id)
        recorded = json.loads(done_marker.read_text())
        return TrialResult(trial.id, ctx.trial_dir, results_dir / "parquet", uri, recorded["run_id"], recorded["metrics"])

    params = trial.params
    model_tags = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("model.")}  # builder, size...
    run_tags = {"experiment": config.experiment, "study": config.study, "task": config.task, **model_tags,
                "seed": config.seed, "beta": config.mask.beta, **(tags or {})}
    run_id, resumed = records.start_trial_run(uri, mlflow_experiment or f"modular/{config.experiment}", trial.id, params,
                                              run_tags, parent_run_id, artifact_root=results_dir / "mlartifacts")
    curves = records.MetricLogger(uri, run_id, resumed)
    ctx.log_metrics, ctx.flush_metrics = curves.log, curves.flush
    try:
        tables = get_study(config.study)(ctx)
        curves.flush()
        written = records.write_tables(tables, {"trial_id": trial.id, **params}, results_dir, trial.id)
        metrics = summary_metrics(tables)
        artifacts = [("", config_file), *[(f"tables/{path.parent.parent.name}", path) for path in written]]
        if (ctx.trial_dir / "masks").is_dir():
            artifacts.insert(0, ("masks", ctx.trial_dir / "masks"))
        records.finish_trial_run(uri, run_id, metrics, artifacts)
    except BaseException as error:
        curves.flush()
        records.end_trial_run(uri, run_id, error)
        raise
    files = {ctx.relative(path): file_hash(path) for path in [*ctx.produced, *written]}
    write_json_atomic({"run_id": run_id, "metrics": metrics, "files": files}, done_marker)
    ctx.storage.push(*[ctx.relative(p) for p in written], ctx.relative(config_file), ctx.relative(done_marker))
    return TrialResult(trial.id, ctx.trial_dir, results_dir / "parquet", uri, run_id, metrics)
