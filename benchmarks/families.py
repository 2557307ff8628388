"""Mask-training step against a plain training step, one row per model family of the paper.

    python benchmarks/families.py [--threads 1] [--device cpu] [--repeats 5] [--round-seconds 0.5]
                                  [--families fnn lstm ...] [--resnet-blocks 1] [--profile FAMILY]
                                  [--compare-attention]

Each family at its preset's batch size and K (the SCAN Transformer at K = 8, its preset has 4), the
model in eval mode as the mask stage runs it, the parameters the pipeline masks (no biases; SCAN:
no embeddings), Adam and the family's gradient clipping in every variant:
  plain   the same model trained on its weights (Adam, no masks)
  eager   MaskedModel(fused=False) through training_step / make_optimizer
  fused   MaskedModel(fused=True): what the pipeline uses
The three run interleaved: each of --repeats rounds times n steps of each variant (the order
rotating between rounds; n such that a plain round takes about --round-seconds, at least 1), after
two warm-up steps each (kernel compilation, the vmap check); a cell is the median over rounds of
each round's median step. Load average is printed per row (a shared machine:
read the ratios). Batches are synthetic, with the real tasks' shapes (the step's cost depends on
shapes only), so the script needs no data set. Imports torch only.

--profile FAMILY prints torch.profiler's table of the fused step of that family (where the time goes).
--compare-attention adds a fourth variant for the Transformers, interleaved with the others: the
fused step with models.masking's batched attention turned off (vmap then runs attention once per
mask sample, as before it), to measure what batching attention gains.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from models.simple_cnn import build_simple_cnn
from models.fnn import FNN_SIZES, build_fnn
from models.lstm import build_lstm
from models.masking import MaskConfig, MaskedModel, ParameterFilter, make_optimizer, training_step
from models.masking import batching, drawn_on_use
from models.masking.cpu_memory import keep_freed_cpu_memory
from models.resnet import build_resnet
from models.lstm_seq2seq import build_lstm_seq2seq
from models.transformer import build_transformer


@dataclass
class Family:
    """A model, one batch (inputs, targets) and the loss, at the paper's mask-stage settings."""

    label: str
    build: Callable[[], nn.Module]
    batch: Callable[[torch.Generator], tuple[tuple, Tensor]]
    loss: Callable[[Tensor, Tensor], Tensor]
    batch_size: int
    num_samples: int
    clip: float = 1.0
    embeddings: bool = True  # whether embeddings are masked (ParameterFilter)
    attention: bool = False  # whether the model calls scaled_dot_product_attention


def _digit_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """add/mul: two 10-way digits per output pair, [B, 20] against [B, 2]."""
    return nn.functional.cross_entropy(outputs.reshape(-1, 10), targets.reshape(-1))


def _sequence_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=0)


def _arithmetic_batch(batch: int, steps: int | None):
    def make(generator):
        x = torch.rand(batch, 42, generator=generator).round()
        inputs = x if steps is None else x.unsqueeze(1).expand(-1, steps, -1).contiguous()  # repeat3: [B, 3, 42]
        return (inputs,), torch.randint(0, 10, (batch, 2), generator=generator)
    return make


def _lstm_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    return _digit_loss(outputs[:, -1], targets)  # read at the last step


