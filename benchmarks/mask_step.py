"""Mask-training step vs plain weight-training step on the paper's add/mul FNNs.

    python benchmarks/mask_step.py [--threads 2] [--device cpu] [--steps 20]

Prints a Markdown table: milliseconds per step (median over --steps after warm-up) and the
ratio to the plain step. Variants:
  plain       Adam on the weights, no masks
  masked      MaskedModel: one vmapped forward/backward for K samples (the library)
  fused       the same with fused=True: element-wise mask work in torch.compile'd kernels
  sequential  the naive way: K separate passes, one per mask sample, eq. 1-2 with two uniforms
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from models.fnn import FNN_SIZES, build_fnn
from models.masking import MaskConfig, MaskedModel, make_optimizer, training_step

BATCH, INPUTS, OUTPUTS, K = 128, 42, 20, 4


def loss_function(outputs, targets):
    """Two 10-way digits: outputs [B, 20], targets [B, 2]."""
    return nn.functional.cross_entropy(outputs.view(-1, 10), targets.view(-1))


def plain_step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=True)
    loss_function(model(x), y).backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def sequential_step(model, logits, optimizer, x, y):
    """K passes, each with its own mask sample drawn as in eq. 1 (two uniforms)."""
    from torch.func import functional_call

    optimizer.zero_grad(set_to_none=True)
    names = [n for n, _ in model.named_parameters()]
    params = dict(model.named_parameters())
    total = 0.0
    for xs, ys in zip(x.chunk(K), y.chunk(K)):
        sampled = {}
        for name, logit in zip(names, logits):
            u1, u2 = torch.rand_like(logit), torch.rand_like(logit)
            soft = torch.sigmoid(logit - torch.log(torch.log(u1) / torch.log(u2)))
            hard = (soft > 0.5).float()
            sampled[name] = params[name] * ((hard - soft).detach() + soft)
        total = total + loss_function(functional_call(model, sampled, (xs,)), ys) / K
    total = total + 1e-6 * sum(l.sum() for l in logits)
    total.backward()
    nn.utils.clip_grad_norm_(logits, 1.0)
    optimizer.step()


def time_steps(step, steps: int, device) -> float:
    for _ in range(3):
        step()
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


def measure(size: str, steps: int, device) -> dict[str, float]:
    model = build_fnn(INPUTS, FNN_SIZES[size], OUTPUTS).to(device)
    x = torch.randn(BATCH, INPUTS, device=device)
    y = torch.randint(0, 10, (BATCH, 2), device=device)

    weight_optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    plain = time_steps(lambda: plain_step(model, weight_optimizer, x, y), steps, device)

    masked = MaskedModel(model, MaskConfig(num_samples=K, alpha=1e-6)).to(device)
    mask_optimizer = make_optimizer(masked)
    library = time_steps(lambda: training_step(masked, mask_optimizer, lambda: loss_function(masked(x), y)), steps, device)
    masked.fused = True
    fused = time_steps(lambda: training_step(masked, mask_optimizer, lambda: loss_function(masked(x), y)), steps, device)

    logits = list(masked.logits)
    sequential_optimizer = torch.optim.Adam(logits, lr=1e-2)
    sequential = time_steps(lambda: sequential_step(model, logits, sequential_optimizer, x, y), steps, device)
    return {"plain": plain, "masked": library, "fused": fused, "sequential": sequential}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sizes", nargs="+", default=["small", "medium", "big"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device={device} threads={args.threads} torch={torch.__version__} batch={BATCH} K={K}\n")
    print("| hidden sizes | plain ms | masked ms (ratio) | masked, fused ms (ratio) | sequential ms (ratio) |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        r = measure(size, args.steps, device)
        hidden = ",".join(map(str, FNN_SIZES[size]))
        cells = [f"{r[k]:.1f} ({r[k] / r['plain']:.2f}x)" for k in ("masked", "fused", "sequential")]
        print(f"| {hidden} | {r['plain']:.1f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
