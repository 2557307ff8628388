"""The reproduction record: run a study's sweep at the CPU scale, then keep what it measured.

    python -m reproduction.record addmul --work /path/to/results [--data-dir ../shared/data] [SWEEP OPTIONS]

1. runs `pipeline sweep STUDY --scale cpu --results-dir WORK` (started again, it resumes; one torch
   thread per trial, as many trials at once as the machine has cores);
2. copies the Parquet partitions of the sweep's trials from WORK into reproduction/STUDY/parquet/
   (the trial folders, networks and masks stay in WORK: they are not needed to redraw anything);
3. draws the figures and report.md from that copy alone (`pipeline analyze reproduction/STUDY`);
4. appends the command, the commit, the machine and the wall time to reproduction/STUDY/runs.json.

`--export-only` skips step 1 (for a sweep that finished in WORK earlier). Any other option goes to
`pipeline sweep` as given, and into runs.json with the command (e.g. `--cpus-per-trial 1.5`: one trial at a
time on 2 cores, one torch thread, beside another study's sweep).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds

RECORD = Path(__file__).resolve().parent
USAGE_ERROR = 2  # click's exit status for options `pipeline sweep` does not take: it ran nothing
ROOT = RECORD.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="a sweep name (pipeline list)")
    parser.add_argument("--work", type=Path, required=True, help="results folder the sweep runs in")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--export-only", action="store_true")
    args, sweep_options = parser.parse_known_args(argv)
    out = RECORD / args.study
    command = ["pipeline", "sweep", args.study, "--scale", "cpu", "--results-dir", str(args.work)]
    command += (["--data-dir", str(args.data_dir)] if args.data_dir else []) + sweep_options
    run = {"command": " ".join(command), "commit": _commit(), "machine": _machine(),
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if not args.export_only:
        start = time.time()
        returncode = subprocess.call(command, env=os.environ | {"OMP_NUM_THREADS": "1"})
        if returncode == USAGE_ERROR:
            print(f"`{run['command']}` was refused (see above): nothing ran, nothing recorded", file=sys.stderr)
            return returncode
        run |= {"wall_seconds": round(time.time() - start), "returncode": returncode}
        _append(out / "runs.json", run)
        if returncode != 0:
            print(f"the sweep stopped (exit {returncode}); run the same command again to resume it", file=sys.stderr)
            return returncode
    trials = export(args.work, args.study, out / "parquet")
    print(f"{args.study}: {trials} trials exported to {out / 'parquet'}")
    return subprocess.call(["pipeline", "analyze", str(out), "--out", str(out)])


def export(work: Path, sweep: str, destination: Path) -> int:
    """Copy every table's partitions of the trials of `sweep` (its `sweep` column) to destination.
    -> number of trials."""
    metrics = ds.dataset(work / "parquet" / "metrics", partitioning="hive", format="parquet")
    ids = set(metrics.to_table(columns=["trial_id"], filter=ds.field("sweep") == sweep)["trial_id"].to_pylist())
    if not ids:
        raise SystemExit(f"no trials of sweep {sweep!r} in {work / 'parquet'}")
    for table in sorted(p for p in (work / "parquet").iterdir() if p.is_dir()):
        for trial in ids:
            source = table / f"trial_id={trial}"
            if source.is_dir():
                target = destination / table.name / source.name
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(source, target)
    return len(ids)


def _commit() -> str:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return head + (" (with uncommitted changes)" if dirty else "")


def _machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPU cores ({model}), {memory:.0f} GiB, {platform.system()} {platform.machine()}, no GPU"


def _append(path: Path, run: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(runs + [run], indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