def _sequence_batch(batch: int, source: int, target: int, vocab_in: int, vocab_out: int):
    """Token ids with right padding in every other example (what a real batch holds)."""
    def make(generator):
        src = torch.randint(1, vocab_in, (batch, source), generator=generator)
        src[::2, source * 2 // 3:] = 0
        target_in = torch.randint(1, vocab_out, (batch, target), generator=generator)
        target_out = torch.randint(1, vocab_out, (batch, target), generator=generator)
        target_out[::2, target * 2 // 3:] = 0
        return (src, target_in, src == 0), target_out
    return make


def _image_batch(batch: int):
    def make(generator):
        images = torch.randn(batch, 3, 32, 32, generator=generator)
        return (images,), torch.randint(0, 10, (batch,), generator=generator)
    return make


def families(resnet_blocks: int) -> dict[str, Family]:
    ce = nn.functional.cross_entropy
    return {
        "fnn": Family("FNN 800x4 (add/mul)", lambda: build_fnn(42, FNN_SIZES["medium"], 20),
                      _arithmetic_batch(128, None), _digit_loss, 128, 4),
        "lstm": Family("LSTM 256 x 2 layers (add/mul, 3 steps)", lambda: build_lstm(42, 256, 20, num_layers=2),
                       _arithmetic_batch(128, 3), _lstm_loss, 128, 4),
        "scan-lstm": Family("SCAN LSTM 2+2 x 200 (S 9, T 49)", lambda: build_lstm_seq2seq(15, 9),
                            _sequence_batch(256, 9, 49, 15, 9), _sequence_loss, 256, 4, clip=5.0, embeddings=False),
        "scan-transformer": Family("SCAN Transformer d 100, 3+3 (S 9, T 49)",
                                   lambda: build_transformer(15, 9, d_model=100, num_heads=4, num_layers=3,
                                                             feedforward=200, dropout=0.1, max_length=64),
                                   _sequence_batch(256, 9, 49, 15, 9), _sequence_loss, 256, 8, clip=5.0,
                                   embeddings=False, attention=True),
        "math-transformer": Family("Mathematics Transformer d 256, 3+3, tied (S 40, T 12)",
                                   lambda: build_transformer(98, 98, d_model=256, num_heads=4, num_layers=3,
                                                             feedforward=512, tied=True),
                                   _sequence_batch(256, 40, 12, 98, 98), _sequence_loss, 256, 8, attention=True),
        "cnn": Family("simple CNN 32-64-128-256 (CIFAR-10)", lambda: build_simple_cnn(), _image_batch(128), ce, 128, 4),
        "resnet": Family(f"ResNet-{6 * resnet_blocks + 2} (CIFAR-10)", lambda: build_resnet(resnet_blocks),
                         _image_batch(256), ce, 256, 4),
    }


def steps_of(family: Family, device: torch.device) -> dict[str, Callable[[], None]]:
    """The three step functions of one family, over copies of one model (eval mode)."""
    generator = torch.Generator().manual_seed(0)
    model = family.build().to(device).eval()
    inputs, targets = family.batch(generator)
    inputs = tuple(x.to(device) for x in inputs)
    targets = targets.to(device)
    plain = copy.deepcopy(model)
    plain_optimizer = torch.optim.Adam(plain.parameters(), lr=1e-3)

    def plain_step():
        plain_optimizer.zero_grad(set_to_none=True)
        family.loss(plain(*inputs), targets).backward()
        nn.utils.clip_grad_norm_(plain.parameters(), family.clip)
        plain_optimizer.step()

    config = MaskConfig.from_beta(1e-4, family.batch_size, num_samples=family.num_samples)
    parameter_filter = ParameterFilter(biases=False, embeddings=family.embeddings)
    steps = {"plain": plain_step}
    for name, fused in (("eager", False), ("fused", True)):
        masked = MaskedModel(copy.deepcopy(model), config, parameter_filter, fused=fused)
        masked.noise_generator = torch.Generator("cpu" if fused else device).manual_seed(1)
        optimizer = make_optimizer(masked)
        steps[name] = (lambda masked=masked, optimizer=optimizer: training_step(
            masked, optimizer, lambda: family.loss(masked(*inputs), targets), clip=family.clip))
        steps[f"{name} model"] = masked
    fused_step = steps["fused"]

    def fused_step_attention_per_sample():
        with _attention_per_sample():
            fused_step()

    steps["fused, attention per sample"] = fused_step_attention_per_sample
    return steps


@contextlib.contextmanager
def _attention_per_sample():
    """vmap's own per-sample attention instead of models.masking's batched attention."""
    modules = (batching, drawn_on_use)  # where the masked forwards enter batched attention
    originals = [module.batched_attention for module in modules]
    for module in modules:
        module.batched_attention = contextlib.nullcontext
    try:
        yield
    finally:
        for module, original in zip(modules, originals):
            module.batched_attention = original


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(step: Callable[[], None], count: int, device: torch.device) -> float:
    times = []
    for _ in range(count):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(family: Family, round_seconds: float, repeats: int, device: torch.device, warmup: int = 2,
            compare_attention: bool = False) -> dict:
    """{variant: median ms}, steps per round and the load average before and after."""
    functions = steps_of(family, device)
    variants = ["plain", "eager", "fused"]
    if compare_attention and family.attention:
        variants.append("fused, attention per sample")
    for name in variants:
        for _ in range(warmup):
            functions[name]()
    steps = max(1, min(50, round(round_seconds * 1000 / median_ms(functions["plain"], 1, device))))
    for name in ("eager", "fused"):
        if not functions[f"{name} model"].batched:
            raise SystemExit(f"{family.label}: the {name} masked model fell back to the per-sample loop")
    load_before = os.getloadavg()[0]
    rounds = {name: [] for name in variants}
    for r in range(repeats):
        shift = r % len(variants)
        for name in variants[shift:] + variants[:shift]:  # rotate, so that no variant always follows another
            rounds[name].append(median_ms(functions[name], steps, device))
    result = {name: statistics.median(times) for name, times in rounds.items()}
    return result | {"load": (load_before, os.getloadavg()[0]), "fused_kept": functions["fused model"].fused,
                     "steps": steps}


def profile(family: Family, device: torch.device, steps: int = 5) -> None:
    """torch.profiler's table of the plain and of the fused step, `steps` steps each after warm-up."""
    functions = steps_of(family, device)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                          if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name in ("plain", "fused"):
        for _ in range(2):
            functions[name]()
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(steps):
                functions[name]()
                synchronize(device)
        print(f"\n{name} step of {family.label}, {steps} steps (load average {os.getloadavg()[0]:.1f}):\n")
        print(prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=60))


def row(key: str, family: Family, r: dict) -> str:
    plain = r["plain"]
    fused = f"{r['fused']:.1f} ({r['fused'] / plain:.2f}x)" + ("" if r["fused_kept"] else " [eager fallback]")
    if "fused, attention per sample" in r:
        per_sample = r["fused, attention per sample"]
        fused += f" / attention per sample: {per_sample:.1f} ({per_sample / plain:.2f}x)"
    return (f"| {family.label} | {family.batch_size} | {family.num_samples} | {plain:.1f} | "
            f"{r['eager']:.1f} ({r['eager'] / plain:.2f}x) | {fused} | {r['steps']} | "
            f"{r['load'][0]:.1f}-{r['load'][1]:.1f} |")


HEADER = ("| family | batch | K | plain ms | eager ms (ratio) | fused ms (ratio) | steps/round | load avg |\n"
          "|---|---|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--round-seconds", type=float, default=0.5, help="about how long a plain round takes")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--resnet-blocks", type=int, default=1, help="BasicBlocks per stage (18: ResNet-110)")
    parser.add_argument("--families", nargs="+", default=None, help="keys of the families to run (default: all)")
    parser.add_argument("--profile", default=None, help="print the profiler table of this family's fused step")
    parser.add_argument("--compare-attention", action="store_true",
                        help="a fourth variant, interleaved: the fused step with vmap's per-sample attention")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    kept = keep_freed_cpu_memory() if device.type == "cpu" else False
    table = families(args.resnet_blocks)
    if args.profile:
        profile(table[args.profile], device)
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"{name}, torch {torch.__version__}, {args.repeats} interleaved rounds of about {args.round_seconds} s "
          f"of plain steps, glibc-keeps-freed-memory={kept}\n")
    print(HEADER)
    for key in args.families or list(table):
        result = measure(table[key], args.round_seconds, args.repeats, device, compare_attention=args.compare_attention)
        print(row(key, table[key], result), flush=True)


if __name__ == "__main__":
    main()
