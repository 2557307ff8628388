import pytest
import torch
from torch import nn

from models.fnn import build_fnn
from models.masking import MaskConfig, MaskedModel, ParameterFilter, make_optimizer, training_step
from tests.models.architectures import architectures

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
    reference = masked.forward_reference(uniforms, *inputs)
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
    torch.testing.assert_close(out, masked.forward_reference(uniforms, x))
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
@pytest.mark.parametrize("name", ["fnn", "cnn", "lstm"])
def test_fused_in_kernel_noise_equals_the_reference_with_the_same_uniforms(name):
    """The fused path draws its noise from a key inside compiled kernels; materialising the same
    uniforms and running the per-sample reference gives the same outputs and gradients."""
    from models.masking.sampling import draw_keys, keyed_uniforms

    build_model, build_inputs = ARCHITECTURES[name]
    masked = MaskedModel(build_model(), MaskConfig(initial_keep_probability=0.7), fused=True)
    inputs = build_inputs(8)
    keys = draw_keys(len(masked.names), "cpu")
    fused = masked.forward_with_keys(keys, *inputs)
    fused_grads = torch.autograd.grad(fused.square().sum(), list(masked.logits))
    uniforms = [keyed_uniforms(k, l.shape, 4) for k, l in zip(keys, masked.logits)]
    reference = masked.forward_reference(uniforms, *inputs)
    reference_grads = torch.autograd.grad(reference.square().sum(), list(masked.logits))
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-5)
    for a, b in zip(fused_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_in_kernel_noise_is_uniform_and_keeps_with_probability_sigmoid_logit():
    import math

    from models.masking.sampling import counter_uniform, keyed_masked_weight_samples

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
