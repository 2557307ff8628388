"""Mask-training steps of M masks over one frozen network: packed (one MaskPack) against one by one.

    python benchmarks/packed_masks.py [--device cuda] [--threads 1] [--packs 1 4 16] [--sizes small medium]

M masks (own β, noise and data each; the add/mul FNN, 42 inputs, 20 outputs, batch 128, K = 4,
fused kernels) take `--steps` training steps each, either one after the other ("alone") or in M
threads whose forward and backward passes run together through a MaskPack ("packed"). The two
variants alternate over `--repeats` rounds; a cell is the median over rounds of the time per
mask-step (round time / (M · steps)). Imports torch only.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import threading
import time

import torch
from torch import nn

from models.fnn import build_fnn, hidden_sizes
from models.masking import MaskConfig, MaskedModel, make_optimizer, training_step
from models.masking.packing import MaskPack

BATCH, INPUTS, OUTPUTS = 128, 42, 20


class Member:
    def __init__(self, network: nn.Module, seed: int, device: torch.device, num_samples: int):
        self.masked = MaskedModel(copy.deepcopy(network), MaskConfig.from_beta(1e-4 * (seed + 1), BATCH,
                                                                               num_samples=num_samples), fused=True)
        self.masked.noise_generator = torch.Generator().manual_seed(seed)
        self.optimizer = make_optimizer(self.masked)
        generator = torch.Generator().manual_seed(100 + seed)
        self.inputs = torch.randn(BATCH, INPUTS, generator=generator).to(device)
        self.targets = torch.randint(0, OUTPUTS, (BATCH,), generator=generator).to(device)

    def loss(self):
        return nn.functional.cross_entropy(self.masked(self.inputs), self.targets)

    def steps(self, count: int) -> None:
        for _ in range(count):
            training_step(self.masked, self.optimizer, self.loss)


def alone(members: list[Member], steps: int) -> None:
    for member in members:
        member.steps(steps)


def packed(members: list[Member], steps: int) -> None:
    pack = MaskPack()
    started = threading.Barrier(len(members))

    def run(member: Member) -> None:
        member.masked.pack = pack
        with pack.member():
            started.wait()
            member.steps(steps)
        member.masked.pack = None

    threads = [threading.Thread(target=run, args=(m,)) for m in members]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def seconds(run, members, steps, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run(members, steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(size: str, count: int, args, device) -> tuple[float, float]:
    network = build_fnn(INPUTS, hidden_sizes(size), OUTPUTS).to(device).eval()
    members = [Member(network, seed, device, args.samples) for seed in range(count)]
    alone(members, 2)  # warm-up: kernel compilation, the vmap check
    packed(members, 2)
    times = {"alone": [], "packed": []}
    for repeat in range(args.repeats):
        for name in (("alone", "packed") if repeat % 2 == 0 else ("packed", "alone")):
            run = alone if name == "alone" else packed
            times[name].append(seconds(run, members, args.steps, device) / (count * args.steps))
    return statistics.median(times["alone"]) * 1e3, statistics.median(times["packed"]) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=4, help="K")
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 4, 16], help="M values")
    parser.add_argument("--sizes", nargs="+", default=["small", "medium"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"{name}, torch {torch.__version__}, K = {args.samples}, batch {BATCH}, {args.steps} steps x "
          f"{args.repeats} interleaved rounds")
    print("| size | M | alone ms / mask-step | packed ms / mask-step | alone / packed |\n|---|---|---|---|---|")
    for size in args.sizes:
        for count in args.packs:
            one, together = measure(size, count, args, device)
            print(f"| {size} | {count} | {one:.2f} | {together:.2f} | {one / together:.2f}x |", flush=True)
    if device.type == "cpu":
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
