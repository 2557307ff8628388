"""Gumbel-sigmoid mask samples with a straight-through estimator (paper eq. 1-2, Appendix A).

The paper draws s = σ((l - log(log U1 / log U2)) / τ) from two uniforms. The difference of two
Gumbel(0, 1) variables is Logistic(0, 1), and logit(U) with one uniform U is Logistic(0, 1) too, so
s = σ((l + logit(U)) / τ) is the same distribution from one uniform per weight and sample. The hard
sample 1[s > 0.5] is then 1[U > σ(-l)], which needs σ(-l) once per step, not once per sample.

This file holds the eager path: K-stacks of masked weights from given uniforms, and those uniforms.
The element-wise work over K copies of the weights is the cost of mask training; the fused path
(models/masking/fused_sampling.py) runs the same formulas as compiled kernels with in-kernel noise.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

_CPU_NOISE_CHUNKS = 4  # fixed, so that the noise for a seed does not depend on the thread count


def soft_sample(logits: Tensor, uniform: Tensor, temperature: float) -> Tensor:
    """Gumbel-sigmoid sample s (eq. 1) from one uniform per element.

    logits: [*S]; uniform: [K, *S] in [0, 1) -> [K, *S] in [0, 1].
    """
    if temperature == 1.0:
        # σ(l + log u - log(1-u)) = u / (u + (1-u) e^{-l}); e^{-l} is computed once for all K.
        return uniform / (uniform + (1 - uniform) * torch.exp(-logits))
    noise = torch.log(uniform) - torch.log1p(-uniform)
    return torch.sigmoid((logits + noise) / temperature)


def _mask_forward(weight: Tensor, logits: Tensor, uniform: Tensor) -> Tensor:
    """weight, logits [*S], uniform [K, *S] -> hard-masked weights [K, *S]; P(keep) = σ(l)."""
    return torch.where(uniform > torch.sigmoid(-logits), weight, 0.0)


def logit_gradient(weight: Tensor, logits: Tensor, uniform: Tensor, grad_output: Tensor, temperature: float) -> Tensor:
    """Σ_k grad_k · w · s_k (1 - s_k) / τ: [*S]; d(w·s)/dl by the straight-through estimator."""
    soft = soft_sample(logits, uniform, temperature)
    return (grad_output * (soft - soft * soft)).sum(0) * (weight / temperature)


def weight_gradient(logits: Tensor, uniform: Tensor, grad_output: Tensor) -> Tensor:
    """Σ_k grad_k · b_k: [*S]."""
    return torch.where(uniform > torch.sigmoid(-logits), grad_output, 0.0).sum(0)


class _StraightThroughMaskedWeight(torch.autograd.Function):
    """w * b with b = [1[s > 0.5] - s]_stop + s, for K samples at once (eq. 2), given uniforms.

    Forward materialises one K-stack (the masked weights) and keeps the uniforms for backward,
    where the soft sample is recomputed instead of being stored.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, logits: Tensor, uniform: Tensor, temperature: float) -> Tensor:
        ctx.save_for_backward(weight.detach(), logits.detach(), uniform)
        ctx.temperature = temperature
        return _mask_forward(weight.detach(), logits.detach(), uniform)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        # grad_output is often a transposed view (a Linear's weight gradient); the kernels read it
        # in place rather than copying a K-stack to make it contiguous.
        weight, logits, uniform = ctx.saved_tensors
        grad_logits = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_logits = logit_gradient(weight, logits, uniform, grad_output, ctx.temperature)
        if ctx.needs_input_grad[0]:
            grad_weight = weight_gradient(logits, uniform, grad_output)
        return grad_weight, grad_logits, None, None


def masked_weight_samples(weight: Tensor, logits: Tensor, uniform: Tensor, temperature: float = 1.0) -> Tensor:
    """K hard-masked copies of a weight, differentiable in the logits by straight-through.

    weight, logits: [*S]; uniform: [K, *S] -> [K, *S] with entries w_i or 0.
    """
    return _StraightThroughMaskedWeight.apply(weight, logits, uniform, temperature)


def sample_uniforms(shapes: list[torch.Size], num_samples: int, device, generator=None) -> list[Tensor]:
    """One uniform in [0, 1) per weight and mask sample: [K, *S] for each shape S.

    On CPU the numbers come from NumPy's SFC64 generators, filled in parallel chunks (torch's
    CPU generator is single-threaded and was the largest single cost of a mask step); their seeds
    are drawn from torch's generator, so torch.manual_seed still makes runs repeatable.
    """
    device = torch.device(device)
    sizes = [num_samples * int(np.prod(shape)) for shape in shapes]
    if device.type != "cpu":
        flat = torch.rand(sum(sizes), device=device, generator=generator)
    else:
        flat = _cpu_uniforms(sum(sizes), generator)
    return [part.view(num_samples, *shape) for part, shape in zip(flat.split(sizes), shapes)]


def _cpu_uniforms(count: int, generator: torch.Generator | None) -> Tensor:
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    out = np.empty(count, dtype=np.float32)
    chunks = np.array_split(out, _CPU_NOISE_CHUNKS)
    streams = np.random.SeedSequence(seed).spawn(_CPU_NOISE_CHUNKS)

    def fill(i: int) -> None:
        np.random.Generator(np.random.SFC64(streams[i])).random(dtype=np.float32, out=chunks[i])

    list(_noise_pool().map(fill, range(_CPU_NOISE_CHUNKS)))
    return torch.from_numpy(out)


@functools.cache
def _noise_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="mask-noise")

