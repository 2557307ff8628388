import pytest
import torch
from torch import nn

from models.fnn import build_fnn
from models.masking import MaskConfig, MaskedModel, ParameterFilter, make_optimizer, training_step
from tests.models.architectures import architectures, vision_transformer
from tests.models.reference import flat_outputs, masked_forward_reference, masked_weights, per_sample_reference

ARCHITECTURES = architectures()


def _output_tensor(output):
    return output if torch.is_tensor(output) else output[0]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_batched_samples_equal_the_per_sample_loop(name):
    """The vmapped K-sample forward/backward equals K sequential passes with eq. 1-2 written out."""
    build_model, build_inputs = ARCHITECTURES[name]
    masked = MaskedModel(build_model(), MaskConfig(num_samples=4, initial_keep_probability=0.7))
    inputs = build_inputs(8)
    uniforms = masked.sample_uniforms()

    batched = masked.forward_with_uniforms(uniforms, *inputs)
    batched_grads = torch.autograd.grad(batched.square().sum(), list(masked.logits))
    reference = masked_forward_reference(masked, uniforms, *inputs)
    reference_grads = torch.autograd.grad(reference.square().sum(), list(masked.logits))

    assert masked.batched, f"{name} fell back to the loop"
    torch.testing.assert_close(batched, reference, rtol=1e-4, atol=1e-5)
    for a, b in zip(batched_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_each_sample_acts_on_its_own_slice_of_the_batch():
    """Sample 0 keeps every weight, sample 1 drops every weight: slice 0 is the plain model, slice 1 is 0."""
    model = build_fnn(5, (7,), 3)
    masked = MaskedModel(model, MaskConfig(num_samples=2))
    x = torch.randn(6, 5)
    uniforms = [torch.stack([torch.full_like(l, 0.999999), torch.zeros_like(l)]) for l in masked.logits]
    out = masked.forward_with_uniforms(uniforms, x)
    torch.testing.assert_close(out[:3], model(x[:3]))
    assert torch.equal(out[3:], torch.zeros(3, 3))


def test_module_without_vmap_rule_falls_back_to_loop_with_same_result(caplog):
    class TorchLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 6, batch_first=True)

        def forward(self, x):
            return self.lstm(x)[0]

    masked = MaskedModel(TorchLSTM(), MaskConfig(num_samples=2))
    x = torch.randn(4, 3, 4)
    uniforms = masked.sample_uniforms()
    out = masked.forward_with_uniforms(uniforms, x)
    torch.testing.assert_close(out, masked_forward_reference(masked, uniforms, x))
    assert not masked.batched
    assert "per-sample loop" in caplog.text


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_mask_training_leaves_every_weight_bit_identical(fused):
    model = build_fnn(6, (8,), 4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masked = MaskedModel(model, MaskConfig(alpha=1e-3), fused=fused)
    optimizer = make_optimizer(masked)
    logits_before = [l.detach().clone() for l in masked.logits]
    for _ in range(5):
        training_step(masked, optimizer, lambda: nn.functional.cross_entropy(masked(torch.randn(8, 6)), torch.randint(0, 4, (8,))))
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name
        assert not p.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(logits_before, masked.logits))


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_joint_training_keeps_frozen_entries_and_trains_the_rest(fused):
    model = build_fnn(6, (8,), 4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen = {n: torch.rand(p.shape) < 0.5 for n, p in model.named_parameters()}
    masked = MaskedModel(model, MaskConfig(), train_weights=True, frozen_weights=frozen, fused=fused)
    optimizer = make_optimizer(masked)
    for _ in range(5):
        training_step(masked, optimizer, lambda: nn.functional.cross_entropy(masked(torch.randn(8, 6)), torch.randint(0, 4, (8,))))
    effective = masked.effective_weights()
    for name, where in frozen.items():
        assert torch.equal(effective[name][where], before[name][where]), name
    changed = sum(int((effective[n][~w] != before[n][~w]).sum()) for n, w in frozen.items())
    assert changed > 0.5 * sum(int((~w).sum()) for w in frozen.values())


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_mask_training_finds_the_weights_a_task_needs(fused):
    """y = x0 + x1 through a net that also sees x2, x3: the mask must drop the x2, x3 weights."""
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    masked = MaskedModel(model, MaskConfig(alpha=1e-3, num_samples=4), fused=fused)
    optimizer = make_optimizer(masked, mask_lr=0.05)
    for _ in range(400):
        x = torch.randn(64, 4)
        training_step(masked, optimizer, lambda: nn.functional.mse_loss(masked(x), x[:, :2].sum(1, keepdim=True)))
    assert masked.deterministic_masks().tensors["weight"].tolist() == [[True, True, False, False]]


def test_regularization_is_alpha_times_sum_of_logits():
    model = build_fnn(3, (2,), 2)
    masked = MaskedModel(model, MaskConfig.from_beta(1e-2, batch_size=4, initial_keep_probability=0.5))
    with torch.no_grad():
        for i, l in enumerate(masked.logits):
            l.fill_(i + 1.0)
    sizes = [p.numel() for p in model.parameters()]
    expected = (1e-2 / 4) * sum((i + 1.0) * n for i, n in enumerate(sizes))
    assert masked.regularization().item() == pytest.approx(expected)


def test_initial_keep_probability_sets_logits():
    masked = MaskedModel(build_fnn(3, (2,), 2))
    for l in masked.logits:
        torch.testing.assert_close(torch.sigmoid(l), torch.full_like(l, 0.9))


def test_parameter_filter_leaves_out_biases_embeddings_norms_and_names():
    from tests.models.architectures import UnseenModel

    model = UnseenModel()
    all_names = [n for n, _ in model.named_parameters()]
    assert ParameterFilter().select(model) == all_names
    no_bias = ParameterFilter(biases=False).select(model)
    assert no_bias == [n for n in all_names if "bias" not in n.rsplit(".", 1)[-1]]
    assert "embed.weight" not in ParameterFilter(embeddings=False).select(model)
    assert not {"norm.weight", "norm.bias"} & set(ParameterFilter(normalization=False).select(model))
    assert not [n for n in ParameterFilter(exclude=("head.*",)).select(model) if n.startswith("head.")]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ParameterFilter(exclude=("nothing.*",)).select(build_fnn(2, (2,), 2)), "matches no parameter"),
        (lambda: ParameterFilter(exclude=("*",)).select(build_fnn(2, (2,), 2)), "selects no parameter"),
        (lambda: MaskConfig(alpha=-1.0), "alpha must be >= 0"),
        (lambda: MaskConfig(temperature=0.0), "temperature"),
        (lambda: MaskConfig(num_samples=0), "num_samples"),
        (lambda: MaskConfig.from_beta(-1.0, 128), "beta must be >= 0"),
        (lambda: MaskedModel(build_fnn(2, (2,), 2), MaskConfig(num_samples=4))(torch.randn(6, 2)), "not divisible"),
    ],
)
def test_bad_settings_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.slow  # compiles kernels: seconds
@pytest.mark.parametrize("name", ["fnn", "simple_cnn", "lstm"])
def test_fused_in_kernel_noise_equals_the_reference_with_the_same_uniforms(name):
    """The fused path draws its noise from a key inside compiled kernels; materialising the same
    uniforms and running the per-sample reference gives the same outputs and gradients."""
    from models.masking.counter_noise import draw_keys, keyed_uniforms

    build_model, build_inputs = ARCHITECTURES[name]
    masked = MaskedModel(build_model(), MaskConfig(initial_keep_probability=0.7), fused=True)
    inputs = build_inputs(8)
    keys = draw_keys(len(masked.names), "cpu")
    fused = masked.forward_with_keys(keys, *inputs)
    fused_grads = torch.autograd.grad(fused.square().sum(), list(masked.logits))
    uniforms = [keyed_uniforms(k, l.shape, 4) for k, l in zip(keys, masked.logits)]
    reference = masked_forward_reference(masked, uniforms, *inputs)
    reference_grads = torch.autograd.grad(reference.square().sum(), list(masked.logits))
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-5)
    for a, b in zip(fused_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_in_kernel_noise_is_uniform_and_keeps_with_probability_sigmoid_logit():
    import math

    from models.masking.counter_noise import counter_uniform
    from models.masking.fused_sampling import keyed_masked_weight_samples

    key = torch.tensor([12345, -678], dtype=torch.int32)
    u = counter_uniform(key, (400_000,))
    # moments of U(0, 1) and no correlation between neighbours
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / u.numel())
    assert abs(u.var().item() - 1 / 12) < 1e-3
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()) < 5 / math.sqrt(u.numel())
    # other key, other stream
    assert abs(torch.corrcoef(torch.stack([u, counter_uniform(key + 1, (400_000,))]))[0, 1].item()) < 0.01
    logits = torch.tensor([-2.0, 0.0, 1.5, 3.0])
    n = 100_000
    keep = keyed_masked_weight_samples(torch.ones(4), logits, key, n)
    for l, mean in zip(logits.tolist(), keep.mean(0).tolist()):
        p = 1 / (1 + math.exp(-l))
        assert abs(mean - p) < 5 * math.sqrt(p * (1 - p) / n), (l, mean, p)


