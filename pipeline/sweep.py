"""Sweeps over seeds, β and sizes on Ray Tune: local by default, any Ray cluster unchanged.

Every trial calls pipeline.run.run_trial, which resumes from its own stage files and records
itself once (Parquet path and MLflow tag keyed by trial id), so Tune's retries and a resumed sweep
never duplicate a trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import tempfile
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline import records
from pipeline.config import override
from pipeline.experiments import SweepSpec, get_experiment, get_sweep, task_of, validate
from pipeline.run import check_results_dir, run_trial
from pipeline.stages import trial_id, write_json_atomic
from pipeline.storage import Storage

log = logging.getLogger(__name__)


SMOKE_SEEDS = 2  # --smoke runs 2 seeds unless --seeds says otherwise


def param_space(spec: SweepSpec, seeds: int, smoke: bool, overrides: dict) -> dict:
    """Tune's grid: seeds are a grid axis (num_samples would repeat the whole grid)."""
    from ray import tune

    grid = spec.smoke_grid if smoke and spec.smoke_grid is not None else spec.grid
    fixed = {k: v for k, v in overrides.items() if k not in grid}
    for experiment in spec.experiments:  # fail on a bad key or value before starting Ray
        for values in [dict(zip(grid, combo)) for combo in _product(grid)] or [{}]:
            validate(override(get_experiment(experiment, smoke), {k: str(v) for k, v in (values | fixed).items()}))
    space = {"experiment": tune.grid_search(list(spec.experiments)), "seed": tune.grid_search(list(range(seeds)))}
    space |= {key: tune.grid_search(list(values)) for key, values in grid.items()}
    return space | {"fixed_overrides": fixed, "smoke": smoke}


def _product(grid: dict) -> list[tuple]:
    import itertools

    return list(itertools.product(*grid.values())) if grid else []


