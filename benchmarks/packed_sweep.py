"""Wall time of a sweep with its mask-only grid points packed against the same sweep unpacked.

    python benchmarks/packed_sweep.py [--sweep alpha-sensitivity] [--repeats 1] [--set mask.steps=300 ...]

Runs `pipeline sweep SWEEP --smoke` with `--pack-size 16` and with `--pack-size 1`, alternating
(packed, unpacked, unpacked, packed, ...) so that load on a shared machine hits both alike, each in
a fresh results folder, and checks that both give the same masks bit for bit. Prints each run's wall
time, the medians and their ratio. Needs the pipeline's dependencies (Ray, MLflow).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def run(sweep: str, results_dir: Path, pack_size: int, assignments: list[str]) -> float:
    command = [sys.executable, "-m", "pipeline.cli", "sweep", sweep, "--smoke", "--results-dir", str(results_dir)]
    command += [a for pair in assignments for a in ("--set", pair)]
    command += ["--pack-size", str(pack_size)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=os.environ | {"MLFLOW_TRACKING_URI": ""})
    return time.perf_counter() - start


def same_masks(first: Path, second: Path) -> bool:
    paths = sorted(p.relative_to(first) for p in (first / "trials").glob("*/masks/*.logits.pt"))
    if not paths or paths != sorted(p.relative_to(second) for p in (second / "trials").glob("*/masks/*.logits.pt")):
        return False
    for path in paths:
        a, b = torch.load(first / path), torch.load(second / path)
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", default="alpha-sensitivity")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"packed": [], "unpacked": []}
    with tempfile.TemporaryDirectory(prefix="packed-sweep-") as work:
        for repeat in range(args.repeats):
            order = ["packed", "unpacked"] if repeat % 2 == 0 else ["unpacked", "packed"]
            for variant in order:
                folder = Path(work) / f"{variant}-{repeat}"
                seconds = run(args.sweep, folder, 16 if variant == "packed" else 1, args.assignments)
                times[variant].append(seconds)
                print(f"{variant:9s} run {repeat}: {seconds:7.1f} s", flush=True)
        identical = same_masks(Path(work) / "packed-0", Path(work) / "unpacked-0")
    packed, unpacked = statistics.median(times["packed"]), statistics.median(times["unpacked"])
    print(f"\n{args.sweep} --smoke {' '.join('--set ' + a for a in args.assignments)}: "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} at the end")
    print("| variant | runs | median wall [s] |\n|---|---|---|")
    print(f"| packed (--pack-size 16) | {len(times['packed'])} | {packed:.1f} |")
    print(f"| unpacked (--pack-size 1) | {len(times['unpacked'])} | {unpacked:.1f} |")
    print(f"unpacked / packed: {unpacked / packed:.2f}x; masks bit-identical: {identical}")


if __name__ == "__main__":
    main()
