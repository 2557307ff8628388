"""One mask-training step and the paper's optimiser settings (Adam, lr 1e-2, clip 1)."""

from __future__ import annotations

import copy

from typing import Callable

import torch
from torch import Tensor, nn

from models.masking.masked_model import MaskedModel
from models.masking.masks import Masks


def make_optimizer(masked: MaskedModel, mask_lr: float = 1e-2, weight_lr: float = 1e-3) -> torch.optim.Adam:
    """Adam over the mask logits, plus the model's weights when they train jointly."""
    groups = [{"params": list(masked.logits), "lr": mask_lr}]
    if masked.train_weights:
        groups.append({"params": [p for p in masked.model.parameters() if p.requires_grad], "lr": weight_lr})
    return torch.optim.Adam(groups)


def training_step(
    masked: MaskedModel, optimizer: torch.optim.Optimizer, task_loss: Callable[[], Tensor], clip: float = 1.0
) -> Tensor:
    """One update: task_loss() + α Σ l, backward, clip the gradient norm, step.

    task_loss runs the forward pass (through `masked`, however the task presents its data) and
    returns the scalar task loss, which is returned detached. A masked model in a pack
    (models.masking.packing) runs its backward pass together with the other members'.
    """
    optimizer.zero_grad(set_to_none=True)
    loss = task_loss()
    total = loss + masked.regularization()
    masked.pack.backward(total) if masked.pack is not None else total.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()
    return loss.detach()


def continual_logits(
    masked: MaskedModel, used: Masks, used_logit: float = 2.0, free_logit: float = 0.0
) -> None:
    """Initialise logits for a new task: `used_logit` where earlier masks used the weight (C.5)."""
    logits = masked.logits_by_name()
    with torch.no_grad():
        for name, keep in used.tensors.items():
            logits[name].copy_(torch.where(keep.to(logits[name].device), used_logit, free_logit))


def reinitialize_free_weights(model: nn.Module, used: Masks, generator: torch.Generator | None = None) -> None:
    """Redraw the weights no earlier mask uses from the layer's default initialisation (C.5).

    A fresh copy of each owning module is initialised by its own reset_parameters; the used
    entries are kept.
    """
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, keep in used.tensors.items():
            module_name, _, param_name = name.rpartition(".")
            fresh = _freshly_initialised(modules[module_name], param_name, generator)
            params[name].copy_(torch.where(keep.to(fresh.device), params[name], fresh))


def _freshly_initialised(module: nn.Module, param_name: str, generator) -> Tensor:
    clone = copy.deepcopy(module)
    if generator is not None:
        state = torch.random.get_rng_state()
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    try:
        if not hasattr(clone, "reset_parameters"):
            raise ValueError(f"{type(module).__name__} has no reset_parameters; cannot re-initialise {param_name}")
        clone.reset_parameters()
    finally:
        if generator is not None:
            torch.random.set_rng_state(state)
    return getattr(clone, param_name).detach()
