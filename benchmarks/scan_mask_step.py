"""Mask-training step vs plain weight-training step of the SCAN LSTM encoder-decoder.

    python benchmarks/scan_mask_step.py [--hidden 200] [--batch 256] [--repeats 5] [--threads 2]

Both variants run on the same fixed SCAN `simple` batch (teacher forced, the model in eval mode as
mask training runs it), interleaved (plain, masked, plain, masked, ...) so that a machine whose load
changes affects both alike; prints the median milliseconds per step and their ratio. The masked step
must stay on the multi-sample (vmapped) path; the script fails if it fell back to the per-sample loop.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import torch

from models.masking import MaskConfig, MaskedModel, ParameterFilter, make_optimizer, training_step
from models.lstm_seq2seq import build_lstm_seq2seq
from tasks.scan import ScanTask

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--fused", action="store_true", help="MaskedModel(fused=True)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task = ScanTask(data_dir=args.data_dir)
    batch = task.sample("simple", args.batch, torch.Generator().manual_seed(0))._replace(teacher_forcing=True)

    plain_model = build_lstm_seq2seq(task.dims["input_vocab"], task.dims["output_vocab"], hidden=args.hidden).eval()
    plain_optimizer = torch.optim.Adam(plain_model.parameters())
    masked = MaskedModel(build_lstm_seq2seq(task.dims["input_vocab"], task.dims["output_vocab"],
                                            hidden=args.hidden).eval(),
                         MaskConfig.from_beta(3e-5, args.batch, num_samples=4),
                         ParameterFilter(biases=False, embeddings=False), fused=args.fused)
    mask_optimizer = make_optimizer(masked)

    def plain_step():
        plain_optimizer.zero_grad(set_to_none=True)
        task.loss(plain_model, batch).backward()
        torch.nn.utils.clip_grad_norm_(plain_model.parameters(), 5.0)
        plain_optimizer.step()

    def masked_step():
        training_step(masked, mask_optimizer, lambda: task.loss(masked, batch), clip=5.0)

    plain_step(), masked_step()  # warm-up (and compilation for --fused)
    if not masked.batched:
        raise SystemExit("the masked LSTM fell back to the per-sample loop; the benchmark measures the vmapped path")
    times = {"plain": [], "masked": []}
    for _ in range(args.repeats):
        for name, step in (("plain", plain_step), ("masked", masked_step)):
            start = time.perf_counter()
            step()
            times[name].append(1000 * (time.perf_counter() - start))
    plain, mask = statistics.median(times["plain"]), statistics.median(times["masked"])
    print(f"| hidden | batch | target length | plain ms | masked ms (K=4{', fused' if args.fused else ''}) | ratio |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.hidden} | {args.batch} | {batch.target_out.shape[1]} | {plain:.0f} | {mask:.0f} | {mask / plain:.2f} |")


if __name__ == "__main__":
    main()
