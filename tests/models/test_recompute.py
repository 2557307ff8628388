"""Masked weight stacks drawn again in backward (MaskedModel(recompute=True)) give the same masks and
gradients, bit for bit, as keeping them, and are really not kept."""

import copy

import pytest
import torch
from torch import nn

from models.masking import MaskConfig, MaskedModel, ParameterFilter, make_optimizer, training_step
from models.masking import fused_sampling


def fnn():
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5)), \
        (torch.randn(8, 10),)


def attention_model():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return nn.Sequential(layer, nn.Linear(16, 4)).eval(), (torch.randn(8, 5, 16),)


def lstm():
    from models.lstm import build_lstm

    return build_lstm(6, 16, 4), (torch.randn(8, 7, 6),)  # 7 time steps: its Linear layers run 7 times


def gpt2():
    transformers = pytest.importorskip("transformers")  # noqa: F841
    from models.huggingface import huggingface

    model = huggingface(40, 3, 0, 16, config="gpt2", settings="n_layer=2,n_embd=16,n_head=2,n_positions=16").eval()
    attention = torch.ones(8, 9, dtype=torch.long)
    attention[2, 6:] = 0
    return model, (torch.randint(1, 40, (8, 9)), attention)


def train(model, inputs, recompute: bool, steps: int = 3):
    """-> (logit gradients of every step, final logits, whether stacks were drawn layer by layer)."""
    masked = MaskedModel(copy.deepcopy(model), MaskConfig(num_samples=4, alpha=1e-3), ParameterFilter(biases=False),
                         fused=True, recompute=recompute)
    masked.noise_generator = torch.Generator().manual_seed(7)
    optimizer = make_optimizer(masked, mask_lr=0.1)
    gradients = []
    for _ in range(steps):
        training_step(masked, optimizer, lambda: masked(*inputs).pow(2).mean())
        gradients.append([logit.grad.clone() for logit in masked.logits])
    assert masked.batched
    return gradients, [logit.detach().clone() for logit in masked.logits], masked._draws_on_use


@pytest.mark.parametrize("make, layer_by_layer", [(fnn, True), (attention_model, False), (lstm, True), (gpt2, True)],
                         ids=["fnn", "attention", "lstm", "gpt2"])
def test_recomputed_stacks_give_bit_identical_gradients_and_masks(make, layer_by_layer, monkeypatch):
    """nn.MultiheadAttention reads its out_proj's weight in its own forward, which fails on the meta
    placeholder: its stacks are drawn up front; the others' layer by layer."""
    model, inputs = make()
    draws = []
    original = fused_sampling._keyed_stack
    monkeypatch.setattr(fused_sampling, "_keyed_stack", lambda *args: draws.append(1) or original(*args))
    kept_gradients, kept_logits, _ = train(model, inputs, recompute=False)
    assert not draws  # without recomputation nothing is drawn again
    gradients, logits, lazy = train(model, inputs, recompute=True)
    assert lazy is layer_by_layer
    masked_parameters = len(MaskedModel(copy.deepcopy(model), parameter_filter=ParameterFilter(biases=False)).names)
    # backward draws a stack again at most twice per masked parameter and step: a module that runs
    # again (the LSTM's 7 time steps) keeps its second draw, which would otherwise be 7 draws
    assert len(draws) <= 2 * 3 * masked_parameters
    assert draws, "recomputation drew no stack again: the stacks were kept"
    for step_kept, step in zip(kept_gradients, gradients):
        for a, b in zip(step_kept, step):
            assert torch.equal(a, b)
    for a, b in zip(kept_logits, logits):
        assert torch.equal(a, b)


@pytest.mark.parametrize("recompute", [False, True])
def test_no_stack_outlives_the_forward_pass_with_recomputation(recompute, monkeypatch):
    """Between forward and backward the graph holds every stack (recompute=False) or none (True)."""
    import weakref

    import models.masking.masked_model as masked_model

    model, inputs = fnn()
    masked = MaskedModel(model, MaskConfig(num_samples=4), fused=True, recompute=recompute)
    stacks = []
    real = masked_model.keyed_masked_weight_samples

    def recording(*args, **kwargs):
        stack = real(*args, **kwargs)
        stacks.append(weakref.ref(stack.untyped_storage()))  # its memory, whichever view holds it
        return stack

    monkeypatch.setattr(masked_model, "keyed_masked_weight_samples", recording)  # stacks drawn up front
    monkeypatch.setattr(fused_sampling, "keyed_masked_weight_samples", recording)  # stacks drawn on use
    output = masked(*inputs).sum()
    alive = [ref() is not None for ref in stacks]
    output.backward()
    assert len(stacks) == 6  # 3 weights and 3 biases
    # the first layer's weight stack is not needed in backward (the input needs no gradient), nor are biases'
    assert sum(alive) == (0 if recompute else 2)
    assert masked._draws_on_use is (True if recompute else None)


def test_recompute_by_default_from_one_gibibyte_of_stacks():
    """K = 4 copies of 8192 x 8192 float32 weights are exactly 2^30 bytes."""
    big, small = nn.Linear(8192, 8192, bias=False, device="meta"), nn.Linear(8191, 8192, bias=False, device="meta")
    assert MaskedModel(big, MaskConfig(num_samples=4), fused=True).recompute is True
    assert MaskedModel(small, MaskConfig(num_samples=4), fused=True).recompute is False
    assert MaskedModel(small, MaskConfig(num_samples=4), fused=True, recompute=True).recompute is True
