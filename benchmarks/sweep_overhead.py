"""Per-trial overhead of Ray Tune + MLflow + Parquet, and what pretraining reuse saves.

    python benchmarks/sweep_overhead.py [--seeds 2] [--work /tmp/sweep-bench]

1. The smoke trials of `sharing-vs-capacity` run back to back in this process, stages only
   (pretrain, masks, evaluate: no Parquet, no MLflow, no Ray).
2. The same trials through `run_sweep` (local Ray, one trial at a time with all CPUs, so both runs
   use the same threads). Overhead per trial = (sweep wall time - sum of bare trial times) / trials.
3. alpha-sensitivity --smoke: trials that differ only in β share one pretrained net per seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

import torch

from pipeline.config import override
from pipeline.evaluate import evaluate_masks
from pipeline.experiments import get_experiment, get_sweep, task_of
from pipeline.stages import TrialContext, pretrained_network, train_mask
from pipeline.trial import resolve
from pipeline.storage import Storage
from pipeline.sweep import SweepOptions, run_sweep


def bare_trial_seconds(config, results_dir: Path) -> tuple[float, float]:
    """(whole trial, pretraining alone) in seconds, stages only."""
    ctx = TrialContext(resolve(config), task_of(config), results_dir, Storage(results_dir))
    start = time.perf_counter()
    network = pretrained_network(ctx)
    pretrain_seconds = time.perf_counter() - start
    for name, split in ctx.task.mask_splits.items():
        train_mask(ctx, name, split, network)
    evaluate_masks(ctx, network, list(ctx.task.mask_splits))
    return time.perf_counter() - start, pretrain_seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sweep-bench"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    cpus = torch.get_num_threads()

    spec = get_sweep("sharing-vs-capacity")
    configs = [dataclasses.replace(override(get_experiment("addmul-fnn", smoke=True), {"model.size": size}), seed=seed)
               for size in spec.smoke_grid["model.size"] for seed in range(args.seeds)]
    bare = [bare_trial_seconds(c, args.work / "bare") for c in configs]
    bare_total = sum(b[0] for b in bare)

    summary = run_sweep(SweepOptions("sharing-vs-capacity", args.work / "sweep", "smoke", args.seeds,
                                     cpus_per_trial=cpus, num_cpus=cpus))
    overhead = (summary.wall_seconds - bare_total) / len(configs)
    print(f"\nmachine: {cpus} CPU threads, torch {torch.__version__}")
    print("| trials | bare trials, sum [s] | mean bare trial [s] | sweep wall [s] | overhead per trial [s] | overhead |")
    print("|---|---|---|---|---|---|")
    print(f"| {len(configs)} | {bare_total:.1f} | {bare_total / len(configs):.1f} | {summary.wall_seconds:.1f} "
          f"| {overhead:.1f} | {100 * overhead / (bare_total / len(configs)):.1f}% |")

    alpha = run_sweep(SweepOptions("alpha-sensitivity", args.work / "alpha", "smoke", args.seeds, cpus_per_trial=cpus,
                                   num_cpus=cpus))
    trials = alpha.done
    pretrained = len(list((args.work / "alpha" / "pretrained").iterdir()))
    small_pretrain = [b[1] for b, c in zip(bare, configs) if c.model.size == "small"]
    pretrain_seconds = sum(small_pretrain) / len(small_pretrain)
    without_reuse = alpha.wall_seconds + (trials - pretrained) * pretrain_seconds
    print("\n| alpha-sensitivity --smoke | trials | pretrained nets | wall [s] | wall without reuse, estimated [s] |")
    print("|---|---|---|---|---|")
    print(f"| seeds={args.seeds} | {trials} | {pretrained} | {alpha.wall_seconds:.1f} | {without_reuse:.1f} "
          f"(+{trials - pretrained} x {pretrain_seconds:.1f} s pretraining) |")


if __name__ == "__main__":
    main()
