"""Gumbel-sigmoid mask samples with a straight-through estimator (paper eq. 1-2, Appendix A).

The paper draws s = σ((l - log(log U1 / log U2)) / τ) from two uniforms. The difference of two
Gumbel(0, 1) variables is Logistic(0, 1), and logit(U) with one uniform U is Logistic(0, 1) too, so
s = σ((l + logit(U)) / τ) is the same distribution from one uniform per weight and sample. The hard
sample 1[s > 0.5] is then 1[U > σ(-l)], which needs σ(-l) once per step, not once per sample.

The element-wise work over K copies of the weights is the cost of mask training. The fused path
(keyed_masked_weight_samples) runs it as torch.compile'd kernels that draw the noise in-kernel:
one pass over the K-stack forward, one backward, no stored uniforms. On a CPU these kernels are
compute-bound (the hash of the noise, twice per element and sample), and the K-stacks they and the
batched matrix products write are large; see benchmarks/README.md for where a step's time goes.
"""

from __future__ import annotations

import functools
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

from models.masking.cpu_memory import keep_freed_cpu_memory

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


def _logit_gradient(weight: Tensor, logits: Tensor, uniform: Tensor, grad_output: Tensor, temperature: float) -> Tensor:
    """Σ_k grad_k · w · s_k (1 - s_k) / τ: [*S]; d(w·s)/dl by the straight-through estimator."""
    soft = soft_sample(logits, uniform, temperature)
    return (grad_output * (soft - soft * soft)).sum(0) * (weight / temperature)


def _weight_gradient(logits: Tensor, uniform: Tensor, grad_output: Tensor) -> Tensor:
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
            grad_logits = _logit_gradient(weight, logits, uniform, grad_output, ctx.temperature)
        if ctx.needs_input_grad[0]:
            grad_weight = _weight_gradient(logits, uniform, grad_output)
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


# -- counter-based noise for the fused path ---------------------------------------------------------
# The uniform of element i is a pure function of (key, i): two rounds of Wellons' "lowbias32" integer
# hash, each after XOR with one half of the key. A compiled kernel then draws the noise where it uses
# it (32-bit integer ops vectorise on CPUs), and backward draws it again instead of storing a K-stack
# of uniforms.
_MIX1 = 0x7FEB352D
_MIX2 = 0x846CA68B - 2**32  # as signed int32 (torch's int32 arithmetic wraps)


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int32 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (32 - bits)) - 1)


def _hash32(x: Tensor) -> Tensor:
    x = x ^ _shift_right(x, 16)
    x = x * _MIX1
    x = x ^ _shift_right(x, 15)
    x = x * _MIX2
    return x ^ _shift_right(x, 16)


def counter_uniform(key: Tensor, shape: tuple[int, ...], start: int = 0) -> Tensor:
    """Uniforms in [0, 1) with 24 random bits; element i (row-major) from (key, start + i): [*shape].

    key: int32 tensor [2] (a tensor, so that compiled kernels do not specialise on its value).
    The counter c = start + i has any size: its low 32 bits go through the hash, and its high bits
    (c >> 32, zero below 2^32) perturb the second key half, so no stretch of noise ever repeats.
    Below 2^31 the counter is an int32 `arange` (what a kernel computes fastest).
    """
    return _uniform_of(counter_bits(key, shape, start))


def counter_bits(key: Tensor, shape: tuple[int, ...], start: int = 0) -> Tensor:
    """The 24 random bits behind counter_uniform, as int32 integers in [0, 2^24): [*shape]."""
    count = 1
    for size in shape:
        count *= size
    if start + count <= 2**31:
        return _hashed_bits(torch.arange(start, start + count, dtype=torch.int32, device=key.device), key).view(shape)
    index = torch.arange(start, start + count, dtype=torch.int64, device=key.device)
    low = (((index + 2**31) & 0xFFFFFFFF) - 2**31).to(torch.int32)  # c mod 2^32, as signed int32
    high = _hash32((index >> 32).to(torch.int32))  # 0 where c < 2^32 (the hash maps 0 to 0)
    return _shift_right(_hash32(_hash32(low ^ key[0]) ^ (key[1] ^ high)), 8).view(shape)


def _hashed_bits(counter: Tensor, key: Tensor) -> Tensor:
    """int32 counters below 2^31 -> their 24 random bits (the top bits of the hash): same shape."""
    return _shift_right(_hash32(_hash32(counter ^ key[0]) ^ key[1]), 8)


def _uniform_of(bits: Tensor) -> Tensor:
    return bits.to(torch.float32) * (1.0 / (1 << 24))


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
        bits = _hashed_bits(first.view(-1, *[1] * weight.dim()) + indices, key)
    threshold = torch.floor(torch.sigmoid(-logits) * (1 << 24)).to(torch.int32)
    return torch.where(bits > threshold, weight, 0.0)


def _keyed_logit_gradient(weight, logits, key, grad_output, temperature):
    return _logit_gradient(weight, logits, counter_uniform(key, grad_output.shape), grad_output, temperature)


def _keyed_weight_gradient(logits, key, grad_output):
    return _weight_gradient(logits, counter_uniform(key, grad_output.shape), grad_output)


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
    bits = _hashed_bits(counters, _member_key_halves(keys, weight.dim()))
    threshold = torch.floor(torch.sigmoid(-logits) * (1 << 24)).to(torch.int32).unsqueeze(1)
    return torch.where(bits > threshold, weight, 0.0)


