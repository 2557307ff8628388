"""What recomputing masked weight stacks costs in time where memory is no concern: the paper's FNNs.

    python benchmarks/recompute_cost.py 2000,2000,2000,2000 [800,800,800,800 ...]

Per hidden-size list: fused mask-training steps (K = 4, batch 128, biases unmasked, one thread) of
the add/mul FNN with recompute=False and recompute=True, interleaved: 5 rounds of 7 steps each,
after 3 warm-up steps; prints the median over rounds of each round's median step time and the ratio.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch import nn

from models.fnn import build_fnn
from models.masking import MaskConfig, MaskedModel, ParameterFilter, make_optimizer, training_step


def measure(hidden: tuple[int, ...], rounds: int = 5, steps: int = 7) -> tuple[float, float]:
    x, y = torch.randn(128, 42), torch.randint(0, 10, (128, 2))

    def loss(outputs):
        return nn.functional.cross_entropy(outputs.view(-1, 10), y.view(-1))

    variants = {}
    for recompute in (False, True):
        torch.manual_seed(0)
        masked = MaskedModel(build_fnn(42, hidden, 20), MaskConfig(num_samples=4), ParameterFilter(biases=False),
                             fused=True, recompute=recompute)
        optimizer = make_optimizer(masked)
        for _ in range(3):
            training_step(masked, optimizer, lambda: loss(masked(x)))
        variants[recompute] = (masked, optimizer)
    medians = {False: [], True: []}
    for _ in range(rounds):
        for recompute, (masked, optimizer) in variants.items():
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                training_step(masked, optimizer, lambda: loss(masked(x)))
                times.append(time.perf_counter() - start)
            medians[recompute].append(statistics.median(times))
    return statistics.median(medians[False]) * 1e3, statistics.median(medians[True]) * 1e3


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("| hidden | kept ms | recompute ms | ratio |\n|---|---|---|---|")
    for sizes in sys.argv[1:] or ["2000,2000,2000,2000"]:
        kept, recomputed = measure(tuple(int(s) for s in sizes.split(",")))
        print(f"| {sizes.replace(',', 'x')} | {kept:.1f} | {recomputed:.1f} | {recomputed / kept:.2f}x |")
