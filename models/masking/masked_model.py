"""Wrap any nn.Module with one learned mask logit per masked weight, K samples per batch."""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.utils._pytree import tree_map

from models.masking.config import MaskConfig, ParameterFilter
from models.masking.masks import Masks
from models.masking.sampling import (
    draw_keys,
    keyed_masked_weight_samples,
    masked_weight_samples,
    masked_weight_samples_reference,
    sample_uniforms,
)

log = logging.getLogger(__name__)


class MaskedModel(nn.Module):
    """A frozen (or partly trainable) model seen through K sampled binary weight masks.

    forward(*inputs, **options) splits every positional tensor along dim 0 (the batch, B) into K
    slices of B/K, applies mask sample k to slice k, and returns outputs of the model's own shape.
    Keyword arguments are passed unchanged to every sample. The K samples run as one vmapped call
    of the model; modules PyTorch cannot vmap fall back to a per-sample loop with a warning.

    train_weights=False: the model's weights get requires_grad=False and never change.
    train_weights=True: the weights train with the masks, except entries where `frozen_weights`
    (name -> bool tensor) is True, which keep their value bit for bit.
    fused=True runs the element-wise mask work as torch.compile'd kernels that draw their noise
    in-kernel from a counter-based generator (faster per step, no K-stack of uniforms kept for
    backward; seconds of compilation at the first step; see benchmarks/README.md).
    """

    def __init__(
        self,
        model: nn.Module,
        config: MaskConfig = MaskConfig(),
        parameter_filter: ParameterFilter = ParameterFilter(),
        train_weights: bool = False,
        frozen_weights: dict[str, Tensor] | None = None,
        fused: bool = False,
    ):
        super().__init__()
        self.model = model
        self.config = config
        self.names = parameter_filter.select(model)
        params = dict(model.named_parameters())
        self.logits = nn.ParameterList(nn.Parameter(_new_logits(params[n], config.initial_logit)) for n in self.names)
        self._weight_cache: dict[str, tuple] = {}
        self.train_weights = train_weights
        model.requires_grad_(train_weights)
        self._frozen = self._register_frozen(params, frozen_weights or {})
        self.batched = True
        self.fused = fused

    def _register_frozen(self, params: dict[str, Tensor], frozen_weights: dict[str, Tensor]) -> list[str]:
        if frozen_weights and not self.train_weights:
            raise ValueError("frozen_weights only makes sense with train_weights=True (otherwise all are frozen)")
        for i, (name, frozen) in enumerate(frozen_weights.items()):
            if name not in params or tuple(frozen.shape) != tuple(params[name].shape):
                raise ValueError(f"frozen_weights[{name!r}] does not match a parameter of the model by name and shape")
            self.register_buffer(f"_frozen_where_{i}", frozen.to(torch.bool, copy=True))
            self.register_buffer(f"_frozen_value_{i}", params[name].detach().clone())
        return list(frozen_weights)

    # -- weights -------------------------------------------------------------------------------
    def logits_by_name(self) -> dict[str, Tensor]:
        return dict(zip(self.names, self.logits))

    def effective_weights(self) -> dict[str, Tensor]:
        """The model's parameters, with frozen entries held at their saved values."""
        params = dict(self.model.named_parameters())
        if not self.train_weights:
            return {name: self._matrix_layout(name, p) for name, p in params.items()}
        for i, name in enumerate(self._frozen):
            where, value = getattr(self, f"_frozen_where_{i}"), getattr(self, f"_frozen_value_{i}")
            params[name] = torch.where(where, value, params[name])
        return params

    def _matrix_layout(self, name: str, weight: Tensor) -> Tensor:
        """A frozen matrix as a transposed view of a contiguous copy, made once (see _new_logits)."""
        if name not in self.names or weight.dim() != 2:
            return weight
        stamp = (weight.data_ptr(), weight._version, weight.device)
        cached = self._weight_cache.get(name)
        if cached is None or cached[0] != stamp:
            cached = (stamp, weight.detach().t().contiguous().t())
            self._weight_cache[name] = cached
        return cached[1]

    def deterministic_masks(self) -> Masks:
        """M_i = 1[σ(l_i) > 0.5] for every masked parameter."""
        return Masks.from_logits(self.logits_by_name())

    def regularization(self) -> Tensor:
        """α · Σ_i l_i over every mask logit."""
        return self.config.alpha * sum(l.sum() for l in self.logits)

    def sample_uniforms(self, generator: torch.Generator | None = None) -> list[Tensor]:
        """Fresh noise for K mask samples: one [K, *S] tensor per masked parameter, laid out in
        memory like the logits (matrices transposed), so element-wise work runs contiguously."""
        storage_shapes = [l.t().shape if l.dim() == 2 else l.shape for l in self.logits]
        uniforms = sample_uniforms(storage_shapes, self.config.num_samples, self.logits[0].device, generator)
        return [u.transpose(-1, -2) if l.dim() == 2 else u for u, l in zip(uniforms, self.logits)]

    # -- forward -------------------------------------------------------------------------------
    def forward(self, *inputs, **options):
        if self.fused:
            return self.forward_with_keys(draw_keys(len(self.names), self.logits[0].device), *inputs, **options)
        return self.forward_with_uniforms(self.sample_uniforms(), *inputs, **options)

    def forward_with_keys(self, keys: list[Tensor], *inputs, **options):
        """Fused path: the noise of parameter i is keyed_uniforms(keys[i], ...), drawn in-kernel."""
        K, temperature = self.config.num_samples, self.config.temperature
        stacked, shared = self._masked_weight_stacks(
            lambda weight, logit, i: keyed_masked_weight_samples(weight, logit, keys[i], K, temperature))
        return self._batched_or_looped(stacked, shared, inputs, options)

    def forward_with_uniforms(self, uniforms: list[Tensor], *inputs, **options):
        """The forward pass for given noise (one [K, *S] uniform tensor per masked parameter)."""
        self._check_noise(uniforms)
        stacked, shared = self._masked_weight_stacks(
            lambda weight, logit, i: masked_weight_samples(weight, logit, uniforms[i], self.config.temperature))
        return self._batched_or_looped(stacked, shared, inputs, options)

    def forward_reference(self, uniforms: list[Tensor], *inputs, **options):
        """Per-sample loop with the paper's eq. 1-2 written out: the reference for tests."""
        self._check_noise(uniforms)
        stacked, shared = self._masked_weight_stacks(
            lambda weight, logit, i: masked_weight_samples_reference(weight, logit, uniforms[i],
                                                                     self.config.temperature))
        return self._looped(stacked, shared, self._slice(inputs), options)

    def _check_noise(self, uniforms: list[Tensor]) -> None:
        if len(uniforms) != len(self.names):
            raise ValueError(f"expected {len(self.names)} uniform tensors, got {len(uniforms)}")

    def _slice(self, inputs: tuple) -> list:
        return [_split_batch(x, self.config.num_samples) if torch.is_tensor(x) else x for x in inputs]

    def _batched_or_looped(self, stacked: dict, shared: dict, inputs: tuple, options: dict):
        """Outputs [B, ...] as the model's own."""
        sliced = self._slice(inputs)
        if self.batched:
            try:
                return self._vmapped(stacked, shared, sliced, options)
            except (RuntimeError, NotImplementedError) as error:
                log.warning("vmap cannot batch %s (%s); using a per-sample loop", type(self.model).__name__, error)
                self.batched = False
        return self._looped(stacked, shared, sliced, options)

    def _masked_weight_stacks(self, mask_function) -> tuple[dict, dict]:
        """mask_function(weight, logits, index) -> [K, *S] for each masked parameter."""
        weights = self.effective_weights()
        stacked = {name: mask_function(weights[name], logit, i)
                   for i, (name, logit) in enumerate(zip(self.names, self.logits))}
        shared = {n: w for n, w in weights.items() if n not in stacked}
        return stacked, shared

    def _vmapped(self, stacked: dict, shared: dict, sliced: list, options: dict):
        def one_sample(stacked_k, *inputs_k):
            return functional_call(self.model, {**shared, **stacked_k}, inputs_k, options, strict=False)

        in_dims = (0, *[0 if torch.is_tensor(x) else None for x in sliced])
        outputs = vmap(one_sample, in_dims=in_dims, randomness="different")(stacked, *sliced)
        return tree_map(_merge_batch, outputs)

    def _looped(self, stacked: dict, shared: dict, sliced: list, options: dict):
        outputs = []
        for k in range(self.config.num_samples):
            params = {**shared, **{n: w[k] for n, w in stacked.items()}}
            inputs_k = [x[k] if torch.is_tensor(x) else x for x in sliced]
            outputs.append(functional_call(self.model, params, tuple(inputs_k), options, strict=False))
        return tree_map(lambda *parts: torch.cat(parts, 0), *outputs) if len(outputs) > 1 else outputs[0]


def _new_logits(weight: Tensor, value: float) -> Tensor:
    """Logits shaped like `weight`; matrices stored transposed, the layout the fused kernels use
    (a Linear layer consumes W^T, so its gradients arrive transposed)."""
    if weight.dim() == 2:
        return torch.full((weight.shape[1], weight.shape[0]), value, device=weight.device).t()
    return torch.full_like(weight, value, dtype=torch.float32)


def _split_batch(x: Tensor, num_samples: int) -> Tensor:
    """[B, ...] -> [K, B/K, ...]."""
    if x.dim() == 0 or x.shape[0] % num_samples:
        raise ValueError(
            f"batch size {x.shape[0] if x.dim() else 'of a scalar'} is not divisible by the number of mask samples "
            f"K={num_samples}; use a batch size that is a multiple of {num_samples}"
        )
    return x.reshape(num_samples, x.shape[0] // num_samples, *x.shape[1:])


def _merge_batch(x):
    """[K, B/K, ...] -> [B, ...]."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]) if torch.is_tensor(x) else x
