"""Sweeps over seeds, β and sizes on Ray Tune: local by default, any Ray cluster unchanged.

Every trial calls pipeline.run.run_trial, which resumes from its own stage files and records
itself once (Parquet path and MLflow tag keyed by trial id), so Tune's retries and a resumed sweep
never duplicate a trial.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import queue
import shlex
import signal
import socket
import tempfile
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline import records
from pipeline.config import override
from pipeline.experiments import SweepSpec, get_experiment, get_sweep, validate
from pipeline.run import check_results_dir, run_trial
from models.common import write_json_atomic
from pipeline.stages import trial_id
from pipeline.storage import Storage
from tasks.registry import get_task

log = logging.getLogger(__name__)


PACKABLE_PREFIX = "mask."  # grid axes whose trials share everything before the mask stage
MAX_PACK = 16  # trials per pack by default with device=cuda
MAX_PACK_CPU = 4  # ... and on a CPU (measured: packs of 3 even to 8 % faster, 16 slower; benchmarks/README.md)
GPUS_PER_TRIAL_ON_CUDA = 0.25  # GPU share of a trial (or pack) with device=cuda and no --gpus-per-trial


def param_space(spec: SweepSpec, seeds: int, scale: str, overrides: dict, pack_size: int = MAX_PACK_CPU) -> dict:
    """Tune's grid of `spec` (already at `scale`, SweepSpec.at): seeds are a grid axis (num_samples
    would repeat the whole grid).

    Grid axes of the mask stage (`mask.*`: β...) change nothing before the masks, so their grid
    points share one pretrained network and can train their masks in one pass: they are grouped
    into packs of at most `pack_size` trials (1: no packs), a "pack" axis of
    {"label": ..., "members": [{key: value}, ...]}. Tune schedules packs; each member stays its own trial.
    """
    from ray import tune

    grid = spec.grid
    fixed = {k: v for k, v in overrides.items() if k not in grid}
    resolve_grid(spec, scale, overrides)  # fail on a bad key or value before starting Ray
    packed = {k: v for k, v in grid.items() if k.startswith(PACKABLE_PREFIX)} if pack_size != 1 else {}
    space = {"experiment": tune.grid_search(list(spec.experiments)), "seed": tune.grid_search(list(range(seeds)))}
    space |= {key: tune.grid_search(list(values)) for key, values in grid.items() if key not in packed}
    if packed:
        groups = packs([dict(zip(packed, c)) for c in _product(packed)], pack_size)
        space["pack"] = tune.grid_search([{"label": _label(group), "members": group} for group in groups])
    return space | {"fixed_overrides": fixed, "scale": scale}


_RESOLVED: dict[str, list[tuple]] = {}  # resolve_grid's results by sweep, scale and overrides


def resolve_grid(spec: SweepSpec, scale: str, overrides: dict) -> list[tuple]:
    """[(config, task)] of every experiment × grid point (seed 0), each validated: a bad key or value
    fails here, before Ray starts. Resolved once per sweep run (param_space and the estimate share it)."""
    key = repr((spec.experiments, spec.grid, scale, sorted(overrides.items())))
    if key not in _RESOLVED:
        fixed = {k: v for k, v in overrides.items() if k not in spec.grid}
        _RESOLVED[key] = [(config, validate(config)) for experiment in spec.experiments
                          for values in [dict(zip(spec.grid, combo)) for combo in _product(spec.grid)] or [{}]
                          for config in [override(get_experiment(experiment, scale=scale), values | fixed)]]
    return _RESOLVED[key]


def sweep_workload(spec: SweepSpec, seeds: int, scale: str, overrides: dict):
    """The sweep's training steps (pipeline.estimate), every seed of every grid point."""
    from pipeline.estimate import workload

    return workload([(dataclasses.replace(config, seed=seed), task)
                     for config, task in resolve_grid(spec, scale, overrides) for seed in range(seeds)])


