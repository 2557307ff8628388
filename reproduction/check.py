"""Is the record what the code computes? Rerun one committed trial and compare.

    python -m reproduction.check            # seed 0 of the small add/mul FNN (addmul sweep, CPU scale)

Runs `pipeline run addmul-fnn --scale cpu --seed 0 --set sweep=addmul` (the same configuration, so the
same trial id, as the record's trial) in a fresh results folder with one torch thread, as the sweep
ran it, then compares its kept-weight counts (every mask and layer) and accuracies (every mask,
inverted mask and subtask) with reproduction/addmul/parquet. Expected: identical (same code, same
seeds, deterministic CPU kernels, one thread). A difference within TOLERANCE is reported as such
(another CPU's floating-point reductions may round differently); beyond it the check fails.
About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds

RECORD = Path(__file__).resolve().parent
TOLERANCE = {"kept": 0.005, "accuracy": 0.005}  # relative share of kept weights; absolute accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="addmul")
    parser.add_argument("--experiment", default="addmul-fnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results-dir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    committed = RECORD / args.study / "parquet"
    if not committed.is_dir():
        raise SystemExit(f"no committed record at {committed}; run python -m reproduction.record {args.study} first")
    with tempfile.TemporaryDirectory() as temporary:
        results = args.results_dir or Path(temporary)
        command = ["pipeline", "run", args.experiment, "--scale", "cpu", "--seed", str(args.seed),
                   "--set", f"sweep={args.study}", "--results-dir", str(results)]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, env=os.environ | {"OMP_NUM_THREADS": "1"})
        differences = compare(committed, results / "parquet", args.experiment, args.seed)
    for line in differences["lines"]:
        print(line)
    print(differences["verdict"])
    return 0 if differences["ok"] else 1


def rows(parquet: Path, table: str, experiment: str, seed: int, key: tuple[str, ...], value: str) -> dict:
    """{key values: value} of one trial's rows of `table`."""
    data = ds.dataset(parquet / table, partitioning="hive", format="parquet").to_table()
    data = data.filter(pc.and_(pc.equal(data["experiment"], experiment), pc.equal(data["seed"], seed)))
    return {tuple(r[k] for k in key): r[value] for r in data.select([*key, value]).to_pylist()}


def compare(committed: Path, rerun: Path, experiment: str, seed: int) -> dict:
    """Kept counts and accuracies of the committed trial against the rerun's."""
    lines, ok, identical = [], True, True
    for table, key, value, tolerance in (("layers", ("mask", "layer"), "kept", TOLERANCE["kept"]),
                                         ("metrics", ("mask", "subtask"), "accuracy", TOLERANCE["accuracy"])):
        old = rows(committed, table, experiment, seed, key, value)
        new = rows(rerun, table, experiment, seed, key, value)
        if not old or set(old) != set(new):
            return {"lines": [f"{table}: committed rows {sorted(old)} vs rerun {sorted(new)}"], "ok": False,
                    "verdict": "FAILED: the rerun does not have the committed trial's rows"}
        for k in sorted(old):
            if old[k] != new[k]:
                identical = False
                difference = abs(old[k] - new[k]) / (max(old[k], 1) if table == "layers" else 1)
                ok &= difference <= tolerance
                lines.append(f"{table} {k}: committed {old[k]}, rerun {new[k]} ({difference:.4f}; tolerance {tolerance})")
        lines.append(f"{table}: {len(old)} values compared")
    verdict = "identical: every kept count and accuracy equals the committed record" if identical else (
        "within tolerance" if ok else "FAILED: beyond tolerance")
    return {"lines": lines, "ok": ok, "verdict": verdict}


if __name__ == "__main__":
    sys.exit(main())
