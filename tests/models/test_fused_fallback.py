"""Where the fused kernels cannot be compiled, mask training falls back to the eager path with one
log line instead of failing. Compilation is made to fail for real: the kernels go through
torch.compile with a backend that raises, as inductor does without a working C++ compiler or Triton."""

import copy
import logging

import pytest
import torch
from torch import nn

from models.fnn import build_fnn
from models.masking import MaskConfig, MaskedModel, fused_fallback, fused_sampling, make_optimizer, training_step


def _broken_backend(graph_module, example_inputs):
    raise RuntimeError("simulated: no working C++ compiler")


@pytest.fixture
def compilation_fails(monkeypatch):
    torch._dynamo.reset()
    monkeypatch.setattr(fused_sampling, "_compile",
                        lambda *functions: tuple(torch.compile(f, dynamic=True, backend=_broken_backend)
                                                 for f in functions))
    monkeypatch.setattr(fused_fallback, "_kernel_errors", {})  # the verdict is cached per process
    yield
    torch._dynamo.reset()


def _train(masked: MaskedModel, steps: int = 3) -> list[float]:
    optimizer = make_optimizer(masked)
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator)
        losses.append(float(training_step(masked, optimizer, lambda: nn.functional.cross_entropy(masked(x), y))))
    return losses


def test_a_fused_mask_trains_on_the_eager_path_when_its_kernels_do_not_compile(compilation_fails, caplog):
    network = build_fnn(6, (8,), 3)
    fused = MaskedModel(copy.deepcopy(network), MaskConfig(num_samples=2), fused=True)
    fused.noise_generator = torch.Generator().manual_seed(7)
    eager = MaskedModel(copy.deepcopy(network), MaskConfig(num_samples=2), fused=False)
    eager.noise_generator = torch.Generator().manual_seed(7)

    with caplog.at_level(logging.WARNING, logger="models.masking.masked_model"):
        fused_losses = _train(fused)
    eager_losses = _train(eager)

    assert not fused.fused
    lines = [r.getMessage() for r in caplog.records if "fused mask kernels" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "simulated: no working C++ compiler" in lines[0] and "eager path" in lines[0]
    # the eager path it fell back to: the same noise stream gives the same losses and logits
    assert fused_losses == eager_losses
    for a, b in zip(fused.logits, eager.logits):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.slow
def test_the_fused_kernels_are_kept_where_they_compile():
    masked = MaskedModel(build_fnn(6, (8,), 3), MaskConfig(num_samples=2), fused=True)
    _train(masked, steps=1)
    assert masked.fused and fused_fallback.fused_kernels_error(torch.device("cpu")) is None


def _fails_for_convolution_weights(graph_module, example_inputs):
    if any(torch.is_tensor(x) and x.dim() >= 4 for x in example_inputs):
        raise RuntimeError("simulated: no kernel for 4-D weights")
    return graph_module.forward  # matrices and vectors compile (to themselves)


def test_a_kernel_the_check_did_not_cover_falls_back_at_its_first_forward(monkeypatch, caplog):
    """The check compiles matrix and vector kernels; a convolution's 4-D weights need another graph."""
    torch._dynamo.reset()
    monkeypatch.setattr(fused_sampling, "_compile",
                        lambda *functions: tuple(torch.compile(f, dynamic=True, backend=_fails_for_convolution_weights)
                                                 for f in functions))
    monkeypatch.setattr(fused_fallback, "_kernel_errors", {})
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    masked = MaskedModel(model, MaskConfig(num_samples=2), fused=True)
    optimizer = make_optimizer(masked)
    x, y = torch.randn(8, 2, 6, 6), torch.randint(0, 3, (8,))
    try:
        with caplog.at_level(logging.WARNING, logger="models.masking.masked_model"):
            for _ in range(2):
                training_step(masked, optimizer, lambda: nn.functional.cross_entropy(masked(x), y))
    finally:
        torch._dynamo.reset()
    assert not masked.fused
    lines = [r.getMessage() for r in caplog.records if "fused mask kernels" in r.getMessage()]
    assert len(lines) == 1 and "no kernel for 4-D weights" in lines[0], lines
    assert all(torch.isfinite(l).all() for l in masked.logits)
    assert masked.logits[0].grad is not None and masked.logits[0].grad.abs().sum() > 0


@pytest.mark.slow
def test_a_model_error_under_the_fused_path_is_not_taken_for_a_compile_failure():
    masked = MaskedModel(build_fnn(6, (8,), 3), MaskConfig(num_samples=2), fused=True)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied|size mismatch|mat1 and mat2"):
        masked(torch.randn(4, 5))  # wrong input width: the caller's error
    assert masked.fused
