"""Where the fused kernels cannot be compiled, mask training falls back to the eager path with one
log line instead of failing. Compilation is made to fail for real: the kernels go through
torch.compile with a backend that raises, as inductor does without a working C++ compiler or Triton."""

import copy
import logging

import pytest
import torch
from torch import nn

from models.fnn import build_fnn
from models.masking import MaskConfig, MaskedModel, make_optimizer, masked_model, training_step
from models.masking import sampling


def _broken_backend(graph_module, example_inputs):
    raise RuntimeError("simulated: no working C++ compiler")


@pytest.fixture
def compilation_fails(monkeypatch):
    torch._dynamo.reset()
    monkeypatch.setattr(sampling, "_compile",
                        lambda *functions: tuple(torch.compile(f, dynamic=True, backend=_broken_backend)
                                                 for f in functions))
    monkeypatch.setattr(masked_model, "_kernel_errors", {})  # the verdict is cached per process
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
    assert masked.fused and masked_model.fused_kernels_error(torch.device("cpu")) is None
