"""Masked weight stacks drawn when the module that owns the parameter runs, not all before the forward.

With recomputation (MaskedModel(recompute=True)) a stack is drawn again in backward instead of being
kept; drawing it on use as well means that about one layer's [K, *S] stack exists at a time. A forward
pre-hook puts the sample in, a forward hook takes it out; outside its owner's forward the parameter
holds a placeholder on which any computation raises.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

from models.masking.attention import batched_attention
from models.masking.batching import buffer_copies


def run_drawn_on_use(model: nn.Module, weights: dict[str, Tensor], names: list[str], draw_sample, samples: Tensor,
                     sliced: list, options: dict):
    """The model vmapped over K mask samples: a tree of [K, ...] outputs.

    samples: [K] the sample numbers (arange(K)); sliced: the inputs, every tensor [K, ...].
    Parameter names[i] is draw_sample(i, number) ([*S] for the sample `number`), drawn when the module
    that owns it runs; the other parameters are taken from `weights`.
    """
    params = dict(model.named_parameters())
    index_of = {id(params[name]): i for i, name in enumerate(names)}
    shared = {n: w for n, w in weights.items() if id(params[n]) not in index_of}
    per_sample_buffers, shared_buffers = buffer_copies(model, samples.shape[0])

    def one_sample(number, buffers_k, *inputs_k):
        with parameters_drawn_on_use(model, index_of, lambda i: draw_sample(i, number)):
            return functional_call(model, {**shared, **shared_buffers, **buffers_k}, inputs_k, options, strict=False)

    in_dims = (0, 0, *tree_map(lambda x: 0 if torch.is_tensor(x) else None, sliced))
    with batched_attention():  # as in batching.run_vmapped
        return vmap(one_sample, in_dims=in_dims, randomness="different")(samples, per_sample_buffers, *sliced)


@contextlib.contextmanager
def parameters_drawn_on_use(model: nn.Module, index_of: dict[int, int], draw):
    """While inside: each module that owns a parameter p with id(p) in index_of sees draw(index_of[id(p)])
    in its place during its forward (and p again after it). A parameter owned by several modules (tied
    weights) is drawn once and shared; one whose module runs more than once (a recurrent cell) is
    kept from its second draw on."""
    owners = Counter(id(p) for m in model.modules() for p in m._parameters.values() if p is not None)
    shared: dict[int, Tensor] = {}
    drawn: set[int] = set()
    handles, placed = [], []
    for module in model.modules():
        owned = [(attr, p) for attr, p in module._parameters.items() if p is not None and id(p) in index_of]
        if not owned:
            continue
        for attr, p in owned:  # any use outside the owner's forward fails
            module._parameters[attr] = _OutsideItsModule(p)
            placed.append((module, attr, p))

        def put_in(mod, args, owned=owned):
            for attr, p in owned:
                value = shared.get(id(p))
                if value is None:
                    value = draw(index_of[id(p)])
                    if owners[id(p)] > 1 or id(p) in drawn:  # tied, or a module run again (a recurrent step)
                        shared[id(p)] = value
                    drawn.add(id(p))
                mod._parameters[attr] = value

        def take_out(mod, args, output, owned=owned):
            for attr, p in owned:
                mod._parameters[attr] = _OutsideItsModule(p)

        handles += [module.register_forward_pre_hook(put_in), module.register_forward_hook(take_out, always_call=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, attr, p in placed:
            module._parameters[attr] = p


class _OutsideItsModule(Tensor):
    """Stands for a masked parameter outside the forward of the module that owns it, while its stacks
    are drawn on use: shape, dtype and device can be read (as the parameter's), any computation raises
    (that code would otherwise compute with the parameter unmasked)."""

    @staticmethod
    def __new__(cls, parameter: Tensor):
        placeholder = Tensor._make_subclass(cls, torch.empty_like(parameter, device="meta"))
        placeholder.real_device = parameter.device
        return placeholder

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is Tensor.device.__get__:
            return args[0].real_device
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", str(func))
        raise RuntimeError(f"{name} used a masked parameter outside the forward of the module that owns it")


_METADATA = {Tensor.shape.__get__, Tensor.dtype.__get__, Tensor.ndim.__get__, Tensor.requires_grad.__get__,
             Tensor.layout.__get__, Tensor.size, Tensor.dim, Tensor.numel, Tensor.is_floating_point,
             Tensor.is_complex, Tensor.__len__, Tensor.element_size}
