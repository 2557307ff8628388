"""Mask-training step vs plain weight-training step on the paper's add/mul FNNs.

    python benchmarks/mask_step.py [--threads 2] [--device cpu] [--steps 10] [--repeats 5]
                                   [--cases small:4 medium:4 medium:8 big:4]

Prints a Markdown table, one row per case (FNN size : K mask samples). The three variants run
interleaved: each of --repeats rounds times --steps steps of plain, then eager, then fused, so
that load on a shared machine hits all three alike; a cell is the median over rounds of each
round's median step time, with the ratio to the plain step.
  plain   Adam on the weights, no masks
  eager   MaskedModel: one vmapped forward/backward for K samples, element-wise work in eager ops
  fused   the same with fused=True: element-wise mask work in torch.compile'd kernels

The element-wise columns time the fused kernels alone (forward and backward of every masked
tensor, as in one step) and state the bytes they must move at least: per masked tensor of N
elements, forward reads weight and logits and writes the K-stack of masked weights (4N(2 + K)
bytes), backward reads weight, logits and the K-stack gradient and writes the logit gradient
(4N(3 + K) bytes). Bytes over kernel time is the bandwidth they reach. Imports torch only.

On a CPU the fused path makes glibc keep freed memory for reuse (models/masking/cpu_memory.py), for
the whole process; the script does so before the first case, so that every variant runs under the
same allocator, and prints whether it took effect (not where MALLOC_* variables are set).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from models.fnn import FNN_SIZES, build_fnn
from models.masking import MaskConfig, MaskedModel, make_optimizer, training_step
from models.masking.cpu_memory import keep_freed_cpu_memory
from models.masking.counter_noise import draw_keys
from models.masking.fused_sampling import keyed_masked_weight_samples

BATCH, INPUTS, OUTPUTS = 128, 42, 20
FLOAT_BYTES = 4


def loss_function(outputs, targets):
    """Two 10-way digits: outputs [B, 20], targets [B, 2]."""
    return nn.functional.cross_entropy(outputs.view(-1, 10), targets.view(-1))


def plain_step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    loss_function(model(x), y).backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def median_ms(step, steps: int, device) -> float:
    """Median milliseconds of `steps` calls of step()."""
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def element_wise_step(masked: MaskedModel, gradients: list[torch.Tensor]):
    """The fused kernels of one step: forward and logit-gradient backward of every masked tensor."""
    K, weights = masked.config.num_samples, masked.effective_weights()
    keys = draw_keys(len(masked.names), masked.logits[0].device)
    for i, (name, logit) in enumerate(zip(masked.names, masked.logits)):
        stack = keyed_masked_weight_samples(weights[name], logit, keys[i], K, masked.config.temperature)
        torch.autograd.grad(stack, logit, gradients[i])


def _gradient_as_in_a_step(logit: torch.Tensor, num_samples: int) -> torch.Tensor:
    """A random K-stack gradient for `logit` [*S], laid out as a Linear layer's weight gradient
    arrives (matrices transposed): [K, *S]."""
    shape = logit.t().shape if logit.dim() == 2 else logit.shape
    gradient = torch.randn(num_samples, *shape, device=logit.device)
    return gradient.transpose(-1, -2) if logit.dim() == 2 else gradient


def element_wise_bytes(masked: MaskedModel) -> int:
    """Least bytes the fused kernels move per step: 4N(2 + K) forward + 4N(3 + K) backward."""
    K = masked.config.num_samples
    return sum(FLOAT_BYTES * logit.numel() * (5 + 2 * K) for logit in masked.logits)


def steps_for(size: str, num_samples: int, device) -> dict:
    """The step functions of one case (all compiled and warmed up), and the element-wise bytes."""
    model = build_fnn(INPUTS, FNN_SIZES[size], OUTPUTS).to(device)
    plain_model = copy.deepcopy(model)
    x = torch.randn(BATCH, INPUTS, device=device)
    y = torch.randint(0, 10, (BATCH, 2), device=device)
    weight_optimizer = torch.optim.Adam(plain_model.parameters(), lr=1e-3)
    eager = MaskedModel(model, MaskConfig(num_samples=num_samples, alpha=1e-6))
    fused = MaskedModel(copy.deepcopy(model), MaskConfig(num_samples=num_samples, alpha=1e-6), fused=True)
    eager_optimizer, fused_optimizer = make_optimizer(eager), make_optimizer(fused)
    gradients = [_gradient_as_in_a_step(logit, num_samples) for logit in fused.logits]
    steps = {
        "plain": lambda: plain_step(plain_model, weight_optimizer, x, y),
        "eager": lambda: training_step(eager, eager_optimizer, lambda: loss_function(eager(x), y)),
        "fused": lambda: training_step(fused, fused_optimizer, lambda: loss_function(fused(x), y)),
        "kernels": lambda: element_wise_step(fused, gradients),
    }
    for step in steps.values():
        for _ in range(3):  # warm-up, kernel compilation included
            step()
    return {"steps": steps, "bytes": element_wise_bytes(fused)}


def measure(size: str, num_samples: int, steps: int, repeats: int, device) -> dict[str, float]:
    """Median over interleaved rounds of each variant's median step time [ms], and the bytes."""
    case = steps_for(size, num_samples, device)
    rounds = {name: [] for name in case["steps"]}
    for _ in range(repeats):
        for name, step in case["steps"].items():
            rounds[name].append(median_ms(step, steps, device))
    return {name: statistics.median(times) for name, times in rounds.items()} | {"bytes": case["bytes"]}


def table_row(size: str, num_samples: int, r: dict[str, float]) -> str:
    hidden = "x".join(map(str, FNN_SIZES[size])) if len(set(FNN_SIZES[size])) > 1 else \
        f"{FNN_SIZES[size][0]}x{len(FNN_SIZES[size])}"
    megabytes = r["bytes"] / 1e6
    cells = [hidden, str(num_samples), f"{r['plain']:.1f}", f"{r['eager']:.1f} ({r['eager'] / r['plain']:.2f}x)",
             f"{r['fused']:.1f} ({r['fused'] / r['plain']:.2f}x)", f"{megabytes:.0f}",
             f"{r['kernels']:.1f}", f"{megabytes / r['kernels']:.1f}"]
    return "| " + " | ".join(cells) + " |"


def parse_case(text: str) -> tuple[str, int]:
    size, _, samples = text.partition(":")
    if size not in FNN_SIZES or not samples.isdigit():
        raise argparse.ArgumentTypeError(f"a case is SIZE:K with SIZE one of {sorted(FNN_SIZES)}, got {text!r}")
    return size, int(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="steps per variant and round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--cases", nargs="+", type=parse_case, default=[("small", 4), ("medium", 4), ("medium", 8),
                                                                          ("big", 4)])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    kept = keep_freed_cpu_memory() if device.type == "cpu" else False
    print(f"device={device} threads={args.threads} torch={torch.__version__} batch={BATCH} "
          f"steps={args.steps} repeats={args.repeats} glibc-keeps-freed-memory={kept}\n")
    print("| hidden | K | plain ms | eager ms (ratio) | fused ms (ratio) | element-wise MB/step "
          "| element-wise kernels ms | kernels GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for size, num_samples in args.cases:
        print(table_row(size, num_samples, measure(size, num_samples, args.steps, args.repeats, device)), flush=True)


if __name__ == "__main__":
    main()
