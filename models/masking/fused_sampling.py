"""The fused path's mask samples: torch.compile'd kernels that draw their noise in-kernel from a key.

One pass over the K-stack forward, one backward, no stored uniforms (the noise is drawn again from
its key, models/masking/counter_noise.py). On a CPU these kernels are compute-bound (the hash of the
noise, twice per element and sample), and the K-stacks they and the batched matrix products write
are large; see benchmarks/README.md for where a step's time goes. A pack draws the stacks of several
masks over one frozen weight in one kernel per parameter.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from models.masking.counter_noise import counter_bits, counter_uniform, hashed_bits, uniform_of
from models.masking.cpu_memory import keep_freed_cpu_memory
from models.masking.recomputed_stacks import RecomputedStacks
from models.masking.sampling import logit_gradient, soft_sample, weight_gradient


def _keyed_forward(weight: Tensor, logits: Tensor, key: Tensor, num_samples: int,
                   indices: Tensor | None = None) -> Tensor:
    """[K, *S] hard-masked weights for counters k·numel + i, i the row-major element index.

    indices: int32 [*S] holding 0 .. numel - 1, or None. On CPU a kernel that loads its element
    indices runs faster than one that computes them (inductor's C++ assembles a vector `arange`
    lane by lane, about as costly as one hash round). Either way the counters are the same.
    The keep test u > σ(-l) runs on the integers behind u: with u = m / 2^24, m an integer,
    u > t exactly when m > floor(t · 2^24) (a scaling by a power of two is exact), so each sample
    skips the conversion to float.
    """
    if indices is None or num_samples * weight.numel() > 2**31:
        bits = counter_bits(key, (num_samples, *weight.shape))
    else:
        first = torch.arange(num_samples, dtype=torch.int32, device=key.device) * weight.numel()
        bits = hashed_bits(first.view(-1, *[1] * weight.dim()) + indices, key)
    threshold = torch.floor(torch.sigmoid(-logits) * (1 << 24)).to(torch.int32)
    return torch.where(bits > threshold, weight, 0.0)


def _keyed_logit_gradient(weight, logits, key, grad_output, temperature):
    return logit_gradient(weight, logits, counter_uniform(key, grad_output.shape), grad_output, temperature)


def _keyed_weight_gradient(logits, key, grad_output):
    return weight_gradient(logits, counter_uniform(key, grad_output.shape), grad_output)


def _keyed_kernels():
    _raise_recompile_limit()
    return _compile(_keyed_forward, _keyed_logit_gradient, _keyed_weight_gradient)


def _raise_recompile_limit() -> None:
    # Each kernel is compiled once per tensor rank and index path (a handful of graphs, shapes being
    # dynamic), more than dynamo's default of 8 per function, past which it would run them eagerly.
    # Dynamo's settings are per thread (masks training in a pack, Tune's trainable thread, the
    # autograd engine's device threads run backward on a GPU), so the limit is raised in every thread
    # that calls a kernel.
    if torch._dynamo.config.recompile_limit < _RECOMPILE_LIMIT:
        torch._dynamo.config.recompile_limit = _RECOMPILE_LIMIT


_RECOMPILE_LIMIT = 32


@functools.cache
def _compile(*functions):
    return tuple(torch.compile(f, dynamic=True) for f in functions)


class _KeyedMaskedWeight(torch.autograd.Function):
    """As sampling.masked_weight_samples (straight-through, eq. 2), with the noise drawn inside compiled
    kernels from a key.

    Matrices are worked on in transposed layout: a Linear layer consumes W^T, so the gradient of a
    masked matrix arrives as a transposed view, which the kernels then read contiguously.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, logits: Tensor, key: Tensor, num_samples: int, temperature: float) -> Tensor:
        ctx.transposed = weight.dim() == 2
        weight, logits = _layout(weight.detach(), ctx.transposed), _layout(logits.detach(), ctx.transposed)
        ctx.save_for_backward(weight, logits, key)
        ctx.temperature = temperature
        indices = None
        if weight.device.type == "cpu":
            keep_freed_cpu_memory()
            indices = _element_indices(weight.shape, num_samples)
        return _unlayout(_keyed_kernels()[0](weight, logits, key, num_samples, indices), ctx.transposed)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        weight, logits, key = ctx.saved_tensors
        _, keyed_logit_gradient, keyed_weight_gradient = _keyed_kernels()
        grad_output = _layout(grad_output, ctx.transposed)
        grad_logits = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_logits = keyed_logit_gradient(weight, logits, key, grad_output, ctx.temperature)
            grad_logits = _unlayout(grad_logits, ctx.transposed)
        if ctx.needs_input_grad[0]:
            grad_weight = _unlayout(keyed_weight_gradient(logits, key, grad_output), ctx.transposed)
        return grad_weight, grad_logits, None, None, None