def _pack_logit_gradient(weight: Tensor, logits: Tensor, keys: Tensor, grad_output: Tensor,
                         temperature: float) -> Tensor:
    """grad_output [M, K, *S] -> [M, *S]; member m's part is _keyed_logit_gradient's for it."""
    counters = torch.arange(grad_output[0].numel(), dtype=torch.int32, device=keys.device).view(grad_output.shape[1:])
    uniform = _uniform_of(_hashed_bits(counters, _member_key_halves(keys, weight.dim())))
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


class _KeyedMaskedWeight(torch.autograd.Function):
    """As _StraightThroughMaskedWeight, with the noise drawn inside compiled kernels from a key.

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
        _, logit_gradient, weight_gradient = _keyed_kernels()
        grad_output = _layout(grad_output, ctx.transposed)
        grad_logits = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_logits = logit_gradient(weight, logits, key, grad_output, ctx.temperature)
            grad_logits = _unlayout(grad_logits, ctx.transposed)
        if ctx.needs_input_grad[0]:
            grad_weight = _unlayout(weight_gradient(logits, key, grad_output), ctx.transposed)
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


def keyed_masked_weight_samples(weight: Tensor, logits: Tensor, key: Tensor, num_samples: int,
                                temperature: float = 1.0, recomputed: "RecomputedStacks | None" = None) -> Tensor:
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
                               recomputed: "RecomputedStacks | None" = None) -> Tensor:
    """Inside vmap over K samples (index = arange(K), batched): sample k of
    keyed_masked_weight_samples(weight, logits, key, K), drawn when this is called: [*S] per sample."""
    return _SampleOfKeyedStack.apply(weight, logits, key, index, temperature, recomputed)


def _keyed_stack(weight: Tensor, logits: Tensor, key: Tensor, num_samples: int) -> Tensor:
    """The forward kernel's [K, *S] stack, laid out in memory exactly as _KeyedMaskedWeight.forward's."""
    transposed = weight.dim() == 2
    weight, logits = _layout(weight, transposed), _layout(logits, transposed)
    indices = _element_indices(weight.shape, num_samples) if weight.device.type == "cpu" else None
    return _unlayout(_keyed_kernels()[0](weight, logits, key, num_samples, indices), transposed)


class RecomputedStacks:
    """Masked weight stacks that are drawn again in the backward pass instead of being kept.

    A layer's backward pass needs the [K, *S] masked weights it multiplied with (for the gradient of
    its input), so autograd normally keeps every layer's stack from the forward pass to the backward:
    K times the masked weights' bytes. Inside `saving()`, a tensor that an operation saves for backward
    and that lives in a registered stack's memory (the stack or a view of it) is kept as a recipe:
    the frozen weight, the logits and the noise key, from which the forward kernel draws the same
    stack bit for bit when backward unpacks it (one extra forward kernel per masked weight and step).
    The logits must not change between forward and backward (an optimizer steps after backward).
    A saved tensor that is a copy of a stack (not a view) is kept as it is.
    """

    def __init__(self):
        self._recipes: dict[int, tuple[weakref.ref, _Recipe]] = {}

    def register(self, stack: Tensor, draw) -> None:
        storage = stack.untyped_storage()
        # The weak reference tells a live stack from memory that a freed one left to a new tensor.
        self._recipes[storage.data_ptr()] = (weakref.ref(storage), _Recipe(draw))

    def saving(self):
        """Context for the forward pass of the registered stacks; registrations end with it."""
        return _SavingContext(self)

    def _pack(self, tensor: Tensor):
        if not self._recipes or not isinstance(tensor, Tensor) or tensor.layout != torch.strided:
            return tensor
        address = tensor.untyped_storage().data_ptr()
        storage, recipe = self._recipes.get(address, (None, None))
        if recipe is None or storage() is None:
            self._recipes.pop(address, None)
            return tensor
        recipe.pending += 1
        return recipe, tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset()

    @staticmethod
    def _unpack(packed):
        if isinstance(packed, Tensor):
            return packed
        recipe, shape, stride, offset = packed
        return recipe.stack().as_strided(shape, stride, offset)


class _Recipe:
    """How to draw one stack again; the drawn stack is kept until every saved view of it was unpacked."""

    def __init__(self, draw):
        self.draw, self.pending, self._stack = draw, 0, None

    def stack(self) -> Tensor:
        stack = self._stack if self._stack is not None else self.draw()
        self.pending -= 1
        self._stack = stack if self.pending > 0 else None
        return stack


class _SavingContext:
    def __init__(self, owner: RecomputedStacks):
        self.owner = owner
        self.hooks = torch.autograd.graph.saved_tensors_hooks(owner._pack, owner._unpack)

    def __enter__(self):
        self.hooks.__enter__()
        return self.owner

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        # Stacks die with the forward pass; their memory may then hold other tensors.
        self.owner._recipes.clear()
        return False


def keyed_uniforms(key: Tensor, weight_shape: torch.Size, num_samples: int) -> Tensor:
    """The uniforms keyed_masked_weight_samples draws for `key`, materialised (for tests): [K, *S]."""
    if len(weight_shape) == 2:
        return counter_uniform(key, (num_samples, weight_shape[1], weight_shape[0])).transpose(-1, -2)
    return counter_uniform(key, (num_samples, *weight_shape))


def draw_keys(count: int, device, generator: torch.Generator | None = None) -> list[Tensor]:
    """Fresh int32 [2] keys from torch's CPU generator (so torch.manual_seed repeats a run), moved
    to `device` in one copy."""
    keys = torch.randint(-(2**31), 2**31 - 1, (count, 2), dtype=torch.int32, generator=generator)
    return list(keys.to(device).unbind(0))
