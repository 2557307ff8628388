"""An independent per-sample reference for masked forwards: eq. 1-2 written out, the plain model
called once per slice with its masked weights, slices joined where the test says the batch is.
What the masking core computes batched, vmapped or fused is checked against these."""

import torch
from torch import Tensor, nn
from torch.func import functional_call


def masked_weight_samples_reference(weight: Tensor, logits: Tensor, uniform: Tensor,
                                    temperature: float = 1.0) -> Tensor:
    """w · b with b = [1[s > 0.5] - s]_stop + s and s = σ((l + logit(u)) / τ), with autograd (eq. 1-2
    from one uniform: the difference of two Gumbels is logistic, as is logit(u)).

    weight, logits: [*S]; uniform: [K, *S] (or [*S]) -> the same shape as uniform.
    """
    noise = torch.log(uniform) - torch.log1p(-uniform)
    soft = torch.sigmoid((logits + noise) / temperature)
    hard = (soft > 0.5).to(soft.dtype)
    return weight * ((hard - soft).detach() + soft)


def masked_weights(model: nn.Module, logits: dict[str, Tensor], uniforms: dict[str, Tensor], k: int,
                   temperature: float = 1.0) -> dict:
    """Mask sample k of every masked parameter (masked_weight_samples_reference with uniforms[name][k])."""
    params = dict(model.named_parameters())
    return {name: masked_weight_samples_reference(params[name].detach(), logit, uniforms[name][k], temperature)
            for name, logit in logits.items()}


def per_sample_reference(model: nn.Module, logits: dict[str, Tensor], uniforms: dict[str, Tensor], inputs: tuple,
                         num_samples: int, input_batch_dim: int = 0, output_batch_dims=0, options: dict | None = None,
                         temperature: float = 1.0):
    """Slice k of every input tensor through the model with mask sample k (keyword `options` passed to
    every call); outputs joined along output_batch_dims (one int for all output tensors, or a flat list
    in output order)."""
    outputs = []
    for k in range(num_samples):
        inputs_k = tuple(x.chunk(num_samples, input_batch_dim)[k] if torch.is_tensor(x) else x for x in inputs)
        buffers = {name: b.clone() for name, b in model.named_buffers()}  # the model's own must not change
        weights = masked_weights(model, logits, uniforms, k, temperature)
        outputs.append(functional_call(model, {**weights, **buffers}, inputs_k, options or {}))
    flat = [_flatten(o) for o in outputs]
    dims = output_batch_dims if isinstance(output_batch_dims, list) else [output_batch_dims] * len(flat[0])
    joined = [torch.cat([f[i] for f in flat], dims[i]) for i in range(len(flat[0]))]
    return joined[0] if torch.is_tensor(outputs[0]) else joined


def masked_forward_reference(masked, uniforms: list[Tensor], *inputs, **options):
    """What MaskedModel.forward_with_uniforms(uniforms, *inputs, **options) must give, for a model whose
    inputs and outputs have their batch first: the plain model called once per slice of the batch."""
    return per_sample_reference(masked.model, masked.logits_by_name(), dict(zip(masked.names, uniforms)), inputs,
                                masked.config.num_samples, options=options, temperature=masked.config.temperature)


def _flatten(output) -> list[Tensor]:
    if output is None:
        return []
    if torch.is_tensor(output):
        return [output]
    return [t for part in output for t in _flatten(part)]


def flat_outputs(output) -> list[Tensor]:
    """The tensors of a (nested tuple) output in order."""
    return _flatten(output)