_cpu_indices = [torch.empty(0, dtype=torch.int32)]  # one cached tensor, grown to the largest masked tensor


def _element_indices(shape: torch.Size, num_samples: int) -> Tensor | None:
    """0 .. numel - 1 as int32 [*shape], a view of one cached CPU tensor, for _keyed_forward to load;
    None where the counters of K samples pass 2^31 (the kernel then computes 64-bit counters)."""
    count = shape.numel()
    if num_samples * count > 2**31:
        return None
    if _cpu_indices[0].numel() < count:
        _cpu_indices[0] = torch.arange(count, dtype=torch.int32)
    return _cpu_indices[0][:count].view(shape)


def _layout(x: Tensor, transposed: bool) -> Tensor:
    """Contiguous, with the last two dimensions swapped when `transposed`."""
    return (x.transpose(-1, -2) if transposed else x).contiguous()


def _unlayout(x: Tensor, transposed: bool) -> Tensor:
    return x.transpose(-1, -2) if transposed else x


def new_logits(weight: Tensor, value: float) -> Tensor:
    """Logits shaped like `weight`; matrices stored transposed, the layout these kernels use (a Linear
    layer consumes W^T, so its gradients arrive transposed)."""
    if weight.dim() == 2:
        return torch.full((weight.shape[1], weight.shape[0]), value, device=weight.device).t()
    return torch.full_like(weight, value, dtype=torch.float32)


def keyed_masked_weight_samples(weight: Tensor, logits: Tensor, key: Tensor, num_samples: int,
                                temperature: float = 1.0, recomputed: RecomputedStacks | None = None) -> Tensor:
    """K hard-masked copies of a weight with in-kernel noise from `key`: [K, *S].

    recomputed: where the stack is registered, so that operations that save it for their backward
    pass keep its recipe instead (see RecomputedStacks)."""
    stack = _KeyedMaskedWeight.apply(weight, logits, key, num_samples, temperature)
    if recomputed is not None:
        recomputed.register(stack, functools.partial(_keyed_stack, weight.detach(), logits.detach(), key, num_samples))
    return stack


class _SampleOfKeyedStack(torch.autograd.Function):
    """Sample k's masked weight [*S], for use inside vmap over the K samples (index batched [K]):
    its vmap rule draws the whole [K, *S] stack with keyed_masked_weight_samples when the vmapped code
    reaches it, so a model's stacks are drawn one layer at a time rather than all before the forward."""

    @staticmethod
    def forward(weight, logits, key, index, temperature, recomputed):
        raise RuntimeError("a sample of a keyed stack exists only under vmap over the mask samples")

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def vmap(info, in_dims, weight, logits, key, index, temperature, recomputed):
        if in_dims[:3] != (None, None, None) or in_dims[3] != 0:
            raise ValueError("a keyed stack's sample needs unbatched weight, logits and key and a batched index")
        return keyed_masked_weight_samples(weight, logits, key, info.batch_size, temperature, recomputed), 0


def keyed_masked_weight_sample(weight: Tensor, logits: Tensor, key: Tensor, index: Tensor, temperature: float = 1.0,
                               recomputed: RecomputedStacks | None = None) -> Tensor:
    """Inside vmap over K samples (index = arange(K), batched): sample k of
    keyed_masked_weight_samples(weight, logits, key, K), drawn when this is called: [*S] per sample."""
    return _SampleOfKeyedStack.apply(weight, logits, key, index, temperature, recomputed)


def _keyed_stack(weight: Tensor, logits: Tensor, key: Tensor, num_samples: int) -> Tensor:
    """The forward kernel's [K, *S] stack, laid out in memory exactly as _KeyedMaskedWeight.forward's."""
    transposed = weight.dim() == 2
    weight, logits = _layout(weight, transposed), _layout(logits, transposed)
    indices = _element_indices(weight.shape, num_samples) if weight.device.type == "cpu" else None
    return _unlayout(_keyed_kernels()[0](weight, logits, key, num_samples, indices), transposed)