# -- modules the masking core must handle without knowing them -------------------------------------

def _attention_models():
    """name -> (model builder, input builder for a batch of B): attention in every form PyTorch has."""
    return {
        "vision-transformer": (vision_transformer, lambda b: (torch.randn(b, 3, 8, 8),)),
        "transformer-encoder": (
            lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2),
            lambda b: (torch.randn(b, 5, 8),),
        ),
        "multihead-attention": (
            lambda: nn.MultiheadAttention(8, 2, batch_first=True),
            lambda b: (torch.randn(b, 5, 8), torch.randn(b, 4, 8), torch.randn(b, 4, 8)),
        ),
        "seq2seq-transformer": ARCHITECTURES["transformer"],
        "unseen": ARCHITECTURES["unseen"],
    }


ATTENTION_MODELS = _attention_models()


def _forward_and_uniforms(masked: MaskedModel, fused: bool, inputs: tuple):
    """The masked forward and the uniforms it used, by name (materialised from the keys if fused)."""
    from models.masking.counter_noise import draw_keys, keyed_uniforms

    if fused:
        keys = draw_keys(len(masked.names), "cpu")
        uniforms = [keyed_uniforms(k, l.shape, masked.config.num_samples) for k, l in zip(keys, masked.logits)]
        output = masked.forward_with_keys(keys, *inputs)
    else:
        uniforms = masked.sample_uniforms()
        output = masked.forward_with_uniforms(uniforms, *inputs)
    return output, dict(zip(masked.names, uniforms))


