"""An independent per-sample reference for masked forwards: eq. 1-2 written out, the plain model
called once per slice with its masked weights, slices joined where the test says the batch is."""

import torch
from torch import Tensor, nn
from torch.func import functional_call


def masked_weights(model: nn.Module, logits: dict[str, Tensor], uniforms: dict[str, Tensor], k: int) -> dict:
    """w · b with b = [1[s > 0.5] - s]_stop + s and s = σ(l + logit(u_k)) (eq. 1 with τ = 1, from one
    uniform: the difference of two Gumbels is logistic, as is logit(u))."""
    params = dict(model.named_parameters())
    weights = {}
    for name, logit in logits.items():
        u = uniforms[name][k]
        soft = torch.sigmoid(logit + torch.log(u) - torch.log1p(-u))
        hard = (soft > 0.5).to(soft.dtype)
        weights[name] = params[name].detach() * ((hard - soft).detach() + soft)
    return weights


def per_sample_reference(model: nn.Module, logits: dict[str, Tensor], uniforms: dict[str, Tensor], inputs: tuple,
                         num_samples: int, input_batch_dim: int = 0, output_batch_dims=0):
    """Slice k of every input tensor through the model with mask sample k; outputs joined along
    output_batch_dims (one int for all output tensors, or a flat list in output order)."""
    outputs = []
    for k in range(num_samples):
        inputs_k = tuple(x.chunk(num_samples, input_batch_dim)[k] if torch.is_tensor(x) else x for x in inputs)
        buffers = {name: b.clone() for name, b in model.named_buffers()}  # the model's own must not change
        outputs.append(functional_call(model, {**masked_weights(model, logits, uniforms, k), **buffers}, inputs_k))
    flat = [_flatten(o) for o in outputs]
    dims = output_batch_dims if isinstance(output_batch_dims, list) else [output_batch_dims] * len(flat[0])
    joined = [torch.cat([f[i] for f in flat], dims[i]) for i in range(len(flat[0]))]
    return joined[0] if torch.is_tensor(outputs[0]) else joined


def _flatten(output) -> list[Tensor]:
    if output is None:
        return []
    if torch.is_tensor(output):
        return [output]
    return [t for part in output for t in _flatten(part)]


def flat_outputs(output) -> list[Tensor]:
    """The tensors of a (nested tuple) output in order."""
    return _flatten(output)
