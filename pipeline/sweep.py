"""Sweeps over seeds, β and sizes on Ray Tune: local by default, any Ray cluster unchanged.

The driver: `run_sweep(SweepOptions)` plans the sweep (pipeline.plan: every trial resolved once),
joins or starts Ray (pipeline.cluster), runs Tune with the trainable (pipeline.trainable), stops
cleanly on Ctrl-C or SIGTERM and says what happened (pipeline.summary).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from models.common import write_json_atomic
from pipeline import records
from pipeline.cluster import check_ray_address, join_cluster, tracking_uri_for_cluster
from pipeline.plan import SweepPlan, plan_sweep
from pipeline.run import check_results_dir
from pipeline.storage import Storage
from pipeline.summary import SweepSummary, attempts, summarise, summary_lines
from pipeline.trainable import sweep_trial, trial_dirname

log = logging.getLogger(__name__)

GPUS_PER_TRIAL_ON_CUDA = 0.25  # GPU share of a trial (or pack) with device=cuda and no --gpus-per-trial


@dataclass(frozen=True)
class SweepOptions:
    """What `pipeline sweep` asks for (its options, one field each); run_sweep takes it whole."""

    name: str
    results_dir: Path = Path("results")
    scale: str = "paper"
    seeds: int | None = None  # None: the sweep's at its scale
    overrides: dict = field(default_factory=dict)  # config key -> value, as --set gives them
    address: str | None = None  # a Ray cluster (None: RAY_ADDRESS, else a local Ray)
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_failures: int = 2
    resume: bool | None = None  # None: resume when the sweep's Tune state exists
    num_cpus: int | None = None  # CPUs of a local Ray (None: the machine's)
    storage_uri: str | None = None
    verbose: bool = False
    pack_size: int | None = None  # None: by device (pipeline.plan.default_pack_size)
    memory_per_trial: float | None = None  # GB Ray reserves per Tune trial (a pack), so a node runs only what fits


@dataclass(frozen=True)
class _Driver:
    """The sweep as the driver runs it: its options, plan and where everything goes."""

    options: SweepOptions
    plan: SweepPlan
    results_dir: Path
    tracking_uri: str
    storage: str  # Tune's storage path
    address: str | None
    gpus_per_trial: float
    resumed: bool

    @property
    def sweep_dir(self) -> str:
        return f"{self.storage}/{self.options.name}"


def run_sweep(options: SweepOptions) -> SweepSummary:
    """Run (or resume) the sweep `options` describe. A resumed sweep keeps the packs it started with."""
    if not options.verbose:  # read when ray is imported: no warning line per retry of a failing connection
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    import ray

    plan = plan_sweep(options.name, options.scale, options.seeds, options.overrides, options.pack_size)
    for line in plan.workload().lines(sorted(plan.devices)[0]):
        print(f"sweep {options.name} ({options.scale} scale): {line}", flush=True)
    gpus_per_trial = _gpu_share(plan.devices, options.gpus_per_trial)
    address = options.address or os.environ.get("RAY_ADDRESS")
    if address:  # before anything is written: a wrong address leaves the results folder as it was
        check_ray_address(address)
    check_results_dir(Path(options.results_dir))
    results_dir = Path(options.results_dir).resolve()  # Ray runs trials in their own working directories
    uri = records.tracking_uri(results_dir)
    if address:
        uri = tracking_uri_for_cluster(uri, ray.util.get_node_ip_address())
    records.check_tracking(uri)
    if options.storage_uri:
        Storage(results_dir, options.storage_uri)  # fails early on a URI pyarrow cannot open
    storage = options.storage_uri.rstrip("/") + "/ray" if options.storage_uri else str(results_dir / "ray")
    with _only_driver(results_dir, options.name):
        resumed = _resumes(options, f"{storage}/{options.name}", results_dir, plan)
        driver = _Driver(options, plan, results_dir, uri, storage, address, gpus_per_trial, resumed)
        return _run_as_driver(driver)


def _resumes(options: SweepOptions, sweep_dir: str, results_dir: Path, plan: SweepPlan) -> bool:
    """Whether Tune resumes the sweep's state. A state of another plan (other seeds or overrides) or
    of another shape of Tune's space (an older version of this tool, whose trials got other context
    keys: Tune refuses to restore it) is not resumed: Tune starts anew, and the trials it finished are
    found by id in their folders and not redone."""
    from ray import tune

    exists = tune.Tuner.can_restore(sweep_dir)
    if options.resume and not exists:
        raise FileNotFoundError(f"nothing to resume: no sweep state at {sweep_dir}; run without --resume")
    marker = results_dir / "ray" / f"{options.name}.plan.json"
    planned = {"plan": plan.fingerprint(), "space": _space_keys(plan, options)}
    if exists and options.resume is not False and _planned_with(marker) != planned:
        log.warning("the sweep state at %s was planned differently (another version of this tool, or other "
                    "seeds or settings): Tune starts anew; finished trials are kept and not redone", sweep_dir)
        exists = False
    write_json_atomic(planned | {"trials": len(plan.trials)}, marker)
    return exists if options.resume is None else options.resume and exists


def _planned_with(marker: Path) -> dict | None:
    if not marker.exists():
        return None
    planned = json.loads(marker.read_text())
    return {"plan": planned.get("plan"), "space": planned.get("space")}


def _context(options: SweepOptions, results_dir: Path, uri: str, parent: str | None) -> dict:
    """What every trial of the sweep is told beside its spec: where results go, its MLflow parent run."""
    return {"results_dir": str(results_dir), "parent_run_id": parent, "sweep": options.name, "tracking_uri": uri,
            "storage_uri": options.storage_uri, "driver": uuid.uuid4().hex,
            "memory_bytes": int((options.memory_per_trial or 0) * 2**30)}


def _space(plan: SweepPlan, options: SweepOptions, context: dict) -> dict:
    """Tune's param_space: the plan's one axis of trials, the context, the CPUs per trial."""
    return plan.space() | {"context": context, "cpus_per_trial": options.cpus_per_trial}


def _space_keys(plan: SweepPlan, options: SweepOptions) -> list[str]:
    """The paths of the space's keys as Tune compares them on restore ("context/sweep", "trial/grid_search")."""
    def paths(value, prefix: str) -> list[str]:
        if not isinstance(value, dict) or not value:
            return [prefix]
        return [path for key, inner in value.items() for path in paths(inner, f"{prefix}/{key}" if prefix else key)]

    return sorted(paths(_space(plan, options, _context(options, Path(), "", None)), ""))


