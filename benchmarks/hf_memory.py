"""Memory and time of a mask-training step against a plain training step of a GPT-2-small-sized model.

    python benchmarks/hf_memory.py [--threads 1] [--batch 4] [--length 64] [--steps 3]
                                   [--cases plain masked masked-kept] [--layers 12]

The model is transformers' GPT2LMHeadModel built from the GPT-2 small config (12 layers, 768 wide,
12 heads, 50,257 tokens: 124M parameters; random weights, nothing downloaded), wrapped as the
`huggingface` model family wraps it (models/huggingface.py), on random token ids with next-token
loss. Cases, each in its own Python process so that its peak resident memory is its own:
  plain        Adam on all weights, gradient clipping 1 (a plain training step)
  masked       MaskedModel, K = 4, fused kernels, masked weight stacks recomputed in backward (the
               default), biases unmasked as in the pipeline; Adam on the logits, clipping 1
  masked-kept  the same with recompute=False: every stack drawn before the forward pass and kept
               by autograd until backward
  masked-blocks  as masked, the embeddings unmasked (GPT-2 ties its output layer to the token
               embedding, so this masks the 12 blocks and the final LayerNorm: 85M weights)

Memory: the process's peak resident set size (getrusage ru_maxrss, after the steps) and its growth
over the resident size once the model is built (weights in memory, nothing else): what the training
step itself adds. Time: the median of --steps steps after one warm-up step (which compiles the
fused kernels). Prints a Markdown table with the ratios to the plain step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

GPT2_SMALL = "n_layer={layers},n_embd=768,n_head=12,n_positions=1024"
VOCAB = 50257


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run_case(case: str, args) -> dict:
    import torch
    from torch import nn

    from models.huggingface import huggingface
    from models.masking import MaskConfig, MaskedModel, ParameterFilter, make_optimizer, training_step

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = huggingface(VOCAB, 0, 0, args.length, config="gpt2", settings=GPT2_SMALL.format(layers=args.layers))
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (args.batch, args.length), generator=generator)
    attention = torch.ones_like(ids)

    def loss(net):
        logits = net(ids, attention)
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())

    parameters = sum(p.numel() for p in model.parameters())
    built = resident_mb()
    if case == "plain":
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step():
            optimizer.zero_grad(set_to_none=True)
            loss(model).backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    else:
        masked = MaskedModel(model.eval(), MaskConfig(num_samples=4),
                             ParameterFilter(biases=False, embeddings=case != "masked-blocks"), fused=True,
                             recompute=case != "masked-kept")
        optimizer = make_optimizer(masked)

        def step():
            training_step(masked, optimizer, lambda: loss(masked))

    times = []
    for i in range(args.steps + 1):
        start = time.perf_counter()
        step()
        if i:  # the first step compiles the fused kernels
            times.append(time.perf_counter() - start)
    result = {"case": case, "parameters": parameters, "built_mb": built, "peak_mb": peak_mb(),
              "step_s": statistics.median(times), "times": times}
    if case != "plain":
        result |= {"batched": masked.batched, "masked_weights": sum(logit.numel() for logit in masked.logits)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--cases", nargs="+", default=["plain", "masked", "masked-kept", "masked-blocks"])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args)))
        return
    results = []
    for case in args.cases:
        command = [sys.executable, __file__, "--child", case, *sys.argv[1:]]
        output = subprocess.run(command, check=True, capture_output=True, text=True,
                                env=os.environ | {"OMP_NUM_THREADS": str(args.threads)}).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(f"# {case}: {results[-1]}", file=sys.stderr)
    plain = next((r for r in results if r["case"] == "plain"), results[0])
    print(f"GPT-2 small config, {args.layers} layers, {results[0]['parameters'] / 1e6:.1f}M parameters; batch "
          f"{args.batch} x {args.length} tokens; {args.threads} thread(s); median of {args.steps} steps\n")
    print("| case | masked weights | peak RSS MB (ratio) | growth over built model MB (ratio) | step s (ratio) | batched |")
    print("|---|---|---|---|---|---|")
    for r in results:
        growth, plain_growth = r["peak_mb"] - r["built_mb"], plain["peak_mb"] - plain["built_mb"]
        masked_weights = f"{r['masked_weights'] / 1e6:.1f}M" if "masked_weights" in r else ""
        print(f"| {r['case']} | {masked_weights} | {r['peak_mb']:,.0f} ({r['peak_mb'] / plain['peak_mb']:.2f}x) | {growth:,.0f} "
              f"({growth / plain_growth:.2f}x) | {r['step_s']:.2f} ({r['step_s'] / plain['step_s']:.2f}x) | "
              f"{r.get('batched', '')} |")


if __name__ == "__main__":
    main()
