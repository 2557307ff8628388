"""Attention under vmap runs as one call over the mask samples, and each sample gets exactly what it
gets alone. Expected values: a per-sample loop of plain scaled_dot_product_attention calls, and a
per-sample loop of the plain model (tests/models/reference.py)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from models.masking import MaskConfig, MaskedModel
from models.masking.attention import batched_attention
from models.transformer import build_transformer
from tests.models.reference import per_sample_reference

K, N, H, L, S, E = 3, 2, 2, 5, 6, 4


def _operands(query_batched=True, key_batched=True):
    """query [K, N, H, L, E], key/value [K, N, H, S, E] (or without K when not batched)."""
    query = torch.randn(*(K,) * query_batched, N, H, L, E, requires_grad=True)
    key = torch.randn(*(K,) * key_batched, N, H, S, E, requires_grad=True)
    value = torch.randn(*(K,) * key_batched, N, H, S, E, requires_grad=True)
    return query, key, value


MASKS = {  # name -> (mask, its vmapped dimension or None); per-sample shapes broadcastable to [N, H, L, S]
    "none": (None, None),
    "key padding, per sample": (torch.rand(K, N, 1, 1, S) > 0.3, 0),
    "key padding, shared": (torch.rand(N, 1, 1, S) > 0.3, None),
    "additive float [L, S], shared": (torch.randn(L, S), None),
    "per head, sample dim last": (torch.rand(N, H, L, S, K) > 0.3, 4),
    "3-d [1, L, S], per sample": (torch.randn(K, 1, L, S), 0),
}


def _per_sample(function, operands, dims):
    outputs = []
    for k in range(K):
        outputs.append(function(*(x if d is None else x.select(d, k) for x, d in zip(operands, dims))))
    return torch.stack(outputs)


def _assert_equal_with_gradients(batched, reference, leaves):
    torch.testing.assert_close(batched, reference, rtol=1e-6, atol=1e-6)
    weights = torch.randn_like(reference)
    grads = torch.autograd.grad((batched * weights).sum(), leaves)
    reference_grads = torch.autograd.grad((reference * weights).sum(), leaves)
    for g, r in zip(grads, reference_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("mask_name", list(MASKS))
def test_batched_attention_equals_the_per_sample_calls(mask_name, is_causal):
    mask, mask_dim = MASKS[mask_name]
    if is_causal and mask is not None:
        pytest.skip("scaled_dot_product_attention takes a mask or is_causal, not both")
    query, key, value = _operands()

    def attention(q, k, v, m):
        return F.scaled_dot_product_attention(q, k, v, m, is_causal=is_causal)

    dims = (0, 0, 0, mask_dim)
    with batched_attention():
        batched = vmap(attention, in_dims=dims)(query, key, value, mask)
    reference = _per_sample(attention, (query, key, value, mask), dims)
    _assert_equal_with_gradients(batched, reference, (query, key, value))


def test_operands_shared_by_all_samples_and_other_ranks():
    """A key and value without the sample dimension; and 3-D per-sample inputs [H, L, E]."""
    query, key, value = _operands(key_batched=False)

    def attention(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, scale=0.3)

    with batched_attention():
        batched = vmap(attention, in_dims=(0, None, None))(query, key, value)
    _assert_equal_with_gradients(batched, _per_sample(attention, (query, key, value), (0, None, None)),
                                 (query, key, value))

    query3, key3, value3 = (x[:, 0] for x in _operands())
    with batched_attention():
        batched = vmap(attention)(query3, key3, value3)
    _assert_equal_with_gradients(batched, _per_sample(attention, (query3, key3, value3), (0, 0, 0)),
                                 (query3, key3, value3))


def _attention_kernel_calls(run) -> int:
    """How many times the attention kernel itself ran (any backend), forward only."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()
    kernels = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention",
               "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention",
               "aten::_scaled_dot_product_attention_math")
    return sum(event.count for event in profile.key_averages() if event.key in kernels)


def test_vmap_alone_runs_attention_once_per_sample_and_batched_attention_once():
    """What the fold is for (if PyTorch gains a batching rule, the first count drops to one and this
    module can go)."""
    query, key, value = (x.detach() for x in _operands())
    attention = vmap(lambda q, k, v: F.scaled_dot_product_attention(q, k, v))
    assert _attention_kernel_calls(lambda: attention(query, key, value)) >= K  # the fallback's outer call counts too
    with batched_attention():
        assert _attention_kernel_calls(lambda: attention(query, key, value)) == 1