def _run_as_driver(driver: _Driver) -> SweepSummary:
    name, results_dir, uri = driver.options.name, driver.results_dir, driver.tracking_uri
    parent = records.sweep_parent_run(uri, name, results_dir / "mlartifacts")
    space = _space(driver.plan, driver.options, _context(driver.options, results_dir, uri, parent))
    start, before = time.time(), attempts(driver.plan.trials, results_dir)

    def finish(outcomes: list, stopped_by: str) -> SweepSummary:
        records.kill_running_children(uri, parent)
        summary = summarise(name, outcomes, results_dir, uri, parent, time.time() - start, driver.resumed,
                            stopped_by, before)
        records.finish_sweep_parent_run(uri, parent, dataclasses.asdict(summary))
        return summary

    def stop_without_ray() -> None:
        """SIGTERM to the whole process group also stops Ray's own processes, and then Tune cannot end
        the sweep: record and say what the trial folders show, and exit as a stopped sweep does."""
        summary = finish([(trial, None) for trial in driver.plan.trials], "SIGTERM")
        print("\n".join(summary_lines(summary)), flush=True)
        os._exit(143)

    try:
        grid, stopped_by = _fit(driver, space, stop_without_ray)
    except BaseException as error:  # no parent run left RUNNING, whatever stopped the sweep
        records.kill_running_children(uri, parent)
        records.end_trial_run(uri, parent, error)
        raise
    return finish([(trial, result.error) for result in grid for trial in _run_of(result, driver.plan).trials],
                  stopped_by)


def _run_of(result, plan: SweepPlan):
    """The planned Tune trial a Tune result belongs to, by its number in the grid (its folder is
    trial_dirname's "<experiment tag>_<number>_<first id>"): a trial that failed before it reported
    anything has no config in its result."""
    return plan.runs[int(Path(result.path).name.split("_")[1])]


def _fit(driver: _Driver, space: dict, stop_without_ray=None) -> tuple:
    """Tune's fit on a local or remote Ray. -> (ResultGrid, the signal that stopped it or "")."""
    import ray
    from ray import tune

    options = driver.options
    # Tune's own table reporter (the legacy engine: the default one ignores progress_reporter);
    # --verbose brings Tune's full default output back.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if options.verbose else "0"
    if driver.address:
        join_cluster(driver.address, options.verbose)
    else:
        ray.init(num_cpus=options.num_cpus, include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=options.verbose)
    try:
        trainable = tune.with_resources(sweep_trial, _resources(driver))
        tuner = _tuner(driver, trainable, space)
        stopped = {"by": ""}  # Tune's own SIGINT handler ends fit() normally, its trials unfinished
        try:
            with _sigterm_as_interrupt(stopped, stop_without_ray), _without_tune_noise():
                return tuner.fit(), stopped["by"]
        except KeyboardInterrupt:
            return tune.Tuner.restore(driver.sweep_dir, trainable).get_results(), stopped["by"] or "SIGINT"
    finally:
        ray.shutdown()