def packs(members: list[dict], pack_size: int | None) -> list[list[dict]]:
    """Members split into the fewest packs of at most pack_size (None: MAX_PACK), sizes as equal as can be."""
    size = min(pack_size or MAX_PACK, len(members))
    count = -(-len(members) // size)
    return [members[i::count] for i in range(count)]


def _label(members: list[dict]) -> str:
    """[{"mask.beta": 1e-05}, {"mask.beta": 0.001}] -> "mask.beta=1e-05,0.001" (the progress table's column)."""
    return " ".join(f"{key}={','.join(str(m[key]) for m in members)}" for key in members[0])


def _product(grid: dict) -> list[tuple]:
    import itertools

    return list(itertools.product(*grid.values())) if grid else []


# -- the trial ----------------------------------------------------------------------------------------
def member_configs(trial_config: dict) -> list:
    """The ExperimentConfig of each trial in this Tune trial (one, or the members of a pack)."""
    config = get_experiment(trial_config["experiment"], scale=trial_config["scale"])
    keys = {k: v for k, v in trial_config.items() if "." in k} | trial_config["fixed_overrides"]
    configs = []
    for member in trial_config.get("pack", {}).get("members") or [{}]:
        member_config = override(config, keys | member)
        configs.append(dataclasses.replace(member_config, seed=int(trial_config["seed"]),
                                           sweep=trial_config["context"]["sweep"]))
    return configs


def sweep_trial(trial_config: dict) -> None:
    """Tune function trainable: run the trial, or each trial of a pack in its own thread with their
    masks trained in one pass; report after each stage of each trial."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(trial_config["cpus_per_trial"])))
    context = trial_config["context"]
    configs = member_configs(trial_config)
    previous = tune.get_checkpoint()
    if previous is not None:
        with previous.as_directory() as folder:
            log.info("trial restored by Tune after stage %s", json.loads((Path(folder) / "stage.json").read_text()))
    results = _run_members(configs, context)
    metrics = results[0].metrics if len(results) == 1 else {}
    tune.report({"done": 1, "stage": "evaluate", "trials": len(results), "trial_dir": str(results[0].trial_dir),
                 "node_id": _node_id(), **{k.replace("/", "_"): v for k, v in metrics.items()}})


def _member_run(config, context: dict, on_stage):
    """run_trial for one trial, ready to be called with the pack it trains in (or None)."""
    results_dir = Path(context["results_dir"])
    first_ever = _count_attempt(results_dir, config, context["driver"])[1]

    def report_stage(stage: str) -> None:
        if context.get("fail_first_attempt") and first_ever:  # inside the trial: its MLflow run records it
            raise RuntimeError(f"injected failure after stage {stage} of the first attempt (fault-injection test)")
        on_stage(stage)

    return lambda pack: run_trial(
        config, results_dir, parent_run_id=context["parent_run_id"], tags={"sweep": context["sweep"]},
        mlflow_experiment=records.sweep_experiment(context["sweep"]), tracking_uri=context["tracking_uri"],
        on_stage=report_stage, storage_uri=context["storage_uri"], pack=pack)


def _run_members(configs: list, context: dict) -> list:
    """Each trial in its own thread (several: their masks in one MaskPack); Tune hears of every
    finished stage from this thread only, whichever thread finished it. Raises the first error once
    every member has stopped (finished members keep their results: a retry does not redo them)."""
    from concurrent.futures import ThreadPoolExecutor

    from models.masking.packing import MaskPack

    events: queue.Queue = queue.Queue()
    pack = MaskPack() if len(configs) > 1 else None
    runs = [_member_run(config, context, _stage_reporter(events, i)) for i, config in enumerate(configs)]
    folders = [trial_folder(Path(context["results_dir"]), c) for c in configs]
    with ThreadPoolExecutor(len(runs), thread_name_prefix="pack-member") as pool:
        futures = [pool.submit(run, pack) for run in runs]
        while not all(f.done() for f in futures) or not events.empty():
            with contextlib.suppress(queue.Empty):
                member, stage, reported = events.get(timeout=1.0)
                try:
                    _report_stage(member, stage, folders[member])
                finally:
                    reported.set()
    if pack is not None:
        log.info("pack of %d trials: %d mask forward passes ran packed", len(runs), pack.packed_forwards)
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]


def _stage_reporter(events: queue.Queue, member: int):
    """on_stage for a member's thread: the stage goes to the thread that talks to Tune, and the member
    goes on once Tune has it (a node lost right after a stage must not lose that stage's report)."""

    def report(stage: str) -> None:
        reported = threading.Event()
        events.put((member, stage, reported))
        reported.wait()

    return report


def _report_stage(member: int, stage: str, trial_dir: Path) -> None:
    """Tell Tune a stage finished; the stage's files (network, masks, optimizer state) live in the
    results folder, keyed by trial id, and the Tune checkpoint records which stage it was."""
    from ray import tune

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "stage.json").write_text(json.dumps({"member": member, "stage": stage}))
        tune.report({"done": 0, "stage": f"{member}: {stage}" if member else stage, "trial_dir": str(trial_dir),
                     "node_id": _node_id()}, checkpoint=tune.Checkpoint.from_directory(folder))


def _node_id() -> str:
    """The Ray node running this trial (in Tune's results: which node ran each stage)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def trial_folder(results_dir: Path, config) -> Path:
    """Where a trial keeps its files (pipeline.stages.TrialContext.trial_dir), without a context."""
    return results_dir / "trials" / trial_id(config, _task_version(config.task, config.task_options, config.data_dir))


@functools.lru_cache(maxsize=64)
def _task_version(task: str, options, data_dir: str) -> int:
    """The version of a trial's task, its task built once for all trials that share it (the summary
    asks for every trial of a sweep)."""
    return get_task(task, options, data_dir or None).version


def _count_attempt(results_dir: Path, config, driver: str) -> tuple[int, bool]:
    """Attempts of this trial under this driver run (a second one is a retry after a failure; an
    attempt under a later driver is a resume), kept beside its files. -> (attempt, first ever)."""
    folder = trial_folder(results_dir, config)
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
    stopped_by: str = ""  # the signal that stopped the sweep: "SIGINT" (Ctrl-C) or "SIGTERM" (a scheduler)
    finished_earlier: int = 0  # trials an earlier run finished (not run again)


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
    pack_size: int | None = None,
    scale: str | None = None,
) -> SweepSummary:
    """Run (or resume) sweep `name`. resume=None: resume when the sweep's Tune state exists.

    pack_size: trials whose masks train in one pass (see param_space); resources are per pack.
    A resumed sweep keeps the packs it started with. scale: paper, cpu or smoke (smoke=True is
    scale="smoke")."""
    if not verbose:  # read when ray is imported: no warning line per retry of a failing connection
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    import ray
    from ray import tune

    scale = scale or ("smoke" if smoke else "paper")
    spec = get_sweep(name).at(scale)
    if pack_size is not None and pack_size < 1:
        raise ValueError(f"pack size must be >= 1 (1: no packing), got {pack_size}")
    devices = _trial_devices(spec, scale, overrides or {})
    pack_size = pack_size or default_pack_size(devices)
    seeds = seeds or spec.seeds
    space = param_space(spec, seeds, scale, overrides or {}, pack_size)
    for line in sweep_workload(spec, seeds, scale, overrides or {}).lines(next(iter(sorted(devices)))):
        print(f"sweep {name} ({scale} scale): {line}", flush=True)
    gpus_per_trial = _gpu_share(devices, gpus_per_trial)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:  # before anything is written: a wrong address leaves the results folder as it was
        check_ray_address(address)
    check_results_dir(Path(results_dir))
    results_dir = Path(results_dir).resolve()  # Ray runs trials in their own working directories
    uri = records.tracking_uri(results_dir)
    if address:
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
        return _run_as_driver(name, space, results_dir, uri, storage, sweep_dir, resumed, address, num_cpus,
                              cpus_per_trial, gpus_per_trial, max_failures, fail_first_attempt, storage_uri, verbose)


def _run_as_driver(name, space, results_dir, uri, storage, sweep_dir, resumed, address, num_cpus,
                   cpus_per_trial, gpus_per_trial, max_failures, fail_first_attempt, storage_uri, verbose):
    parent = records.sweep_parent_run(uri, name, results_dir / "mlartifacts")
    space["context"] = {"results_dir": str(results_dir), "parent_run_id": parent, "sweep": name, "tracking_uri": uri,
                        "storage_uri": storage_uri, "driver": uuid.uuid4().hex,
                        "fail_first_attempt": fail_first_attempt}
    space["cpus_per_trial"] = cpus_per_trial

    start, before = time.time(), _attempts(space, results_dir)

    def stop_without_ray() -> None:
        """SIGTERM to the whole process group also stops Ray's own processes, and then Tune cannot end
        the sweep: record and say what the trial folders show, and exit as a stopped sweep does."""
        records.kill_running_children(uri, parent)
        summary = _summarise(name, _planned(space), results_dir, uri, parent, time.time() - start, resumed,
                             "SIGTERM", before)
        records.finish_sweep_parent_run(uri, parent, dataclasses.asdict(summary))
        print("\n".join(summary_lines(summary)), flush=True)
        os._exit(143)

    try:
        grid, stopped_by = _fit(name, space, sweep_dir, storage, resumed, address, num_cpus, cpus_per_trial,
                                gpus_per_trial, max_failures, verbose, stop_without_ray)
    except BaseException as error:  # no parent run left RUNNING, whatever stopped the sweep
        records.kill_running_children(uri, parent)
        records.end_trial_run(uri, parent, error)
        raise
    records.kill_running_children(uri, parent)
    summary = _summarise(name, grid, results_dir, uri, parent, time.time() - start, resumed, stopped_by, before)
    records.finish_sweep_parent_run(uri, parent, dataclasses.asdict(summary))
    return summary


def _trial_devices(spec: SweepSpec, scale: str, overrides: dict) -> set[str]:
    return {str(overrides.get("device", get_experiment(e, scale=scale).device)) for e in spec.experiments}


def default_pack_size(devices: set[str]) -> int:
    """Large packs on a GPU, where M small passes are launch-bound; small ones on a CPU, where a pack
    of 3 made a sweep up to 8 % faster and packs of 16 made mask steps slower (benchmarks/README.md)."""
    return MAX_PACK if any(d.startswith("cuda") for d in devices) else MAX_PACK_CPU


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


def _fit(name, space, sweep_dir, storage, resumed, address, num_cpus, cpus_per_trial, gpus_per_trial,
         max_failures, verbose, stop_without_ray=None) -> tuple:
    """Tune's fit on a local or remote Ray. -> (ResultGrid, the signal that stopped it or "")."""
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
                    progress_reporter=None if verbose else progress_reporter(space),
                    verbose=3 if verbose else 1),
            )
        stopped = {"by": ""}  # Tune's own SIGINT handler ends fit() normally, its trials unfinished
        try:
            with _sigterm_as_interrupt(stopped, stop_without_ray), _without_tunes_resume_hint():
                return tuner.fit(), stopped["by"]
        except KeyboardInterrupt:
            return tune.Tuner.restore(sweep_dir, trainable).get_results(), stopped["by"] or "SIGINT"
    finally:
        ray.shutdown()


