"""Where a trial's results go: Parquet tables (one file per trial and table) and one MLflow run."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from models.common import atomic_path

log = logging.getLogger(__name__)

EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}

# -- Parquet ---------------------------------------------------------------------------------------
def parquet_path(results_dir: Path, table: str, trial: str) -> Path:
    """<results>/parquet/<table>/trial_id=<id>/part-0.parquet: hive-partitioned by trial."""
    return results_dir / "parquet" / table / f"trial_id={trial}" / "part-0.parquet"


def write_tables(tables: dict[str, list[dict]], context: dict, results_dir: Path, trial: str) -> list[Path]:
    """Each row gets the context columns (trial_id, experiment, seed, task_version, config keys)."""
    written = []
    for table, rows in tables.items():
        if not rows:
            continue
        path = parquet_path(results_dir, table, trial)
        columns = {key: [row[key] for row in rows] for key in rows[0]}
        columns |= {key: [value] * len(rows) for key, value in context.items() if key != "trial_id"}
        write_parquet_atomic(pa.table(columns), path)
        written.append(path)
    return written


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write to a hidden temp file, then rename: readers never see a half-written file."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


# -- MLflow ----------------------------------------------------------------------------------------
def tracking_uri(results_dir: Path) -> str:
    """MLFLOW_TRACKING_URI if set, else a sqlite store beside the results (no server needed)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(results_dir / 'mlflow.db').resolve()}"


def check_tracking(uri: str) -> None:
    """Fail fast, before any training, when the tracking store cannot be reached."""
    import mlflow

    # The first client of a fresh sqlite file creates its schema: one process at a time (concurrent
    # migrations of one file break it for good).
    with _quick_http(), _store_lock(uri):
        try:
            mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as error:  # MLflow raises many types for an unreachable store
            raise ConnectionError(
                f"cannot reach the MLflow tracking store {uri!r} ({type(error).__name__}: {str(error)[:200]}); "
                "start the server, fix MLFLOW_TRACKING_URI, or unset it to use a local sqlite store"
            ) from None


@contextlib.contextmanager
def _quick_http():
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"})
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def start_trial_run(uri: str, experiment: str, trial: str, params: dict, tags: dict,
                    parent_run_id: str | None = None, artifact_root: Path | None = None) -> tuple[str, bool]:
    """The trial's MLflow run, RUNNING from its first step: found again by its trial_id tag (a resumed
    or retried trial continues its run), created with the resolved config as params otherwise.
    -> (run_id, whether it existed before)."""
    import mlflow

    with _store_lock(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, experiment, artifact_root)
        existing = client.search_runs([experiment_id], filter_string=f"tags.trial_id = '{trial}'", max_results=1)
        if existing:
            run_id = existing[0].info.run_id
            if existing[0].info.status != "FINISHED":
                client.update_run(run_id, status="RUNNING")
            return run_id, True
        all_tags = {"trial_id": trial, **{k: str(v) for k, v in tags.items()}}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run_id = client.create_run(experiment_id, run_name=trial, tags=all_tags).info.run_id
        params = [mlflow.entities.Param(k, str(v)) for k, v in params.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=params[start:start + 100])
        return run_id, False


def finish_trial_run(uri: str, run_id: str, metrics: dict, artifacts: list[tuple[str, Path]]) -> None:
    """Final metrics (step 0), artifacts ((run folder, local file or folder) pairs), FINISHED."""
    import mlflow

    now = int(time.time() * 1000)
    with _store_lock(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), now, 0) for k, v in metrics.items()])
        for folder, path in artifacts:
            if path.is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=folder or None)
            else:
                client.log_artifact(run_id, str(path), artifact_path=folder or None)
        error = client.get_run(run_id).data.tags.get("error")
        if error is not None:  # an earlier attempt's error: kept as history, no longer the run's state
            client.set_tag(run_id, "earlier_error", error)
            client.delete_tag(run_id, "error")
        client.set_terminated(run_id, "FINISHED")


def end_trial_run(uri: str, run_id: str, error: BaseException) -> None:
    """A trial that raised: FAILED with the error as a tag (KILLED when interrupted)."""
    import mlflow

    killed = isinstance(error, (KeyboardInterrupt, SystemExit))
    with _store_lock(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:5000])
        client.set_terminated(run_id, "KILLED" if killed else "FAILED")