def test_dropout_is_drawn_independently_for_each_sample():
    """Dropout cannot match a per-sample loop draw for draw (one call draws all samples' noise);
    what must hold is that samples with equal inputs get different dropout, and that a gradient flows."""
    query, key, value = (x[:1].expand(K, *x.shape[1:]) for x in _operands())

    def attention(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)

    with batched_attention():
        batched = vmap(attention, randomness="different")(query, key, value)
    assert not torch.equal(batched[0], batched[1])
    grads = torch.autograd.grad(batched.sum(), (query, key, value))
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    with batched_attention(), pytest.raises(RuntimeError, match="different dropout per sample"):
        vmap(attention, randomness="same")(query, key, value)


def _seq2seq_batch(batch: int):
    source = torch.randint(0, 11, (batch, 7))
    target = torch.randint(0, 11, (batch, 5))
    padding = torch.zeros(batch, 7, dtype=torch.bool)
    padding[::2, 4:] = True  # every other example has 3 padding tokens
    return source, target, padding


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_masked_transformer_with_padding_and_causal_masks_equals_the_per_sample_model(mode):
    """models/transformer.py (encoder key padding, decoder causal and memory padding masks), eval and
    train mode (dropout 0, so that train mode is deterministic and comparable draw for draw)."""
    model = build_transformer(11, 11, d_model=16, num_heads=2, num_layers=2, feedforward=32, dropout=0.0)
    model.train(mode == "train")
    masked = MaskedModel(model, MaskConfig(num_samples=4, initial_keep_probability=0.7))
    inputs = _seq2seq_batch(8)
    uniforms = masked.sample_uniforms()
    masked.forward_with_uniforms(uniforms, *inputs)  # the first call finds the outputs' layout (on meta)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        output = masked.forward_with_uniforms(uniforms, *inputs)
    reference = per_sample_reference(model, masked.logits_by_name(), dict(zip(masked.names, uniforms)), inputs,
                                     num_samples=4)
    assert masked.batched
    torch.testing.assert_close(output, reference, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(output.square().sum(), list(masked.logits))
    reference_grads = torch.autograd.grad(reference.square().sum(), list(masked.logits))
    for name, g, r in zip(masked.names, grads, reference_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=name)
    assert _flash_calls(profile) == 2 + 2 * 2, "one call per attention layer (2 encoder, 2 x 2 decoder), not K"


class _AttentionCall(nn.Module):
    """nn.MultiheadAttention called with a key padding mask (split per sample: a positional input)
    and an additive float mask shared by every example (fixed: the same for every sample)."""

    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.register_buffer("bias", torch.randn(3, 5))

    def forward(self, query, key, padding):
        return self.attention(query, key, key, key_padding_mask=padding, attn_mask=self.bias, need_weights=False)[0]


def test_multihead_attention_with_a_padding_and_a_float_mask_equals_the_per_sample_model():
    model = _AttentionCall().eval()
    masked = MaskedModel(model, MaskConfig(num_samples=2, initial_keep_probability=0.7))
    query, key = torch.randn(4, 3, 8), torch.randn(4, 5, 8)
    padding = torch.zeros(4, 5).masked_fill(torch.tensor([[0, 0, 0, 1, 1]] * 4, dtype=torch.bool), float("-inf"))
    uniforms = masked.sample_uniforms()
    masked.forward_with_uniforms(uniforms, query, key, padding)  # the first call finds the outputs' layout

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        output = masked.forward_with_uniforms(uniforms, query, key, padding)
    reference = per_sample_reference(model, masked.logits_by_name(), dict(zip(masked.names, uniforms)),
                                     (query, key, padding), num_samples=2)
    assert masked.batched
    assert _flash_calls(profile) == 1
    torch.testing.assert_close(output, reference, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(output.square().sum(), list(masked.logits))
    reference_grads = torch.autograd.grad(reference.square().sum(), list(masked.logits))
    for g, r in zip(grads, reference_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def _flash_calls(profile) -> int:
    return sum(e.count for e in profile.key_averages() if e.key == "aten::_scaled_dot_product_flash_attention_for_cpu")