class _NoResumeHint(logging.Filter):
    """Drops Tune's "Resume experiment with: Tuner.restore(...)": the sweep's summary says how to resume
    (the same `pipeline sweep` command), and Tune's Python call is not what a user of the CLI runs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


@contextlib.contextmanager
def _without_tunes_resume_hint():
    tune_log = logging.getLogger("ray.tune.tune")
    hint = _NoResumeHint()
    tune_log.addFilter(hint)
    try:
        yield
    finally:
        tune_log.removeFilter(hint)


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


def progress_reporter(space: dict):
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
        parameter_columns={("pack/label" if k == "pack" else k): k for k, v in space.items()
                           if isinstance(v, dict) and "grid_search" in v},
        max_column_length=24, sort_by_metric=False)
    reporter.started = time.time()
    return reporter


@dataclass(frozen=True)
class _Planned:
    """A trial of the sweep's space as _summarise reads a Tune result: its config, no error known."""

    config: dict
    error: None = None


def _planned(space: dict) -> list[_Planned]:
    """Every Tune trial the space describes (its grid_search axes expanded), without Tune."""
    import itertools

    axes = {k: v["grid_search"] for k, v in space.items() if isinstance(v, dict) and "grid_search" in v}
    fixed = {k: v for k, v in space.items() if k not in axes}
    return [_Planned(fixed | dict(zip(axes, combo))) for combo in itertools.product(*axes.values())]


