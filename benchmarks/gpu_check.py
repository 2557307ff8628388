"""Everything a GPU machine should check, in one go (a few minutes on one GPU; torch only).

    python benchmarks/gpu_check.py [--device cuda] [--repeats 5] [--resnet-blocks 18] [--quick]
                                   [--families fnn ...] [--dry-run-on-cpu]

1. compiles the fused mask kernels (Triton) on the GPU and times it;
2. masks and gradients on the GPU against the CPU for the same keys: the kernels' noise is an
   integer hash (bit for bit the same everywhere), so the masks differ only where σ(-l)·2^24 rounds
   differently on the two devices (a logit on a rounding boundary); the logit gradients are sums in
   another order (float rounding). Both differences are printed, not assumed;
3. one masked training step on both devices from the same logits and keys (TF32 off), and batched
   attention against the per-sample calls on the GPU;
4. the family table of benchmarks/families.py (plain / eager / fused, interleaved);
5. benchmarks/packed_masks.py with M = 1, 4, 16 (small and medium FNN);
and prints one table of all of it at the end. Without a GPU it says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import families as family_table  # noqa: E402
from benchmarks import packed_masks  # noqa: E402
from models.fnn import build_fnn  # noqa: E402
from models.masking import MaskConfig, MaskedModel, make_optimizer, training_step  # noqa: E402
from models.masking.fused_fallback import fused_kernels_error  # noqa: E402
from models.masking.fused_sampling import keyed_masked_weight_samples  # noqa: E402

ROWS: list[tuple[str, str, str]] = []  # (section, item, result)


def record(section: str, item: str, result: str) -> None:
    ROWS.append((section, item, result))
    print(f"[{section}] {item}: {result}", flush=True)


def compile_kernels(device: torch.device) -> bool:
    start = time.perf_counter()
    error = fused_kernels_error(device)
    record("compile", f"fused kernels on {device}", "ok" if error is None else f"FAILED: {error}")
    record("compile", "seconds (forward + backward, matrix and vector)", f"{time.perf_counter() - start:.1f}")
    return error is None


def kernels_against_cpu(device: torch.device) -> None:
    generator = torch.Generator().manual_seed(0)
    for shape, num_samples in (((800, 800), 4), ((2000, 2000), 8), ((4000,), 4)):
        weight = torch.randn(shape, generator=generator)
        logits = torch.randn(shape, generator=generator) * 3
        if logits.dim() == 2:  # the layout MaskedModel keeps matrices' logits in
            logits = logits.t().contiguous().t()
        key = torch.tensor([123, -456], dtype=torch.int32)
        gradient = torch.randn(num_samples, *shape, generator=generator)
        results = {}
        for where in (torch.device("cpu"), device):
            leaf = logits.to(where).detach().requires_grad_()
            stack = keyed_masked_weight_samples(weight.to(where), leaf, key.to(where), num_samples)
            stack.backward(gradient.to(where))
            results[where.type] = (stack.detach().cpu(), leaf.grad.cpu())
        (cpu_stack, cpu_grad), (gpu_stack, gpu_grad) = results["cpu"], results[device.type]
        differing = int(((cpu_stack != 0) != (gpu_stack != 0)).sum())
        scale = cpu_grad.abs().max().item()
        record("same keys, CPU vs GPU", f"{list(shape)} K={num_samples}: masks differing",
               f"{differing} of {cpu_stack.numel()}")
        record("same keys, CPU vs GPU",
               f"{list(shape)} K={num_samples}: logit gradient max abs difference / max abs gradient",
               f"{(cpu_grad - gpu_grad).abs().max().item() / scale:.2e}")


def step_against_cpu(device: torch.device) -> None:
    """One fused mask-training step from the same logits and keys on both devices."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    network = build_fnn(42, (400, 400, 200), 20)
    x, y = torch.randn(128, 42), torch.randint(0, 20, (128,))
    logits = {}
    for where in (torch.device("cpu"), device):
        masked = MaskedModel(build_fnn(42, (400, 400, 200), 20).to(where), MaskConfig(num_samples=4), fused=True)
        masked.model.load_state_dict(network.state_dict())
        masked.noise_generator = torch.Generator().manual_seed(5)  # keys drawn on the CPU for both
        optimizer = make_optimizer(masked)
        xs, ys = x.to(where), y.to(where)
        for _ in range(3):
            training_step(masked, optimizer, lambda: torch.nn.functional.cross_entropy(masked(xs), ys))
        logits[where.type] = torch.cat([l.detach().cpu().flatten() for l in masked.logits])
    difference = (logits["cpu"] - logits[device.type]).abs().max().item()
    record("same keys, CPU vs GPU", "FNN 400,400,200: logits after 3 fused steps, max abs difference",
           f"{difference:.2e}")


