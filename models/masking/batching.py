"""How K mask samples share one forward pass: the batch split into K slices, the model run once per
slice (vmapped or in a loop), and the outputs joined back along each output's own batch dimension.

MaskedModel decides which way to run; this module holds the pieces that know nothing of masks.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Hashable

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.utils._pytree import keystr, tree_flatten, tree_flatten_with_path, tree_map, tree_unflatten

from models.masking.attention import batched_attention

# -- inputs ---------------------------------------------------------------------------------------


def split_inputs(inputs: tuple, batch_dims: int | tuple[int, ...], num_samples: int) -> list:
    """Every tensor of positional input i (nested ones too) split along batch_dims[i] into K slices:
    [..., B, ...] -> [K, ..., B/K, ...] (the slice keeps the batch where the model expects it).
    Anything else is passed to every sample unchanged."""
    if isinstance(batch_dims, int):
        batch_dims = (batch_dims,) * len(inputs)
    if len(batch_dims) != len(inputs):
        raise ValueError(f"batch_dims has {len(batch_dims)} entries for {len(inputs)} positional inputs")
    return [tree_map(lambda x: _split_batch(x, num_samples, dim) if torch.is_tensor(x) else x, value)
            for value, dim in zip(inputs, batch_dims)]


def _split_batch(x: Tensor, num_samples: int, dim: int) -> Tensor:
    """[..., B, ...] with B at `dim` -> [K, ..., B/K, ...]."""
    if x.dim() <= dim or x.shape[dim] % num_samples:
        size = f"{x.shape[dim]}" if x.dim() > dim else f"of an input with {x.dim()} dimensions"
        raise ValueError(
            f"batch size {size} (dimension {dim}) is not divisible by the number of mask samples K={num_samples}; "
            f"use a batch size that is a multiple of {num_samples}"
        )
    return x.unflatten(dim, (num_samples, x.shape[dim] // num_samples)).movedim(dim, 0)


def sample(tree, k: int):
    """Sample k's part of a tree of K-stacks ([K, ...] -> [...]); other leaves unchanged."""
    return tree_map(lambda x: x[k] if torch.is_tensor(x) else x, tree)


def stack_samples(outputs: list):
    """K output trees of the same structure -> one tree of [K, ...] stacks."""
    return tree_map(lambda *parts: torch.stack(parts) if torch.is_tensor(parts[0]) else parts[0], *outputs)


# -- buffers --------------------------------------------------------------------------------------