class MetricLogger:
    """Training curves of one run, batched: metrics are kept in memory and sent with one log_batch
    call every `interval` seconds (and on flush), so logging costs little of a step's time.

    resumed=True: steps at or before the last one MLflow already has for a key (a trial resumed
    from a checkpoint repeats steps) are dropped, so curves have no duplicate steps. Safe to call
    from several threads (the masks of a trial training together in a pack).
    """

    def __init__(self, uri: str, run_id: str, resumed: bool = False, interval: float = 5.0):
        self.uri, self.run_id, self.resumed, self.interval = uri, run_id, resumed, interval
        self.lock = threading.RLock()
        self.pending: list = []
        self.last_step: dict[str, int] = {}
        self.last_flush = time.monotonic()

    def log(self, stage: str, step: int, metrics: dict) -> None:
        """metrics {name: number} at `step` of `stage` -> keys "<stage>/<name>" ("mask add" -> "mask/add")."""
        import mlflow

        now = int(time.time() * 1000)
        prefix = stage.replace(" ", "/")
        with self.lock:
            for name, value in metrics.items():
                key = f"{prefix}/{name}"
                if step <= self._last_step(key):
                    continue
                self.last_step[key] = step
                self.pending.append(mlflow.entities.Metric(key, float(value), now, step))
            if time.monotonic() - self.last_flush >= self.interval:
                self.flush()

    def _last_step(self, key: str) -> int:
        if key not in self.last_step:
            self.last_step[key] = -1
            if self.resumed:
                import mlflow

                history = mlflow.MlflowClient(tracking_uri=self.uri).get_metric_history(self.run_id, key)
                self.last_step[key] = max((m.step for m in history), default=-1)
        return self.last_step[key]

    def flush(self) -> None:
        import mlflow

        with self.lock:
            self.last_flush = time.monotonic()
            batch, self.pending = self.pending, []
        if not batch:
            return
        with _store_lock(self.uri):
            client = mlflow.MlflowClient(tracking_uri=self.uri)
            for start in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
                client.log_batch(self.run_id, metrics=batch[start:start + 1000])


def _experiment_id(client, name: str, artifact_root: Path | None = None) -> str:
    found = client.get_experiment_by_name(name)
    if found:
        return found.experiment_id
    # A local store keeps artifacts beside the results; a tracking server keeps them where it was told
    # to (ray_cluster.yaml: --artifacts-destination on S3) and takes them from trials on any node.
    server = client.tracking_uri.startswith(("http:", "https:", "databricks"))
    location = (artifact_root / name).resolve().as_uri() if artifact_root and not server else None
    try:
        # MLflow 3's UI opens an experiment of this kind on its runs table (not the GenAI overview)
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except Exception:  # created concurrently by another trial
        return client.get_experiment_by_name(name).experiment_id


def _store_lock(uri: str):
    """Concurrent trials writing one sqlite file hit "database is locked": take turns on one host.

    Server-backed stores (a tracking server on the cluster head) handle concurrency themselves.
    """
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(uri.removeprefix("sqlite:///") + ".lock", timeout=600)


def sweep_experiment(sweep: str) -> str:
    """The MLflow experiment of a sweep: its parent run and every trial's nested run."""
    return f"modular/sweep/{sweep}"


def sweep_parent_run(uri: str, sweep: str, artifact_root: Path | None = None) -> str:
    """The sweep's parent run: found by its tag when the sweep resumes, created otherwise."""
    import mlflow

    with _store_lock(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, sweep_experiment(sweep), artifact_root)
        found = client.search_runs([experiment_id], filter_string=f"tags.sweep_parent = '{sweep}'", max_results=1)
        if found:
            if found[0].info.status != "RUNNING":  # the sweep is resumed or run again
                client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        return client.create_run(experiment_id, run_name=sweep, tags={"sweep": sweep, "sweep_parent": sweep}).info.run_id


def finish_sweep_parent_run(uri: str, run_id: str, summary: dict) -> None:
    import mlflow

    with _store_lock(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        for key in ("done", "failed", "unfinished", "retried", "resumed_trials", "wall_seconds"):
            client.log_metric(run_id, f"sweep/{key}", float(summary[key]))
        interrupted = summary["interrupted"] or summary["unfinished"]
        client.set_terminated(run_id, "KILLED" if interrupted else "FAILED" if summary["failed"] else "FINISHED")


def kill_running_children(uri: str, parent_run_id: str) -> int:
    """Trial runs of a sweep still RUNNING when its driver ends (their workers were stopped) -> KILLED."""
    import mlflow

    with _store_lock(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        parent = client.get_run(parent_run_id)
        running = client.search_runs([parent.info.experiment_id], max_results=10_000, filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"))
        for run in running:
            client.set_tag(run.info.run_id, "error", "the sweep stopped before this trial finished")
            client.set_terminated(run.info.run_id, "KILLED")
        return len(running)


def log_analysis(uri: str, sweep: str, folder: Path) -> str | None:
    """Attach figures and report to the sweep's parent run, leaving its status as it is (a finished
    sweep stays FINISHED: the client logs artifacts to a terminated run without reopening it).
    -> the run id, or None when the store has no parent run of that sweep."""
    import mlflow

    with _store_lock(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(sweep_experiment(sweep))
        found = client.search_runs([experiment.experiment_id], filter_string=f"tags.sweep_parent = '{sweep}'",
                                   max_results=1) if experiment else []
        if not found:
            return None
        client.log_artifacts(found[0].info.run_id, str(folder), artifact_path="analysis")
        return found[0].info.run_id