# -- the trial ----------------------------------------------------------------------------------------
def sweep_trial(trial_config: dict) -> None:
    """Tune function trainable: build the ExperimentConfig and run it; report after each stage."""
    import ray
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(trial_config["cpus_per_trial"])))
    context = trial_config["context"]
    config = get_experiment(trial_config["experiment"], trial_config["smoke"])
    keys = {k: v for k, v in trial_config.items() if "." in k}
    config = override(config, {k: str(v) for k, v in (keys | trial_config["fixed_overrides"]).items()})
    config = dataclasses.replace(config, seed=int(trial_config["seed"]), sweep=context["sweep"])
    results_dir = Path(context["results_dir"])
    version = task_of(config).version
    attempt, first_ever = _count_attempt(results_dir, config, context["driver"])
    node = ray.get_runtime_context().get_node_id()  # in Tune's results: which node ran each stage
    stages = []

    previous = tune.get_checkpoint()
    if previous is not None:
        with previous.as_directory() as folder:
            log.info("trial restored by Tune after stage %s", json.loads((Path(folder) / "stage.json").read_text()))

    def report_stage(stage: str) -> None:
        # The stage's files (network, masks, optimizer state) live in the shared results directory,
        # keyed by trial id; the Tune checkpoint records which stage finished and where they are.
        if context.get("fail_first_attempt") and first_ever:  # inside the trial: its MLflow run records it
            raise RuntimeError(f"injected failure after stage {stage} of the first attempt (fault-injection test)")
        stages.append(stage)
        with tempfile.TemporaryDirectory() as folder:
            marker = {"stage": stage, "trial_dir": str(results_dir / "trials" / trial_id(config, version))}
            (Path(folder) / "stage.json").write_text(json.dumps(marker))
            tune.report({"done": 0, "stage": stage, "stages_done": len(stages), "attempts": attempt,
                         "trial_dir": marker["trial_dir"], "node_id": node},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    result = run_trial(config, results_dir, parent_run_id=context["parent_run_id"], tags={"sweep": context["sweep"]},
                       mlflow_experiment=records.sweep_experiment(context["sweep"]),
                       tracking_uri=context["tracking_uri"], on_stage=report_stage,
                       storage_uri=context["storage_uri"])
    tune.report({"done": 1, "stage": "evaluate", "stages_done": len(stages) + 1, "attempts": attempt,
                 "trial_dir": str(result.trial_dir), "node_id": node,
                 **{k.replace("/", "_"): v for k, v in result.metrics.items()}})


def _count_attempt(results_dir: Path, config, driver: str) -> tuple[int, bool]:
    """Attempts of this trial under this driver run (a second one is a retry after a failure; an
    attempt under a later driver is a resume), kept beside its files. -> (attempt, first ever)."""
    folder = results_dir / "trials" / trial_id(config, task_of(config).version)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "attempts.json"
    counts = json.loads(path.read_text()) if path.exists() else {}
    counts[driver] = counts.get(driver, 0) + 1
    write_json_atomic(counts, path)
    return counts[driver], sum(counts.values()) == 1


# -- the driver ---------------------------------------------------------------------------------------
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


def run_sweep(
    name: str,
    results_dir: Path,
    seeds: int | None = None,
    smoke: bool = False,
    overrides: dict | None = None,
    address: str | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    max_failures: int = 2,
    resume: bool | None = None,
    num_cpus: int | None = None,
    fail_first_attempt: bool = False,
    storage_uri: str | None = None,
    verbose: bool = False,
) -> SweepSummary:
    """Run (or resume) sweep `name`. resume=None: resume when the sweep's Tune state exists."""
    if not verbose:  # read when ray is imported: no warning line per retry of a failing connection
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    import ray
    from ray import tune

    spec = get_sweep(name)
    space = param_space(spec, seeds or (SMOKE_SEEDS if smoke else spec.seeds), smoke, overrides or {})
    check_results_dir(Path(results_dir))
    results_dir = Path(results_dir).resolve()  # Ray runs trials in their own working directories
    address = address or os.environ.get("RAY_ADDRESS")
    uri = records.tracking_uri(results_dir)
    if address:
        check_ray_address(address)
        uri = tracking_uri_for_cluster(uri, ray.util.get_node_ip_address())
    records.check_tracking(uri)
    if storage_uri:
        Storage(results_dir, storage_uri)  # fails early on a URI pyarrow cannot open
    storage = storage_uri.rstrip("/") + "/ray" if storage_uri else str(results_dir / "ray")
    sweep_dir = f"{storage}/{name}"
    exists = tune.Tuner.can_restore(sweep_dir)
    if resume and not exists:
        raise FileNotFoundError(f"nothing to resume: no sweep state at {sweep_dir}; run without --resume")
    resumed = exists if resume is None else resume
    with _only_driver(results_dir, name):
        return _run_as_driver(name, spec, space, results_dir, uri, storage, sweep_dir, resumed, address, num_cpus,
                              cpus_per_trial, gpus_per_trial, max_failures, fail_first_attempt, storage_uri, verbose)


def _run_as_driver(name, spec, space, results_dir, uri, storage, sweep_dir, resumed, address, num_cpus,
                   cpus_per_trial, gpus_per_trial, max_failures, fail_first_attempt, storage_uri, verbose):
    parent = records.sweep_parent_run(uri, name, results_dir / "mlartifacts")
    space["context"] = {"results_dir": str(results_dir), "parent_run_id": parent, "sweep": name, "tracking_uri": uri,
                        "storage_uri": storage_uri, "driver": uuid.uuid4().hex,
                        "fail_first_attempt": fail_first_attempt}
    space["cpus_per_trial"] = cpus_per_trial

    start = time.time()
    try:
        grid, interrupted = _fit(name, space, spec, sweep_dir, storage, resumed, address, num_cpus, cpus_per_trial,
                                 gpus_per_trial, max_failures, verbose)
    except BaseException as error:  # no parent run left RUNNING, whatever stopped the sweep
        records.kill_running_children(uri, parent)
        records.end_trial_run(uri, parent, error)
        raise
    records.kill_running_children(uri, parent)
    summary = _summarise(name, grid, results_dir, uri, parent, time.time() - start, resumed, interrupted,
                         space["context"]["driver"])
    records.finish_sweep_parent_run(uri, parent, dataclasses.asdict(summary))
    return summary


@contextlib.contextmanager
def _only_driver(results_dir: Path, name: str):
    """One driver per sweep and results folder: a second one would train every trial again."""
    from filelock import FileLock, Timeout

    folder = results_dir / "ray"
    folder.mkdir(parents=True, exist_ok=True)
    owner = folder / f"{name}.driver.json"
    lock = FileLock(folder / f"{name}.driver.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        running = owner.read_text() if owner.exists() else "{}"
        raise RuntimeError(f"sweep {name!r} is already running on {results_dir} (driver {running}); wait for it to "
                           "end, stop it (Ctrl-C) and run the command again to resume, or use another --results-dir"
                           ) from None
    try:
        write_json_atomic({"host": socket.gethostname(), "pid": os.getpid(), "started": time.ctime()}, owner)
        yield
    finally:
        lock.release()


def _fit(name, space, spec, sweep_dir, storage, resumed, address, num_cpus, cpus_per_trial, gpus_per_trial,
         max_failures, verbose) -> tuple:
    """Tune's fit on a local or remote Ray. -> (ResultGrid, interrupted by the user)."""
    import ray
    from ray import tune

    # Tune's own table reporter (the legacy engine: the default one ignores progress_reporter);
    # --verbose brings Tune's full default output back.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    if address:
        _join_cluster(address, verbose)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=verbose)
    try:
        trainable = tune.with_resources(sweep_trial, {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        if resumed:
            log.info("resuming sweep %s from %s", name, sweep_dir)
            tuner = tune.Tuner.restore(sweep_dir, trainable, resume_errored=True, param_space=space)
        else:
            tuner = tune.Tuner(
                trainable, param_space=space,
                # one worker process serves trial after trial: no torch import or kernel compilation per trial
                tune_config=tune.TuneConfig(reuse_actors=True),
                run_config=tune.RunConfig(
                    name=name, storage_path=storage, failure_config=tune.FailureConfig(max_failures=max_failures),
                    # Every checkpoint is a few bytes (stage.json). Keeping all of them means no forced state
                    # snapshot per checkpoint (the cause of Tune's "snapshotting ... multiple times" warning)
                    # and a driver killed mid-snapshot never points at a checkpoint already deleted.
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                    progress_reporter=None if verbose else progress_reporter(spec),
                    verbose=3 if verbose else 1),
            )
        try:
            return tuner.fit(), False
        except KeyboardInterrupt:
            return tune.Tuner.restore(sweep_dir, trainable).get_results(), True
    finally:
        ray.shutdown()


def _join_cluster(address: str, verbose: bool) -> None:
    """ray.init on an existing cluster, with Ray's token authentication where a token is at hand.

    A head started by `ray start --head` (Ray >= 2.59) requires the token it keeps in
    ~/.ray/auth_token, but ray.init with an explicit address never turns token mode on by itself
    (only a local cluster found automatically does). Where the user chose no mode and a token is
    available (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), turn it on the way Ray does
    for local clusters. A failed connection is one error saying what to check.
    """
    import ray

    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # another Ray version: the environment variable alone (read when ray is imported)
        token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
            os.environ["RAY_AUTH_MODE"] = "token"
    else:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        _ask_cluster_once(address)
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=verbose)
    except (ConnectionError, RuntimeError) as error:
        mode = os.environ.get("RAY_AUTH_MODE", "disabled")
        raise ConnectionError(
            f"cannot join the Ray cluster at {address!r} ({str(error).splitlines()[0][:300]}); authentication mode "
            f"here: {mode}. If the head uses token authentication (the default of `ray start --head` since Ray 2.59), "
            "give this machine the head's token: copy the head's ~/.ray/auth_token here or set RAY_AUTH_TOKEN "
            "(see `ray get-auth-token` on the head). Otherwise check the address, or leave --address unset to "
            "run locally") from None


def _ask_cluster_once(address: str) -> None:
    """One request to the head (its cluster id), as ray.init's first step. ray.init repeats a refused
    request 20 times over 20 s, each time printing a warning line from Ray's C++ core (printed before
    RAY_BACKEND_LOG_LEVEL applies); here Ray's output of the one try is kept back and its reason raised."""
    try:
        from ray._raylet import GcsClient
    except ImportError:  # another Ray version: ray.init alone
        return
    if "://" in address or address == "auto":  # Ray Client or a local cluster: ray.init finds its way
        return
    failed = None
    with tempfile.TemporaryFile(mode="w+") as kept:
        with _stderr_to(kept):
            try:
                GcsClient(address=address)
            except Exception as error:  # Ray raises RpcError, RuntimeError or others by version
                failed = error
        kept.seek(0)
        output = kept.read()
    if failed is None:
        log.debug("Ray's output while reaching %s: %s", address, output)
        return
    reasons = [line.split(": ", 1)[-1] for line in output.splitlines() if "gcs_client" in line]
    raise ConnectionError((reasons or [f"{type(failed).__name__}: {failed}"])[0])


@contextlib.contextmanager
def _stderr_to(file):
    """File descriptor 2 (Python's and C++'s writes to stderr) goes to `file` for the block."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def progress_reporter(spec: SweepSpec):
    """One compact table: trial, status, its grid values, last finished stage; elapsed and ETA above."""
    from ray.tune import CLIReporter

    class SweepReporter(CLIReporter):
        def report(self, trials, done, *sys_info):
            finished = [t for t in trials if t.status == "TERMINATED"]
            elapsed = time.time() - self.started
            line = f"{len(finished)}/{len(trials)} trials finished, {elapsed / 60:.1f} min elapsed"
            if finished and len(finished) < len(trials):
                line += f", about {elapsed / len(finished) * (len(trials) - len(finished)) / 60:.1f} min left"
            super().report(trials, done, line, *sys_info)

    reporter = SweepReporter(
        metric_columns={"stage": "last stage done"}, max_report_frequency=30, print_intermediate_tables=True,
        parameter_columns={"experiment": "experiment", "seed": "seed", **{k: k for k in spec.grid}},
        max_column_length=24, sort_by_metric=False)
    reporter.started = time.time()
    return reporter


def _summarise(name, grid, results_dir, uri, parent, seconds, resumed, interrupted, driver) -> SweepSummary:
    failed = sum(1 for r in grid if r.error is not None)
    done = sum(1 for r in grid if r.error is None and (r.metrics or {}).get("done") == 1)
    retried = resumed_trials = 0
    for result in grid:
        counts = _attempts(result, results_dir)
        retried += counts.get(driver, 0) > 1
        resumed_trials += bool(set(counts) - {driver})
    return SweepSummary(name, done, failed, len(grid) - done - failed, retried, resumed_trials, seconds, results_dir,
                        uri, parent, resumed, interrupted)


def _attempts(result, results_dir: Path) -> dict:
    """The trial's attempts per driver run (see _count_attempt), or {} if it never started."""
    marker = (result.metrics or {}).get("trial_dir")
    path = Path(marker) / "attempts.json" if marker else None
    return json.loads(path.read_text()) if path and path.exists() else {}


def tracking_uri_for_cluster(uri: str, driver_ip: str) -> str:
    """The tracking URI as trials on other nodes must see it: a server the driver names localhost
    (ray_cluster.yaml's head exports http://localhost:5000) is, on a worker node, that worker itself;
    name it by the driver's IP instead, which the driver reaches as well (the server listens on all
    interfaces). Any other URI is returned as it is."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or parts.hostname not in ("localhost", "127.0.0.1", "0.0.0.0", "::1"):
        return uri
    credentials = parts.netloc.rpartition("@")[0]
    host = f"[{driver_ip}]" if ":" in driver_ip else driver_ip  # an IPv6 address in a URL
    netloc = (credentials + "@" if credentials else "") + host + (f":{parts.port}" if parts.port else "")
    log.info("MLflow tracking server %s: trials on every node use %s", uri, netloc)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_ray_address(address: str) -> None:
    """Fail in seconds, not minutes, when a cluster address does not answer."""
    if address == "auto" or address.startswith(("ray://", "anyscale://")) and ":" not in address[6:]:
        return
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=5):
            pass
    except (OSError, ValueError) as error:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address!r} ({error}); start it with `ray up ray_cluster.yaml`, "
            "check the address (head node IP and port 6379), or leave --address unset to run locally"
        ) from None


def summary_lines(summary: SweepSummary) -> list[str]:
    lines = [
        f"sweep {summary.name}{' (resumed)' if summary.resumed else ''}"
        f"{' INTERRUPTED' if summary.interrupted or summary.unfinished else ''}: {summary.done} trials done, "
        f"{summary.failed} failed, {summary.unfinished} unfinished, {summary.retried} retried after a failure, "
        f"{summary.resumed_trials} resumed from an earlier run, {summary.wall_seconds:.0f} s",
        f"Parquet:  {summary.results_dir / 'parquet'}",
        f"MLflow:   mlflow ui --backend-store-uri {summary.tracking_uri}  (parent run {summary.parent_run_id})",
    ]
    if summary.unfinished or summary.failed:
        lines.append(f"resume:   run the same `pipeline sweep {summary.name} ...` command again "
                     f"(with --results-dir {summary.results_dir}); finished trials are not redone")
    return lines


__all__ = ["get_sweep", "run_sweep", "summary_lines"]
