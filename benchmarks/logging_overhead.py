"""What the MLflow training curves cost a mask-training stage: logging on against logging off.

    python benchmarks/logging_overhead.py [--steps 600] [--repeats 5] [--size 400,400,200] [--threads 2]

One mask of the add/mul FNN (batch 128, K = 4, fused) is trained for --steps steps through the
pipeline's own stage loop (pipeline.loop.run_resumable), once with the curves sent to a real
sqlite MLflow store (every `log_every` = 100 steps: loss, regulariser, mean σ(l), kept fraction;
validation accuracy every 1000 steps; batched log_batch calls) and once without any report. The two
run interleaved, --repeats times each. Printed: the ratio of the medians (noisy on a shared machine:
the steps themselves vary by more than the logging costs) and, measured directly, the share of the
logging run's time spent inside the logging calls (statistics, MLflow batching and writes).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from models.masking import applied, make_optimizer, training_step
from models.registry import build_model
from pipeline import records
from pipeline.config import override
from pipeline.experiments import get_experiment, task_of
from pipeline.loop import VALIDATE_EVERY, run_resumable
from pipeline.stages import accuracy, make_masked_model, mask_statistics


def one_stage(config, task, steps: int, logger: records.MetricLogger | None, folder: Path) -> tuple[float, float]:
    """(seconds for `steps` mask-training steps, seconds of it spent in logging), with the curves
    sent to `logger` (or not at all)."""
    torch.manual_seed(0)
    masked = make_masked_model(config, build_model(config.model, task.dims).eval())
    optimizer = make_optimizer(masked)
    generator = torch.Generator().manual_seed(0)
    validation = list(task.eval_batches("add", 256))

    def step():
        batch = task.sample("add", config.mask.batch_size, generator, "cpu")
        return {"loss": training_step(masked, optimizer, lambda: task.loss(masked, batch))}

    spent = [0.0]

    def report(index: int, means: dict) -> None:
        began = time.perf_counter()
        logger.log("mask add", index, means | mask_statistics(masked))
        if index % (VALIDATE_EVERY * config.log_every) == 0:
            with applied(masked.model, masked.deterministic_masks()):
                logger.log("mask add", index, {"validation_accuracy": accuracy(task, masked.model, validation)})
        spent[0] += time.perf_counter() - began

    for _ in range(3):  # warm-up: kernel compilation, allocator
        step()
    start = time.perf_counter()
    run_resumable(step, {}, steps, folder / "unused.pt", 10 ** 9, "bench", report if logger else None,
                  config.log_every)
    if logger:
        began = time.perf_counter()
        logger.flush()
        spent[0] += time.perf_counter() - began
    return time.perf_counter() - start, spent[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", default="400,400,200")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = override(get_experiment("addmul-fnn"), {"model.size": args.size})
    task = task_of(config)
    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/mlflow.db"
        records.check_tracking(uri)
        off, on, logging = [], [], []
        for repeat in range(args.repeats):
            run_id, _ = records.start_trial_run(uri, "bench", f"trial-{repeat}", {}, {})
            off.append(one_stage(config, task, args.steps, None, Path(folder))[0])
            seconds, spent = one_stage(config, task, args.steps, records.MetricLogger(uri, run_id), Path(folder))
            on.append(seconds)
            logging.append(spent / seconds)
    off_ms, on_ms = (1000 * statistics.median(t) / args.steps for t in (off, on))
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}; {args.size}, {args.steps} steps, "
          f"median of {args.repeats}")
    print("| logging off ms/step | logging on ms/step | on/off - 1 | time inside logging (median) |")
    print("|---|---|---|---|")
    print(f"| {off_ms:.2f} | {on_ms:.2f} | {100 * (on_ms / off_ms - 1):+.2f}% | {100 * statistics.median(logging):.2f}% |")


if __name__ == "__main__":
    main()