def _assert_same_outputs_and_logit_gradients(masked: MaskedModel, output, reference) -> None:
    output, reference = flat_outputs(output), flat_outputs(reference)
    assert [o.shape for o in output] == [r.shape for r in reference]
    for o, r in zip(output, reference):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(sum(o.square().sum() for o in output), list(masked.logits), allow_unused=True)
    reference_grads = torch.autograd.grad(sum(r.square().sum() for r in reference), list(masked.logits),
                                          allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient reached the logits"
    for name, g, r in zip(masked.names, grads, reference_grads):
        assert (g is None) == (r is None), name
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", list(ATTENTION_MODELS))
def test_attention_models_in_eval_mode_train_like_a_per_sample_reference(name, fused):
    """In eval mode attention takes PyTorch's inference fast path, which has no derivative; the
    masked forward must stay differentiable, batched, and equal to K plain calls with eval semantics."""
    build_model, build_inputs = ATTENTION_MODELS[name]
    model = build_model().eval()
    masked = MaskedModel(model, MaskConfig(num_samples=2, initial_keep_probability=0.7), fused=fused)
    inputs = build_inputs(4)

    output, uniforms = _forward_and_uniforms(masked, fused, inputs)
    reference = per_sample_reference(model, masked.logits_by_name(), uniforms, inputs, num_samples=2)

    _assert_same_outputs_and_logit_gradients(masked, output, reference)
    assert masked.batched
    assert torch.backends.mha.get_fastpath_enabled(), "the process-wide fast-path switch was not put back"


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
@pytest.mark.parametrize("batch_first", [True, False])
def test_recurrent_outputs_and_states_are_joined_along_their_batch_dimension(cell, batch_first):
    """nn.GRU/nn.LSTM: outputs [B, T, H] or [T, B, H], states [layers, B, H]. With B/K = layers = 2
    a slice's state [2, 2, H] does not say by its sizes where the batch is."""
    model = cell(3, 16, num_layers=2, batch_first=batch_first)
    batch_dim = 0 if batch_first else 1
    masked = MaskedModel(model, MaskConfig(num_samples=2, initial_keep_probability=0.7), batch_dims=batch_dim)
    x = torch.randn(4, 5, 3) if batch_first else torch.randn(5, 4, 3)

    output, uniforms = _forward_and_uniforms(masked, False, (x,))
    state_dims = [1] if cell is nn.GRU else [1, 1]
    reference = per_sample_reference(model, masked.logits_by_name(), uniforms, (x,), num_samples=2,
                                     input_batch_dim=batch_dim, output_batch_dims=[batch_dim, *state_dims])

    expected_shapes = [(*x.shape[:2], 16)] + [(2, 4, 16)] * len(state_dims)
    assert [tuple(o.shape) for o in flat_outputs(output)] == expected_shapes
    _assert_same_outputs_and_logit_gradients(masked, output, reference)
    assert not masked.batched


def test_each_positional_input_has_its_own_batch_dimension():
    """A batch-first nn.LSTM with its initial state (h0, c0), whose batch is dimension 1."""
    model = nn.LSTM(3, 6, batch_first=True)
    masked = MaskedModel(model, MaskConfig(num_samples=2, initial_keep_probability=0.7), batch_dims=(0, 1))
    x, h0, c0 = torch.randn(4, 5, 3), torch.randn(1, 4, 6), torch.randn(1, 4, 6)

    output, uniforms = _forward_and_uniforms(masked, False, (x, (h0, c0)))
    reference = []
    for k in range(2):
        weights = masked_weights(model, masked.logits_by_name(), uniforms, k)
        rows = slice(2 * k, 2 * k + 2)
        reference.append(torch.func.functional_call(model, weights, (x[rows], (h0[:, rows], c0[:, rows]))))
    reference = (torch.cat([r[0] for r in reference]),
                 tuple(torch.cat([r[1][i] for r in reference], 1) for i in range(2)))
    _assert_same_outputs_and_logit_gradients(masked, output, reference)


class _BatchNormThenLSTM(nn.Module):
    """[B, T, 4] -> BatchNorm over features -> nn.LSTM (which vmap cannot batch) -> [B, 3]."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        return self.head(self.lstm(x)[0][:, -1])


def _conv_batchnorm():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3))


@pytest.mark.parametrize("build_model, shape, batched", [
    (_conv_batchnorm, (8, 3, 5, 5), True),
    (_BatchNormThenLSTM, (8, 5, 4), False),
])
def test_batchnorm_in_train_mode_leaves_every_buffer_bit_identical(build_model, shape, batched):
    """Each slice is normalised with its own statistics; running statistics and the batch counter
    stay as they were, also through the first step's failed vmap attempt where there is one."""
    torch.manual_seed(0)
    model = build_model().train()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    masked = MaskedModel(model, MaskConfig(num_samples=2, initial_keep_probability=0.7))
    x = torch.randn(*shape)

    output, uniforms = _forward_and_uniforms(masked, False, (x,))
    reference = per_sample_reference(model, masked.logits_by_name(), uniforms, (x,), num_samples=2)
    _assert_same_outputs_and_logit_gradients(masked, output, reference)
    assert masked.batched == batched
    optimizer = make_optimizer(masked)
    for _ in range(3):
        training_step(masked, optimizer, lambda: masked(torch.randn(*shape)).square().mean())

    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name


def test_a_wrongly_shaped_call_raises_its_own_error_and_keeps_the_batched_path(caplog, monkeypatch):
    import models.masking.batching as batching

    masked = MaskedModel(build_fnn(5, (7,), 3), MaskConfig(num_samples=2))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        masked(torch.randn(4, 6))  # the first call: vmap fails, and so does the per-sample loop
    assert masked.batched
    masked(torch.randn(4, 5))
    with pytest.raises(RuntimeError, match="Expected size"):
        masked(torch.randn(4, 6))  # a later call: vmap is known to work, its error (worded by vmap) is the caller's
    vmap_calls = []
    monkeypatch.setattr(batching, "vmap", lambda *a, **k: vmap_calls.append(1) or torch.func.vmap(*a, **k))
    masked(torch.randn(4, 5))
    assert masked.batched and vmap_calls == [1]
    assert "per-sample loop" not in caplog.text


def test_the_per_sample_loop_is_chosen_once_and_logged_once(caplog, monkeypatch):
    import models.masking.batching as batching

    vmap_calls = []
    monkeypatch.setattr(batching, "vmap", lambda *a, **k: vmap_calls.append(1) or torch.func.vmap(*a, **k))
    masked = MaskedModel(_BatchNormThenLSTM().eval(), MaskConfig(num_samples=2))
    for _ in range(3):
        masked(torch.randn(4, 5, 4)).sum().backward()
    assert not masked.batched
    assert vmap_calls == [1]
    assert caplog.text.count("per-sample loop") == 1


def test_a_failed_vmap_attempt_leaves_the_random_state_as_it_was():
    """Dropout before an nn.LSTM draws under vmap before vmap fails; the loop must draw the same
    noise as a loop that never tried vmap."""
    model = nn.Sequential(nn.Dropout(0.5), nn.LSTM(4, 6, batch_first=True)).train()
    tried = MaskedModel(model, MaskConfig(num_samples=2))
    looped = MaskedModel(model, MaskConfig(num_samples=2))
    looped.batched = False
    uniforms, x = tried.sample_uniforms(), torch.randn(4, 5, 4)

    torch.manual_seed(1)
    output = tried.forward_with_uniforms(uniforms, x)[0]
    torch.manual_seed(1)
    expected = looped.forward_with_uniforms(uniforms, x)[0]
    assert not tried.batched
    assert torch.equal(output, expected)


class _FastInferenceAttention(nn.Module):
    """Self-attention that, like PyTorch's own fast paths, calls a kernel without a derivative when
    no weight requires grad: the masking core must find that out, not know this module."""

    def __init__(self):
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        a = self.attention
        if torch.is_grad_enabled() and a.in_proj_weight.requires_grad:
            return a(x, x, x, need_weights=False)[0]
        return torch._native_multi_head_attention(x, x, x, a.embed_dim, a.num_heads, a.in_proj_weight, a.in_proj_bias,
                                                  a.out_proj.weight, a.out_proj.bias, need_weights=False)[0]


def test_an_inference_fast_path_without_derivative_falls_back_to_the_loop(caplog):
    model = _FastInferenceAttention().eval()
    masked = MaskedModel(model, MaskConfig(num_samples=2, initial_keep_probability=0.7))
    x = torch.randn(4, 5, 8)
    output, uniforms = _forward_and_uniforms(masked, False, (x,))
    reference = per_sample_reference(model, masked.logits_by_name(), uniforms, (x,), num_samples=2)
    _assert_same_outputs_and_logit_gradients(masked, output, reference)
    assert not masked.batched
    assert "without a derivative" in caplog.text


@pytest.mark.parametrize("make_output, message", [
    (lambda x: x.sum(), "hold the batch along one dimension"),
    (lambda x: x @ x.t(), "hold the batch along one dimension"),
])
def test_an_output_without_one_batch_dimension_is_a_clear_error(make_output, message):
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 3)

        def forward(self, x):
            return make_output(self.linear(x))

    with pytest.raises(ValueError, match=message):
        MaskedModel(Model(), MaskConfig(num_samples=2))(torch.randn(4, 3))


