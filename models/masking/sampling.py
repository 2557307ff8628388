"""Gumbel-sigmoid mask samples with a straight-through estimator (paper eq. 1-2, Appendix A).

The paper draws s = σ((l - log(log U1 / log U2)) / τ) from two uniforms. The difference of two
Gumbel(0, 1) variables is Logistic(0, 1), and logit(U) with one uniform U is Logistic(0, 1) too, so
s = σ((l + logit(U)) / τ) is the same distribution from one uniform per weight and sample. The hard
sample 1[s > 0.5] is then 1[U > σ(-l)], which needs σ(-l) once per step, not once per sample.
"""

from __future__ import annotations

import torch
from torch import Tensor


def soft_sample(logits: Tensor, uniform: Tensor, temperature: float) -> Tensor:
    """Gumbel-sigmoid sample s (eq. 1) from one uniform per element.

    logits: [*S]; uniform: [K, *S] in [0, 1) -> [K, *S] in [0, 1].
    """
    if temperature == 1.0:
        # σ(l + log u - log(1-u)) = u / (u + (1-u) e^{-l}); e^{-l} is computed once for all K.
        return uniform / (uniform + (1 - uniform) * torch.exp(-logits))
    noise = torch.log(uniform) - torch.log1p(-uniform)
    return torch.sigmoid((logits + noise) / temperature)


class _StraightThroughMaskedWeight(torch.autograd.Function):
    """w * b with b = [1[s > 0.5] - s]_stop + s, for K samples at once (eq. 2).

    Forward materialises one K-stack (the masked weights) and keeps the uniforms for backward,
    where the soft sample is recomputed instead of being stored.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, logits: Tensor, uniform: Tensor, temperature: float) -> Tensor:
        keep = uniform > torch.sigmoid(-logits)  # [K, *S], P(keep) = σ(l)
        ctx.save_for_backward(weight, logits, uniform)
        ctx.temperature = temperature
        return weight * keep

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        weight, logits, uniform = ctx.saved_tensors
        grad_weight = grad_logits = None
        if ctx.needs_input_grad[1]:
            soft = soft_sample(logits, uniform, ctx.temperature)
            # d(w * s)/dl = w * s (1 - s) / τ, summed over the K samples.
            grad_logits = (grad_output * (soft - soft * soft)).sum(0) * (weight / ctx.temperature)
        if ctx.needs_input_grad[0]:
            keep = uniform > torch.sigmoid(-logits)
            grad_weight = (grad_output * keep).sum(0)
        return grad_weight, grad_logits, None, None


def masked_weight_samples(weight: Tensor, logits: Tensor, uniform: Tensor, temperature: float = 1.0) -> Tensor:
    """K hard-masked copies of a weight, differentiable in the logits by straight-through.

    weight, logits: [*S]; uniform: [K, *S] -> [K, *S] with entries w_i or 0.
    """
    return _StraightThroughMaskedWeight.apply(weight, logits, uniform, temperature)


def masked_weight_samples_reference(
    weight: Tensor, logits: Tensor, uniform: Tensor, temperature: float = 1.0
) -> Tensor:
    """The same as masked_weight_samples, written out with autograd as in eq. 1-2 (for tests).

    weight, logits: [*S]; uniform: [K, *S] -> [K, *S].
    """
    noise = torch.log(uniform) - torch.log1p(-uniform)
    soft = torch.sigmoid((logits + noise) / temperature)
    hard = (soft > 0.5).to(soft.dtype)
    return weight * ((hard - soft).detach() + soft)


def sample_uniforms(shapes: list[torch.Size], num_samples: int, device, generator=None) -> list[Tensor]:
    """One uniform per weight and mask sample: [K, *S] for each shape S."""
    return [torch.rand((num_samples, *shape), device=device, generator=generator) for shape in shapes]
