"""What the per-sample loop costs against the batched (vmapped) mask-training step.

    python benchmarks/fallback_cost.py [--threads 2] [--repeats 15] [--models fnn lstm ...]

For each model, one MaskedModel runs on the batched path and a second one, over the same frozen
model, is forced onto the per-sample loop (`masked.batched = False`, the path MaskedModel takes
for modules vmap cannot batch). Steps alternate between the two (batched, loop, batched, ...) so
that both see the same machine load; milliseconds per step are the median of --repeats after 3
warm-up steps each. K = 4 mask samples, eager (fused=False), Adam and gradient clipping as in
training. `nn.LSTM` has no vmap rule: its row times the loop only, beside `models/lstm.py`'s
batchable LSTM of the same size.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from models.simple_cnn import build_simple_cnn
from models.fnn import FNN_SIZES, build_fnn
from models.lstm import build_lstm
from models.masking import MaskConfig, MaskedModel, make_optimizer, training_step
from models.transformer import build_transformer

K = 4


class TorchLSTMClassifier(nn.Module):
    """models/lstm.py's classifier with nn.LSTM inside: [B, T, input] -> [B, T, output]."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.output_layer = nn.Linear(hidden_size, output_size)

    def forward(self, inputs):
        return self.output_layer(self.lstm(inputs)[0])


def _classification(model, inputs, classes):
    """(model, inputs, loss of the model's outputs against random labels)."""
    def loss(outputs):
        labels = torch.randint(0, classes, outputs.shape[:-1], generator=torch.Generator().manual_seed(0))
        return nn.functional.cross_entropy(outputs.reshape(-1, classes), labels.reshape(-1))

    return model, inputs, loss


def workloads() -> dict:
    """name -> a function making (model, inputs, loss); each in eval mode, as a trained model is masked."""
    return {
        "fnn 400,400,200, batch 128": lambda: _classification(
            build_fnn(42, FNN_SIZES["small"], 20).eval(), (torch.randn(128, 42),), 20),
        "lstm (models/lstm.py) hidden 128, T 8, batch 128": lambda: _classification(
            build_lstm(42, 128, 20).eval(), (torch.randn(128, 8, 42),), 20),
        "cnn 32,64,128, 16x16 images, batch 64": lambda: _classification(
            build_simple_cnn(3, (32, 64, 128), 10).eval(), (torch.randn(64, 3, 16, 16),), 10),
        "transformer d 64, 2+2 layers, lengths 12/10, batch 64": lambda: _classification(
            build_transformer(20, 20, d_model=64, num_heads=4, num_layers=2, feedforward=128).eval(),
            (torch.randint(0, 20, (64, 12)), torch.randint(0, 20, (64, 10))), 20),
        "nn.LSTM hidden 128, T 8, batch 128 (loop only)": lambda: _classification(
            TorchLSTMClassifier(42, 128, 20).eval(), (torch.randn(128, 8, 42),), 20),
    }


def step_function(masked: MaskedModel, inputs: tuple, loss):
    optimizer = make_optimizer(masked)
    return lambda: training_step(masked, optimizer, lambda: loss(masked(*inputs)))


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def measure(make_workload, repeats: int) -> tuple[float | None, float]:
    """Median ms per step (batched or None where vmap cannot batch the model, per-sample loop)."""
    model, inputs, loss = make_workload()
    batched = MaskedModel(model, MaskConfig(num_samples=K, alpha=1e-6))
    looped = MaskedModel(model, MaskConfig(num_samples=K, alpha=1e-6))
    looped.batched = False
    batched_step, looped_step = step_function(batched, inputs, loss), step_function(looped, inputs, loss)
    for _ in range(3):
        batched_step()
        looped_step()
    can_batch = batched.batched
    batched_times, looped_times = [], []
    for _ in range(repeats):
        if can_batch:
            batched_times.append(timed(batched_step))
        looped_times.append(timed(looped_step))
    batched_ms = 1000 * statistics.median(batched_times) if can_batch else None
    return batched_ms, 1000 * statistics.median(looped_times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--models", nargs="+", default=None, help="substrings of the workload names")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"threads={args.threads} torch={torch.__version__} K={K} repeats={args.repeats}\n")
    print("| model | batched ms | per-sample loop ms | loop / batched |")
    print("|---|---|---|---|")
    for name, make_workload in workloads().items():
        if args.models and not any(m in name for m in args.models):
            continue
        batched_ms, looped_ms = measure(make_workload, args.repeats)
        if batched_ms is None:
            print(f"| {name} | no vmap rule | {looped_ms:.1f} | |", flush=True)
        else:
            print(f"| {name} | {batched_ms:.1f} | {looped_ms:.1f} | {looped_ms / batched_ms:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