def _attempts(space: dict, results_dir: Path) -> dict[Path, tuple[int, bool]]:
    """(attempts so far, finished) of every trial of the space, by trial folder: a resumed sweep's
    trials keep the driver id they started with, so what ran in this run is told by comparing with
    this snapshot from its start."""
    attempts = {}
    for planned in _planned(space):
        for config in member_configs(planned.config):
            folder = trial_folder(results_dir, config)
            path = folder / "attempts.json"
            attempts[folder] = (sum(json.loads(path.read_text()).values()) if path.exists() else 0,
                                (folder / "recorded.json").exists())
    return attempts


def _summarise(name, grid, results_dir, uri, parent, seconds, resumed, stopped_by, before) -> SweepSummary:
    """Counts per trial (a pack counts each of its members), read from the trials' own folders:
    done = recorded in Parquet and MLflow; failed = not done, in a Tune trial that ended in error;
    before: attempts per trial folder when this run started (_attempts)."""
    done = failed = retried = resumed_trials = finished_earlier = total = 0
    for result in grid:
        for config in member_configs(result.config):
            folder = trial_folder(results_dir, config)
            finished = (folder / "recorded.json").exists()
            total += 1
            done += finished
            failed += not finished and result.error is not None
            counts = json.loads((folder / "attempts.json").read_text()) if (folder / "attempts.json").exists() else {}
            ran_before, finished_before = before.get(folder, (0, False))
            ran_now = sum(counts.values()) - ran_before
            retried += ran_now > 1
            resumed_trials += ran_before > 0 and not finished_before and ran_now > 0  # continued in this run
            finished_earlier += finished_before
    return SweepSummary(name, done, failed, total - done - failed, retried, resumed_trials, seconds, results_dir,
                        uri, parent, resumed, bool(stopped_by), stopped_by, finished_earlier)


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
        f"{' INTERRUPTED' if summary.interrupted or summary.unfinished else ''}"
        f"{f' by {summary.stopped_by}' if summary.stopped_by else ''}: {summary.done} trials done, "
        f"{summary.failed} failed, {summary.unfinished} unfinished, {summary.retried} retried after a failure, "
        f"{summary.resumed_trials} resumed from an earlier run, "
        f"{f'{summary.finished_earlier} finished in an earlier run, ' if summary.finished_earlier else ''}"
        f"{summary.wall_seconds:.0f} s",
        f"Parquet:  {summary.results_dir / 'parquet'}",
        f"MLflow:   mlflow ui --backend-store-uri {shlex.quote(summary.tracking_uri)}  (parent run {summary.parent_run_id})",
    ]
    if summary.unfinished or summary.failed:
        lines.append(f"resume:   run the same `pipeline sweep {summary.name} ...` command again "
                     f"(with --results-dir {summary.results_dir}); finished trials are not redone")
    return lines


__all__ = ["get_sweep", "run_sweep", "summary_lines"]