def buffer_copies(model: nn.Module, num_samples: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Copies of the model's buffers for one masked forward, so that its own never change.

    Returns (per_sample, shared). A module in training mode may write its buffers (BatchNorm's
    running statistics), so each sample gets its own copy of those, [K, *S]: vmap can write a
    batched buffer in place, not a shared one. All other buffers get one copy for every sample.
    """
    written = {f"{prefix}.{name}" if prefix else name
               for prefix, module in model.named_modules() if module.training
               for name, _ in module.named_buffers(recurse=False)}
    per_sample, shared = {}, {}
    for name, buffer in model.named_buffers():
        if name in written:
            per_sample[name] = buffer.detach().repeat(num_samples, *([1] * buffer.dim()))
        else:
            shared[name] = buffer.detach().clone()
    return per_sample, shared


# -- running the samples --------------------------------------------------------------------------


def run_vmapped(model: nn.Module, per_sample: dict, shared: dict, sliced: list, options: dict):
    """The model vmapped over the leading dimension N of `per_sample` ([N, *S] tensors by name, e.g.
    masked weights) and of every tensor in `sliced` ([N, ...] inputs): a tree of [N, ...] outputs.
    `shared` holds the tensors every sample uses. N is K, or M·K for a pack of M masks."""
    num_samples = next(iter(per_sample.values())).shape[0]
    per_sample_buffers, shared_buffers = buffer_copies(model, num_samples)

    def one_sample(per_sample_k, buffers_k, *inputs_k):
        tensors = {**shared, **shared_buffers, **buffers_k, **per_sample_k}
        return functional_call(model, tensors, inputs_k, options, strict=False)

    in_dims = (0, 0, *tree_map(lambda x: 0 if torch.is_tensor(x) else None, sliced))
    with batched_attention():  # attention as one call over the N samples, not N (models/masking/attention.py)
        return vmap(one_sample, in_dims=in_dims, randomness="different")(per_sample, per_sample_buffers, *sliced)


def run_looped(model: nn.Module, per_sample: dict, shared: dict, sliced: list, options: dict, num_samples: int):
    """K calls of the model, one per sample, on what run_vmapped takes: a tree of [K, ...] outputs."""
    per_sample_buffers, shared_buffers = buffer_copies(model, num_samples)
    outputs = []
    for k in range(num_samples):
        tensors = {**shared, **shared_buffers, **sample(per_sample_buffers, k), **sample(per_sample, k)}
        outputs.append(functional_call(model, tensors, tuple(sample(sliced, k)), options, strict=False))
    return stack_samples(outputs)


# -- outputs --------------------------------------------------------------------------------------


def join_samples(outputs, batch_dims: list[int | None]):
    """A tree of [K, ...] per-sample outputs -> the model's own layout: leaf i's K slices joined
    along its batch dimension batch_dims[i] (sample k's rows come k-th, as the inputs were split).
    batch_dims[i] is None for a leaf that is not a tensor."""
    leaves, spec = tree_flatten(outputs)
    joined = [x if dim is None else x.movedim(0, dim).flatten(dim, dim + 1) for x, dim in zip(leaves, batch_dims)]
    return tree_unflatten(joined, spec)


def output_batch_dims(whole_batch_shapes: list, per_sample_outputs, num_samples: int) -> list[int | None]:
    """The batch dimension of each output leaf: the one dimension in which the model's output for
    the whole batch (B) is K times its output for one slice (B/K), all others being equal.

    Shapes decide it, not sizes alone: hidden states of nn.GRU ([layers, B, H]) or time-first
    outputs ([T, B, H]) carry the batch elsewhere than dim 0, and a slice's B/K may equal a size
    that has nothing to do with the batch.
    """
    dims = []
    for (path, x), whole in zip(tree_flatten_with_path(per_sample_outputs)[0], whole_batch_shapes):
        if not torch.is_tensor(x):
            dims.append(None)
            continue
        one_slice = tuple(x.shape[1:])
        differing = [d for d, (a, b) in enumerate(zip(whole, one_slice)) if a != b]
        joinable = len(whole) == len(one_slice) and len(differing) == 1
        if not joinable or whole[differing[0]] != num_samples * one_slice[differing[0]]:
            raise ValueError(
                f"output{keystr(path)} has shape {list(whole)} for the whole batch and {list(one_slice)} for one of "
                f"the K={num_samples} slices: a masked model's outputs must hold the batch along one dimension, "
                f"so that the K mask samples' slices can be joined"
            )
        dims.append(differing[0])
    return dims


def whole_batch_output_shapes(model: nn.Module, inputs: tuple, options: dict) -> list:
    """Output shapes of the plain model for the whole batch, one per output leaf (None if not a tensor).

    Computed on the meta device (shapes only: no arithmetic, no side effect); a model that meta
    tensors cannot run (data-dependent control flow, tensors made on a fixed device) runs for real,
    without gradients, on copies of its buffers, with the random state put back.
    """
    def to_meta(x):
        return x.detach().to("meta") if torch.is_tensor(x) else x

    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    try:
        with torch.no_grad():
            outputs = functional_call(model, tree_map(to_meta, tensors), tree_map(to_meta, inputs),
                                      tree_map(to_meta, options), strict=False)
    except Exception:  # any failure on meta only means "cannot tell on meta"; the real run decides
        device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
        restore = random_state_snapshot(device)
        buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
        with torch.no_grad():
            outputs = functional_call(model, buffers, inputs, options, strict=False)
        restore()
    return [tuple(x.shape) if torch.is_tensor(x) else None for x in tree_flatten(outputs)[0]]


def shape_signature(inputs: tuple, options: dict, training: bool) -> Hashable | None:
    """What an output's shape can depend on: input structure, shapes, dtypes, devices and plain
    values, and the mode. None where some input is not hashable (then nothing is cached)."""
    leaves, spec = tree_flatten((inputs, options))
    key = (training, spec, tuple((tuple(x.shape), x.dtype, x.device) if torch.is_tensor(x) else x for x in leaves))
    try:
        hash(key)
    except TypeError:
        return None
    return key


# -- autograd and global state ----------------------------------------------------------------------


_fast_path_lock = threading.Lock()
_fast_path_users = [0, True]  # threads inside attention_fast_path_disabled, the setting before the first


@contextlib.contextmanager
def attention_fast_path_disabled():
    """nn.MultiheadAttention, nn.TransformerEncoderLayer and nn.TransformerEncoder take a fused
    inference kernel without a derivative when they are in eval mode and no argument requires grad.
    Under vmap every weight looks as if it did not (vmap's wrappers hide requires_grad), so a masked
    model in eval mode would take that path and fail in backward. Turning the fast path off keeps
    eval semantics (no dropout) on the differentiable path. The switch is process-wide: it is put
    back when the last thread using it (masks training in a pack) leaves."""
    with _fast_path_lock:
        if _fast_path_users[0] == 0:
            _fast_path_users[1] = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
        _fast_path_users[0] += 1
    try:
        yield
    finally:
        with _fast_path_lock:
            _fast_path_users[0] -= 1
            if _fast_path_users[0] == 0:
                torch.backends.mha.set_fastpath_enabled(_fast_path_users[1])


def non_differentiable_operation(outputs) -> str | None:
    """A description of an operation without a derivative in the autograd graph behind `outputs`
    (backward through it would fail), or None. Such a node is what any inference fast path that
    keys on requires_grad leaves under vmap."""
    stack = [x.grad_fn for x in tree_flatten(outputs)[0] if torch.is_tensor(x) and x.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node.name() == "torch::autograd::NotImplemented":
            return "an operation without a derivative (an inference fast path?) in the autograd graph"
        stack.extend(parent for parent, _ in node.next_functions)
    return None


def any_requires_grad(outputs) -> bool:
    return any(torch.is_tensor(x) and x.requires_grad for x in tree_flatten(outputs)[0])


def random_state_snapshot(device: torch.device) -> Callable[[], None]:
    """A function that puts torch's random state (CPU, and `device`'s if it is a GPU) back to now."""
    cpu_state = torch.get_rng_state()
    device_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore() -> None:
        torch.set_rng_state(cpu_state)
        if device_state is not None:
            torch.cuda.set_rng_state(device_state, device)

    return restore