def attention_on_device(device: torch.device) -> None:
    from torch.func import vmap

    from models.masking.attention import batched_attention

    q, k, v = (torch.randn(8, 32, 4, 40, 64, device=device, requires_grad=True) for _ in range(3))
    mask = torch.rand(8, 32, 1, 1, 40, device=device) > 0.2

    def attention(q, k, v, m):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, m)

    with batched_attention():
        batched = vmap(attention)(q, k, v, mask)
    reference = torch.stack([attention(q[i], k[i], v[i], mask[i]) for i in range(8)])
    grads = torch.autograd.grad(batched.square().sum(), (q, k, v))
    reference_grads = torch.autograd.grad(reference.square().sum(), (q, k, v))
    record("attention", "batched vs per-sample, output max abs difference",
           f"{(batched - reference).abs().max().item():.2e}")
    record("attention", "batched vs per-sample, gradient max abs difference",
           f"{max((a - b).abs().max().item() for a, b in zip(grads, reference_grads)):.2e}")


def families(device: torch.device, args) -> None:
    table = family_table.families(args.resnet_blocks)
    for key in args.families or (["fnn", "math-transformer"] if args.quick else list(table)):
        r = family_table.measure(table[key], args.round_seconds, args.repeats, device)
        fused = "" if r["fused_kept"] else " [eager fallback]"
        record("families", f"{table[key].label}, batch {table[key].batch_size}, K={table[key].num_samples}",
               f"plain {r['plain']:.2f} ms, eager {r['eager']:.2f} ms ({r['eager'] / r['plain']:.2f}x), "
               f"fused {r['fused']:.2f} ms ({r['fused'] / r['plain']:.2f}x){fused}")


def packs(device: torch.device, args) -> None:
    options = SimpleNamespace(steps=5, repeats=3, samples=4)
    for size in ("small", "medium"):
        for count in ((1, 4) if args.quick else (1, 4, 16)):
            alone, together = packed_masks.measure(size, count, options, device)
            record("packed masks", f"{size} FNN, M={count}",
                   f"alone {alone:.2f} ms/mask-step, packed {together:.2f} ({alone / together:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--round-seconds", type=float, default=0.3)
    parser.add_argument("--resnet-blocks", type=int, default=18, help="18: ResNet-110, the paper's")
    parser.add_argument("--quick", action="store_true", help="two families and M = 1, 4 only")
    parser.add_argument("--families", nargs="+", default=None, help="keys of benchmarks/families.py to run")
    parser.add_argument("--dry-run-on-cpu", action="store_true",
                        help="run every section with the CPU standing in for the GPU (checks the script itself)")
    args = parser.parse_args()
    if args.dry_run_on_cpu:
        args.device = "cpu"
    elif not torch.cuda.is_available():
        print("No CUDA device on this machine: nothing to check here (run this on a GPU machine).")
        return
    device = torch.device(args.device)
    started = time.perf_counter()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    record("machine", "device", f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    sections = [("compile", lambda: compile_kernels(device)), ("kernels", lambda: kernels_against_cpu(device)),
                ("step", lambda: step_against_cpu(device)), ("attention", lambda: attention_on_device(device)),
                ("families", lambda: families(device, args)), ("packs", lambda: packs(device, args))]
    for name, run in sections:
        section_start = time.perf_counter()
        try:
            run()
        except Exception as error:  # one failed section must not hide the others' results
            record(name, "FAILED", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        record(name, "section seconds", f"{time.perf_counter() - section_start:.1f}")
    record("machine", "total seconds", f"{time.perf_counter() - started:.1f}")
    print("\n| section | item | result |\n|---|---|---|")
    for section, item, result in ROWS:
        print(f"| {section} | {item} | {result} |")


if __name__ == "__main__":
    main()