class _MetaUnfriendly(nn.Module):
    """Makes a tensor on the CPU inside forward, which meta tensors cannot mix with: the output
    layout must then be found by a real forward. [B, 3] -> ([B, 3], [3, B])."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.norm = nn.BatchNorm1d(3)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        y = self.dropout(self.norm(self.linear(x))) + torch.ones(x.shape[0], 3)
        return y, y.t()


def test_a_model_meta_tensors_cannot_run_has_its_output_layout_found_without_side_effects():
    model = _MetaUnfriendly().train()
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    masked = MaskedModel(model, MaskConfig(num_samples=2))
    uniforms, x = masked.sample_uniforms(), torch.randn(6, 3)

    torch.manual_seed(0)
    first = masked.forward_with_uniforms(uniforms, x)  # runs the model once more to find the layout
    after_first = torch.rand(3)
    torch.manual_seed(0)
    second = masked.forward_with_uniforms(uniforms, x)  # the layout is known
    after_second = torch.rand(3)

    assert [tuple(o.shape) for o in first] == [(6, 3), (3, 6)]
    torch.testing.assert_close(first[1], first[0].t())
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert torch.equal(after_first, after_second), "the layout probe moved the random state"
    for name, b in model.named_buffers():
        assert torch.equal(b, buffers[name]), name
