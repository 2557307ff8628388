"""The Tune trainable: runs what one Tune trial carries (one resolved trial, or a pack of them, each
in its own thread with their masks trained in one pass) and reports each finished stage to Tune.

Every trial calls pipeline.run.run_trial, which resumes from its own stage files and records itself
once (Parquet path and MLflow tag keyed by trial id), so Tune's retries and a resumed sweep never
duplicate a trial.

Fault injection: with MODULAR_MASKS_FAIL_FIRST_ATTEMPT=1 in the driver's environment (local Ray
passes it to its workers), the first attempt ever of each trial raises after its first finished
stage, inside the trial (its MLflow run records the error): a way to watch retries and resumes work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import tempfile
import threading
import time
from pathlib import Path

from models.common import write_json_atomic
from pipeline import records
from pipeline.run import run_trial
from pipeline.trial import TrialSpec

log = logging.getLogger(__name__)

FAULT_VARIABLE = "MODULAR_MASKS_FAIL_FIRST_ATTEMPT"


def sweep_trial(trial_config: dict) -> None:
    """Tune function trainable: run the trial, or each trial of a pack in its own thread with their
    masks trained in one pass; report after each stage of each trial."""
    import torch
    from ray import tune

    torch.set_num_threads(max(1, int(trial_config["cpus_per_trial"])))
    wait_for_memory(trial_config["context"].get("memory_bytes") or 0)
    trials = trial_config["trial"]["specs"]
    if [trial.id for trial in trials] != trial_config["trial"]["ids"]:
        raise RuntimeError(f"Tune resolved trials {[t.id for t in trials]} for the Tune trial planned with "
                           f"{trial_config['trial']['ids']}: its state belongs to another plan of this sweep")
    previous = tune.get_checkpoint()
    if previous is not None:
        with previous.as_directory() as folder:
            log.info("trial restored by Tune after stage %s", json.loads((Path(folder) / "stage.json").read_text()))
    results = _run_members(trials, trial_config["context"])
    metrics = results[0].metrics if len(results) == 1 else {}
    tune.report({"done": 1, "stage": "evaluate", "trials": len(results), "trial_dir": str(results[0].trial_dir),
                 "node_id": _node_id(), **{k.replace("/", "_"): v for k, v in metrics.items()}})


MEMORY_WAIT_SECONDS = 600  # at most, before a trial starts anyway (and may be killed for memory again)


def wait_for_memory(needed: int, poll: float = 5.0, limit: float = MEMORY_WAIT_SECONDS) -> float:
    """Wait until the node has `needed` bytes available (Linux's MemAvailable) or `limit` seconds have
    passed: a trial retried after Ray killed its worker for memory does not start into the same
    shortage at once. -> seconds waited."""
    waited = 0.0
    while needed and waited < limit and (available := _available_memory()) is not None and available < needed:
        if not waited:
            log.warning("waiting for memory: %.1f GB available, the trial reserves %.1f GB", available / 2**30,
                        needed / 2**30)
        time.sleep(poll)
        waited += poll
    return waited


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none: not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def trial_dirname(trial) -> str:
    """Tune's folder of a Tune trial: its number and the id of its (first) trial."""
    ids = trial.config["trial"]["ids"]  # on the driver, "specs" holds Tune's placeholders
    return f"{trial.trial_id}_{ids[0]}" + (f"_pack{len(ids)}" if len(ids) > 1 else "")


def _member_run(trial: TrialSpec, context: dict, on_stage):
    """run_trial for one trial, ready to be called with the pack it trains in (or None)."""
    results_dir = Path(context["results_dir"])
    first_ever = count_attempt(results_dir, trial, context["driver"])[1]

    def report_stage(stage: str) -> None:
        if first_ever and os.environ.get(FAULT_VARIABLE) == "1":
            raise RuntimeError(f"injected failure after stage {stage} of the first attempt ({FAULT_VARIABLE}=1)")
        on_stage(stage)

    return lambda pack: run_trial(
        trial, results_dir, parent_run_id=context["parent_run_id"], tags={"sweep": context["sweep"]},
        mlflow_experiment=records.sweep_experiment(context["sweep"]), tracking_uri=context["tracking_uri"],
        on_stage=report_stage, storage_uri=context["storage_uri"], pack=pack)


def _run_members(trials: list[TrialSpec], context: dict) -> list:
    """Each trial in its own thread (several: their masks in one MaskPack); Tune hears of every
    finished stage from this thread only, whichever thread finished it. Raises the first error once
    every member has stopped (finished members keep their results: a retry does not redo them)."""
    from concurrent.futures import ThreadPoolExecutor

    from models.masking.packing import MaskPack

    events: queue.Queue = queue.Queue()
    pack = MaskPack() if len(trials) > 1 else None
    runs = [_member_run(trial, context, _stage_reporter(events, i)) for i, trial in enumerate(trials)]
    folders = [trial.folder(Path(context["results_dir"])) for trial in trials]
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


def count_attempt(results_dir: Path, trial: TrialSpec, driver: str) -> tuple[int, bool]:
    """Attempts of this trial under this driver run (a second one is a retry after a failure; an
    attempt under a later driver is a resume), kept beside its files. -> (attempt, first ever)."""
    folder = trial.folder(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "attempts.json"
    counts = json.loads(path.read_text()) if path.exists() else {}
    counts[driver] = counts.get(driver, 0) + 1
    write_json_atomic(counts, path)
    return counts[driver], sum(counts.values()) == 1
