"""The masking core's contract, checked on modules it never saw, through the public API only:
masks train (gradients reach every mask), the model's weights and buffers stay bit for bit, the
outputs have the plain model's shapes, and applied(model, ~masks) zeroes the kept weights and
restores them."""

import copy

import pytest
import torch

from models.masking import MaskConfig, MaskedModel, applied, make_optimizer, training_step
from tests.models.architectures import unseen_modules
from tests.models.reference import flat_outputs

UNSEEN = unseen_modules()
def _mean_square(outputs) -> torch.Tensor:
    return sum(o.square().mean() for o in flat_outputs(outputs))


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", list(UNSEEN))
def test_masking_an_unseen_module(name, mode):
    build_model, build_inputs, batch_dims, batchable = UNSEEN[name]
    torch.manual_seed(0)
    model = build_model().train(mode == "train")
    with torch.no_grad():
        expected_shapes = [o.shape for o in flat_outputs(copy.deepcopy(model)(*build_inputs(4)))]
    state = {key: value.clone() for key, value in model.state_dict().items()}  # weights and buffers
    masked = MaskedModel(model, MaskConfig(num_samples=2), batch_dims=batch_dims)
    with torch.no_grad():
        for logit in masked.logits:
            logit.normal_()  # a mixed mask, so that ~masks is not all zeros
    logits_before = [logit.detach().clone() for logit in masked.logits]
    optimizer = make_optimizer(masked)

    shapes = []
    for _ in range(2):
        def task_loss():
            outputs = masked(*build_inputs(4))
            shapes.append([o.shape for o in flat_outputs(outputs)])
            return _mean_square(outputs)

        training_step(masked, optimizer, task_loss)

    assert shapes == [expected_shapes] * 2
    assert masked.batched == batchable
    for parameter_name, logit in zip(masked.names, masked.logits):
        assert logit.grad is not None and torch.isfinite(logit.grad).all(), parameter_name
        if state[parameter_name].any():  # d(w·b)/dl is proportional to w: a zero weight's mask gets none
            assert logit.grad.abs().sum() > 0, f"no gradient reached the mask of {parameter_name}"
    assert any(not torch.equal(logit.detach(), before) for logit, before in zip(masked.logits, logits_before))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} changed"

    masks = masked.deterministic_masks()
    parameters = dict(model.named_parameters())
    with applied(model, ~masks):
        for parameter_name, keep in masks.tensors.items():
            assert torch.equal(parameters[parameter_name], state[parameter_name] * ~keep), parameter_name
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} not restored"