# -- several masks over one weight in one kernel (a pack) -------------------------------------------
# Member m of a pack draws exactly the noise it draws alone: counters over its own (K, *S), hashed
# with its own key. The kernels only broadcast the key halves over a leading member dimension.
def _member_key_halves(keys: Tensor, weight_dim: int) -> Tensor:
    """keys [M, 2] -> [2, M, 1, 1, ...]: key[0], key[1] broadcast against [K, *S] counters."""
    return keys.t().reshape(2, keys.shape[0], *[1] * (weight_dim + 1))


def _pack_forward(weight: Tensor, logits: Tensor, keys: Tensor, num_samples: int, indices: Tensor | None) -> Tensor:
    """weight [*S], logits [M, *S], keys [M, 2] -> [M, K, *S]; member m's part is
    _keyed_forward(weight, logits[m], keys[m], K, indices)."""
    if indices is None:
        counters = torch.arange(num_samples * weight.numel(), dtype=torch.int32, device=keys.device)
        counters = counters.view(num_samples, *weight.shape)
    else:
        first = torch.arange(num_samples, dtype=torch.int32, device=keys.device) * weight.numel()
        counters = first.view(-1, *[1] * weight.dim()) + indices
    bits = hashed_bits(counters, _member_key_halves(keys, weight.dim()))
    threshold = torch.floor(torch.sigmoid(-logits) * (1 << 24)).to(torch.int32).unsqueeze(1)
    return torch.where(bits > threshold, weight, 0.0)


def _pack_logit_gradient(weight: Tensor, logits: Tensor, keys: Tensor, grad_output: Tensor,
                         temperature: float) -> Tensor:
    """grad_output [M, K, *S] -> [M, *S]; member m's part is _keyed_logit_gradient's for it."""
    counters = torch.arange(grad_output[0].numel(), dtype=torch.int32, device=keys.device).view(grad_output.shape[1:])
    uniform = uniform_of(hashed_bits(counters, _member_key_halves(keys, weight.dim())))
    soft = soft_sample(logits.unsqueeze(1), uniform, temperature)
    return (grad_output * (soft - soft * soft)).sum(1) * (weight / temperature)


class _KeyedMaskPack(torch.autograd.Function):
    """M masks' K samples each of one frozen weight, in one forward and one backward kernel."""

    @staticmethod
    def forward(ctx, weight: Tensor, logits: Tensor, keys: Tensor, num_samples: int, temperature: float) -> Tensor:
        ctx.transposed = weight.dim() == 2
        weight, logits = _layout(weight.detach(), ctx.transposed), _layout(logits.detach(), ctx.transposed)
        ctx.save_for_backward(weight, logits, keys)
        ctx.temperature, ctx.num_samples = temperature, num_samples
        indices = None
        if weight.device.type == "cpu":
            keep_freed_cpu_memory()
            indices = _element_indices(weight.shape, num_samples)
        _raise_recompile_limit()
        forward = _compile(_pack_forward, _pack_logit_gradient)[0]
        return _unlayout(forward(weight, logits, keys, num_samples, indices).flatten(0, 1), ctx.transposed)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        weight, logits, keys = ctx.saved_tensors
        if ctx.needs_input_grad[0]:
            raise RuntimeError("a pack of masks never trains the weights it masks")
        _raise_recompile_limit()
        grad_output = _layout(grad_output, ctx.transposed).unflatten(0, (keys.shape[0], ctx.num_samples))
        gradient = _compile(_pack_forward, _pack_logit_gradient)[1](weight, logits, keys, grad_output, ctx.temperature)
        return None, _unlayout(gradient, ctx.transposed), None, None, None


def fits_one_pack_kernel(weight: Tensor, num_samples: int) -> bool:
    """Whether K samples' counters of this weight stay below 2^31 (the pack kernels' int32 counters)."""
    return num_samples * weight.numel() <= 2**31


def keyed_masked_weight_pack(weight: Tensor, logits: Tensor, keys: Tensor, num_samples: int,
                             temperature: float = 1.0) -> Tensor:
    """M masks' K hard-masked copies of one frozen weight: [M·K, *S], rows m·K .. m·K + K - 1 being
    keyed_masked_weight_samples(weight, logits[m], keys[m], K) bit for bit.

    weight [*S] (no gradient); logits [M, *S]; keys int32 [M, 2]."""
    return _KeyedMaskPack.apply(weight, logits, keys, num_samples, temperature)

