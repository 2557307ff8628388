"""Attention as one call over all mask samples under vmap.

`F.scaled_dot_product_attention` (what nn.MultiheadAttention, nn.Transformer* and most hand-written
attention call) has no vmap batching rule for its fused CPU kernel: under vmap PyTorch runs it
once per mask sample ("There is a performance drop because we have not yet implemented the
batching rule for aten::_scaled_dot_product_flash_attention_for_cpu"), K calls (M·K in a pack)
where one would do; on a GPU each is a kernel launch. Attention has no weights of its own, so the
K samples' attention is the same operation on a K times larger batch: inside `batched_attention()`
every call of scaled_dot_product_attention on vmapped tensors folds the sample dimension into the
batch dimension, runs one call of the op (whichever kernel PyTorch picks for that device, with
its own backward) and unfolds the result. Each sample's output is what it gets alone; dropout
draws independent noise per sample, as `vmap(randomness="different")` does.
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F
from torch import Tensor

_is_batched = torch._C._functorch.is_batchedtensor  # whether a tensor is a vmap wrapper (no public name)


_lock = threading.Lock()
_users = [0]  # threads inside batched_attention()
_plain_attention = F.scaled_dot_product_attention


@contextlib.contextmanager
def batched_attention():
    """Inside: scaled_dot_product_attention on vmapped tensors runs as one call over the vmapped
    dimension; on any other tensors it is the plain function.

    The name torch.nn.functional.scaled_dot_product_attention is rebound while any thread is inside
    (masks training in a pack: reference-counted, put back when the last one leaves). A name, not a
    TorchFunctionMode: nn.MultiheadAttention's functional form dispatches itself to such a mode and
    the attention it calls inside would not be seen; it looks the name up at call time. A model
    that bound the function under a name of its own at import gets vmap's per-sample loop: the same
    results, K calls.
    """
    with _lock:
        if _users[0] == 0:
            F.scaled_dot_product_attention = _sample_folding_attention
        _users[0] += 1
    try:
        yield
    finally:
        with _lock:
            _users[0] -= 1
            if _users[0] == 0:
                F.scaled_dot_product_attention = _plain_attention


def _sample_folding_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                              enable_gqa=False):
    arguments = (query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    if any(torch.is_tensor(x) and _is_batched(x) for x in arguments[:4]):
        return _SampleFoldedAttention.apply(*arguments)
    return _plain_attention(query, key, value, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)


class _SampleFoldedAttention(torch.autograd.Function):
    """A carrier for a vmap rule: used only on vmapped operands, where vmap calls `vmap` below and
    autograd records the attention op that rule runs (so forward and backward here never run)."""

    @staticmethod
    def forward(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        raise RuntimeError("_SampleFoldedAttention runs under vmap only")

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad_output):
        raise RuntimeError("_SampleFoldedAttention runs under vmap only")

    @staticmethod
    def vmap(info, in_dims, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        if dropout_p > 0 and info.randomness != "different":
            raise RuntimeError(f"attention with dropout under vmap(randomness={info.randomness!r}): the batched "
                               f"attention of models.masking draws different dropout per sample only")
        output = folded_attention(query, key, value, attn_mask, in_dims, info.batch_size, dropout_p, is_causal,
                                  scale, enable_gqa)
        return output, 0


def folded_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, in_dims: tuple,
                     num_samples: int, dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                     enable_gqa: bool = False) -> Tensor:
    """Attention of K samples in one call: [K, *batch, L, Ev], sample k's part being
    scaled_dot_product_attention(query[k], key[k], value[k], attn_mask[k], ...).

    query [*batch, L, E], key [*batch, S, E], value [*batch, S, Ev] per sample, each with its sample
    dimension at in_dims[i] (None: the same for every sample); attn_mask per sample broadcastable to
    [*batch, L, S], sample dimension at in_dims[3]. With per-sample 4-D inputs [N, H, L, E] (what
    nn.MultiheadAttention passes) K is folded into N, the layout the fused kernels take; otherwise
    K becomes one more leading batch dimension.
    """
    rank = query.dim() - (in_dims[0] is not None)  # per-sample rank of the query
    query, key, value = (_samples_first(x, d, num_samples) for x, d in zip((query, key, value), in_dims[:3]))
    if attn_mask is not None:
        attn_mask = _mask_samples_first(attn_mask, in_dims[3], rank, num_samples)
    fold = rank == 4
    if fold:
        query, key, value = (x.flatten(0, 1) for x in (query, key, value))
        if attn_mask is not None:
            attn_mask = _fold_mask(attn_mask, num_samples, query.shape[0] // num_samples)
    output = F.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p, is_causal, scale=scale,
                                            enable_gqa=enable_gqa)
    return output.unflatten(0, (num_samples, -1)) if fold else output


def _samples_first(x: Tensor, dim: int | None, num_samples: int) -> Tensor:
    """[..., K, ...] -> [K, ...]; an operand shared by all samples gets a broadcast K dimension."""
    if dim is None:
        return x.expand(num_samples, *x.shape)
    return x.movedim(dim, 0)


def _mask_samples_first(mask: Tensor, dim: int | None, rank: int, num_samples: int) -> Tensor:
    """A per-sample mask broadcastable to [*batch, L, S] -> [K or 1, *(rank dims)], right-aligned."""
    mask = mask.unsqueeze(0) if dim is None else mask.movedim(dim, 0)
    missing = rank - (mask.dim() - 1)
    return mask.reshape(mask.shape[0], *[1] * missing, *mask.shape[1:]) if missing > 0 else mask


def _fold_mask(mask: Tensor, num_samples: int, batch: int) -> Tensor:
    """[K or 1, N or 1, H', L', S'] -> [K·N or 1, H', L', S'] (broadcast dims kept where they can be)."""
    if mask.shape[0] == 1 and mask.shape[1] == 1:
        return mask[0]
    return mask.expand(num_samples, batch, *mask.shape[2:]).flatten(0, 1)