def _resources(driver: _Driver) -> dict:
    """What Ray reserves per Tune trial: CPUs, GPU share and, where asked, memory (Ray's `memory`
    resource: a node starts only as many trials as their reservations fit in its memory)."""
    import ray

    options = driver.options
    resources = {"cpu": options.cpus_per_trial, "gpu": driver.gpus_per_trial}
    if options.memory_per_trial:
        wanted = options.memory_per_trial * 2**30
        largest = max((node["Resources"].get("memory", 0) for node in ray.nodes() if node["Alive"]), default=0)
        if wanted > largest:
            raise ValueError(f"--memory-per-trial {options.memory_per_trial:g} GB is more than any node offers "
                             f"({largest / 2**30:.1f} GB of Ray memory on the largest): no trial could start; "
                             "ask for less")
        resources["memory"] = wanted
    return resources


def _tuner(driver: _Driver, trainable, space: dict):
    from ray import tune

    options = driver.options
    if driver.resumed:
        log.info("resuming sweep %s from %s", options.name, driver.sweep_dir)
        return tune.Tuner.restore(driver.sweep_dir, trainable, resume_errored=True, param_space=space)
    return tune.Tuner(
        trainable, param_space=space,
        # one worker process serves trial after trial: no torch import or kernel compilation per trial
        tune_config=tune.TuneConfig(reuse_actors=True, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(
            name=options.name, storage_path=driver.storage,
            failure_config=tune.FailureConfig(max_failures=options.max_failures),
            # Every checkpoint is a few bytes (stage.json). Keeping all of them means no forced state
            # snapshot per checkpoint (the cause of Tune's "snapshotting ... multiple times" warning)
            # and a driver killed mid-snapshot never points at a checkpoint already deleted.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            progress_reporter=None if options.verbose else progress_reporter(driver.plan),
            verbose=3 if options.verbose else 1),
    )


def _gpu_share(devices: set[str], gpus_per_trial: float) -> float:
    """The GPU share Ray reserves per trial: as asked, or GPUS_PER_TRIAL_ON_CUDA where trials run on
    CUDA and none was asked for (a trial without a GPU reservation sees no GPU in its worker)."""
    if gpus_per_trial == 0 and any(d.startswith("cuda") for d in devices):
        log.warning("trials run on %s: reserving %.2f GPU per trial (set --gpus-per-trial to change it)",
                    ", ".join(sorted(devices)), GPUS_PER_TRIAL_ON_CUDA)
        return GPUS_PER_TRIAL_ON_CUDA
    return gpus_per_trial


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


class _WithoutTuneNoise(logging.Filter):
    """Drops two lines Tune prints that do not help a user of the CLI: "Resume experiment with:
    Tuner.restore(...)" (the sweep's summary says how to resume: the same `pipeline sweep` command)
    and, per trial, that TensorBoard did not log the trial specs (Tune holds them in its object store)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "Tuner.restore(" not in message and "when logging to tensorboard" not in message


@contextlib.contextmanager
def _without_tune_noise():
    loggers = [logging.getLogger(name) for name in ("ray.tune.tune", "ray.tune.logger.tensorboardx")]
    noise = _WithoutTuneNoise()
    for logger in loggers:
        logger.addFilter(noise)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


SIGTERM_GRACE_SECONDS = 20  # Tune ends a stopped sweep in about a second while Ray's processes live


@contextlib.contextmanager
def _sigterm_as_interrupt(stopped: dict, stop_without_ray=None):
    """SIGTERM (what Slurm, Kubernetes, systemd and `docker stop` send) stops the sweep the way Ctrl-C
    does: whatever handles SIGINT now (Tune's, which saves the sweep's state) handles it, and a second
    SIGTERM or SIGINT stops at once as a second Ctrl-C does. Installed after Ray started, so it also
    replaces the handler of Ray's core that printed a C++ stack dump. Main thread only (signals).
    If Tune has not ended the sweep SIGTERM_GRACE_SECONDS later (the signal went to the whole process
    group and stopped Ray's processes too), stop_without_ray() ends it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    timers: list[threading.Timer] = []

    def handler(signum, frame):
        stopped["by"] = "SIGTERM"
        if stop_without_ray is not None and not timers:
            timers.append(threading.Timer(SIGTERM_GRACE_SECONDS, stop_without_ray))
            timers[0].daemon = True
            timers[0].start()
        on_interrupt = signal.getsignal(signal.SIGINT)
        if callable(on_interrupt) and on_interrupt is not signal.default_int_handler:
            on_interrupt(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        for timer in timers:
            timer.cancel()


def progress_reporter(plan: SweepPlan):
    """One compact table: trial (or pack), status, its grid values, last finished stage; elapsed and
    ETA above."""
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
        parameter_columns={f"trial/{column}": column for column in plan.columns()},
        max_column_length=24, sort_by_metric=False)
    reporter.started = time.time()
    return reporter


__all__ = ["SweepOptions", "run_sweep", "summary_lines"]
