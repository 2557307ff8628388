"""Wrap any nn.Module with one learned mask logit per masked weight, K samples per batch."""

from __future__ import annotations

import hashlib
import logging

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from models.masking.batching import (
    any_requires_grad,
    attention_fast_path_disabled,
    join_samples,
    non_differentiable_operation,
    output_batch_dims,
    random_state_snapshot,
    run_looped,
    run_vmapped,
    sample,
    shape_signature,
    split_inputs,
    whole_batch_output_shapes,
)
from models.masking.config import MaskConfig, ParameterFilter
from models.masking.counter_noise import draw_keys
from models.masking.drawn_on_use import run_drawn_on_use
from models.masking.fused_fallback import describe, fused_kernels_error, is_compile_failure
from models.masking.fused_sampling import (
    fits_one_pack_kernel,
    keyed_masked_weight_sample,
    keyed_masked_weight_samples,
    new_logits,
)
from models.masking.masks import Masks
from models.masking.recomputed_stacks import RecomputedStacks
from models.masking.sampling import masked_weight_samples, sample_uniforms

log = logging.getLogger(__name__)

# recompute=None turns recomputation on where the K stacks of masked weights take at least this much:
# there the memory matters; below it the extra kernels would only cost time (benchmarks/README.md).
RECOMPUTE_FROM_BYTES = 1 << 30
_MAX_CACHED_SIGNATURES = 256  # output layouts kept, one per distinct input shape (sequence lengths vary)


class MaskedModel(nn.Module):
    """A frozen (or partly trainable) model seen through K sampled binary weight masks.

    forward(*inputs, **options) splits every tensor of the positional inputs along its batch
    dimension (B; dim 0, or `batch_dims`: one dim for all inputs or one per positional input, e.g. 1
    for a time-first nn.GRU) into K slices of B/K, applies mask sample k to slice k, and returns
    what the model returns for the whole batch: each output's slices are joined along that
    output's own batch dimension (found once per input shape by comparing the model's output
    shapes for the whole batch, on the meta device, with those for one slice). Keyword arguments
    are passed unchanged to every sample.

    The K samples run as one vmapped call of the model. Where vmap cannot batch a module (nn.LSTM,
    nn.GRU: no batching rule), the first call finds out, checks that the per-sample loop runs on the
    same inputs, logs one warning and loops from then on (`batched` becomes False); any other error
    propagates. The model's buffers never change: each forward works on copies (BatchNorm in train
    mode normalises with each slice's statistics and its running statistics stay as they were).
    Modules with an inference fast path (nn.MultiheadAttention, nn.Transformer*) run their
    differentiable path in eval mode, with eval semantics. Attention (scaled_dot_product_attention)
    runs as one call over all samples (models/masking/attention.py), not once per sample.

    train_weights=False: the model's weights get requires_grad=False and never change.
    train_weights=True: the weights train with the masks, except entries where `frozen_weights`
    (name -> bool tensor) is True, which keep their value bit for bit.
    fused=True runs the element-wise mask work as torch.compile'd kernels that draw their noise
    in-kernel from a counter-based generator (faster per step, no K-stack of uniforms kept for
    backward; seconds of compilation at the first step; see benchmarks/README.md). Where they do
    not compile, the first forward logs one warning and the eager path runs (`fused` becomes False).
    recompute=True (fused path, outside a pack; None, the default: where the K stacks of all masked
    weights take at least RECOMPUTE_FROM_BYTES, 1 GiB): the [K, *S] masked weight stacks that the
    model's layers save for their backward pass are drawn again there from their noise keys instead of being
    kept (recomputed_stacks.RecomputedStacks), and on the batched path each stack is drawn when the module
    that owns the parameter runs rather than all before the forward pass, so that about one layer's
    stack exists at a time: the same gradients, bit for bit, for one more forward kernel per masked
    weight and step. Outside its owner's forward a masked parameter then holds a placeholder on
    which any computation raises, so that a model whose code reads it elsewhere
    (nn.MultiheadAttention reads its out_proj's weight) fails the first such call instead of
    missing a mask; from then on its stacks are drawn up front.

    noise_generator: where the mask noise comes from (torch's global generator when None; a CPU
    generator for the fused path, one on the model's device otherwise). A pipeline gives each mask
    its own and keeps it in its checkpoint, so masks do not depend on what else drew random numbers.
    pack: a models.masking.packing.MaskPack through which this mask's forward and backward passes
    run together with those of other masks over the same frozen network (see training_step).
    """

    def __init__(
        self,
        model: nn.Module,
        config: MaskConfig = MaskConfig(),
        parameter_filter: ParameterFilter = ParameterFilter(),
        train_weights: bool = False,
        frozen_weights: dict[str, Tensor] | None = None,
        fused: bool = False,
        batch_dims: int | tuple[int, ...] = 0,
        recompute: bool | None = None,
    ):
        super().__init__()
        self.model = model
        self.config = config
        self.names = parameter_filter.select(model)
        params = dict(model.named_parameters())
        self.logits = nn.ParameterList(nn.Parameter(new_logits(params[n], config.initial_logit)) for n in self.names)
        self._weight_cache: dict[str, tuple] = {}
        self.train_weights = train_weights
        model.requires_grad_(train_weights)
        self._frozen = self._register_frozen(params, frozen_weights or {})
        self.batched = True  # uses the vmapped path; False once vmap is found unable to batch the model
        self._vmap_verified = False
        self._output_batch_dims: dict = {}  # input shape signature -> batch dimension of each output
        self.fused = fused
        stack_bytes = config.num_samples * sum(4 * l.numel() for l in self.logits)
        self.recompute = stack_bytes >= RECOMPUTE_FROM_BYTES if recompute is None else recompute
        self._fused_kernels_checked = False
        self.batch_dims = batch_dims
        self.noise_generator: torch.Generator | None = None
        self.pack = None
        self._identity: tuple | None = None
        self._draws_on_use: bool | None = None  # stacks drawn when their module runs (None: untried)

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
        """A frozen matrix as a transposed view of a contiguous copy, made once (see fused_sampling.new_logits)."""
        if name not in self.names or weight.dim() != 2:
            return weight
        stamp = (weight.data_ptr(), weight._version, weight.device)
        cached = self._weight_cache.get(name)
        if cached is None or cached[0] != stamp:
            cached = (stamp, weight.detach().t().contiguous().t())
            self._weight_cache[name] = cached
        return cached[1]

    def frozen_identity(self) -> tuple:
        """Equal for two masked models exactly when their frozen weights are equal (so that their
        forward passes may share one call); recomputed when a weight changes in place."""
        if self.train_weights:
            return ("trains its weights", id(self))
        params = dict(self.model.named_parameters())
        stamp = tuple((p.data_ptr(), p._version) for p in params.values())
        if self._identity is None or self._identity[0] != stamp:
            digest = hashlib.sha256()
            for name, p in params.items():
                digest.update(f"{name}{tuple(p.shape)}{p.dtype}{p.device}".encode())
                if p.device.type != "meta":  # meta tensors have shapes only
                    digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._identity = (stamp, (type(self.model).__name__, digest.hexdigest()))
        return self._identity[1]

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
        generator = generator if generator is not None else self.noise_generator
        device = self.logits[0].device
        # A generator on another device (the fused path's CPU generator, after a fallback to the eager
        # path on a GPU) still decides the noise: drawn where it lives, then moved.
        noise_device = generator.device if generator is not None else device
        uniforms = sample_uniforms(storage_shapes, self.config.num_samples, noise_device, generator)
        return [u.to(device).transpose(-1, -2) if l.dim() == 2 else u.to(device) for u, l in zip(uniforms, self.logits)]

    # -- forward -------------------------------------------------------------------------------
    def forward(self, *inputs, **options):
        if self.fused and not self._fused_kernels_checked:
            self._check_fused_kernels()
        if self.fused:
            keys = draw_keys(len(self.names), self.logits[0].device, self.noise_generator)
            try:
                return self.forward_with_keys(keys, *inputs, **options)
            except Exception as error:  # a kernel the check did not compile (another rank) failing to compile
                if not is_compile_failure(error):
                    raise
                self._fall_back_to_eager(describe(error))
        return self.forward_with_uniforms(self.sample_uniforms(), *inputs, **options)

    def _check_fused_kernels(self) -> None:
        """Fall back to the eager path, with one log line, where the fused kernels cannot be compiled
        (no C++ compiler, a broken Triton): a slower trial rather than a failed one."""
        error = fused_kernels_error(self.logits[0].device)
        self._fused_kernels_checked = True
        if error is not None:
            self._fall_back_to_eager(error)

    def _fall_back_to_eager(self, error: str) -> None:
        log.warning("fused mask kernels do not compile on %s (%s); %s trains its masks on the eager path "
                    "(same mask distribution, slower steps)", self.logits[0].device, error, type(self.model).__name__)
        self.fused = False

    def forward_with_keys(self, keys: list[Tensor], *inputs, **options):
        """Fused path: the noise of parameter i is keyed_uniforms(keys[i], ...), drawn in-kernel.
        In a pack, the pack draws the weight stacks of all its members in one kernel per parameter."""
        if self._packs_keyed():
            with attention_fast_path_disabled():
                outputs = self.pack.keyed_forward(self, keys, self._slice(inputs), options)
                return self._joined(outputs, inputs, options)
        if not (self.recompute and self.pack is None and torch.is_grad_enabled()):
            stacked, shared = self.keyed_stacks(keys)
            return self._run_samples(stacked, shared, inputs, options)
        if self.batched and not self.train_weights and self._draws_on_use is not False:
            outputs = self._first_drawn_on_use(keys, inputs, options) if self._draws_on_use is None else \
                self._run_drawn_on_use(keys, inputs, options)
            if outputs is not None:
                return outputs
        with RecomputedStacks().saving() as recomputed:
            stacked, shared = self.keyed_stacks(keys, recomputed)
            return self._run_samples(stacked, shared, inputs, options)

    def _first_drawn_on_use(self, keys: list[Tensor], inputs: tuple, options: dict):
        """The first try of stacks drawn on use: None where it fails (vmap cannot batch the model, or
        the model reads a masked parameter outside its own module's forward, which then holds a meta
        tensor), after which stacks are drawn up front (and vmap is verified there as usual)."""
        restore_random_state = random_state_snapshot(self.logits[0].device)
        try:
            outputs = self._run_drawn_on_use(keys, inputs, options)
            leaves = [x for x in tree_flatten(outputs)[0] if torch.is_tensor(x)]
            reason = non_differentiable_operation(outputs) or (
                "an output on the meta device" if any(x.device.type == "meta" for x in leaves) else None)
        except Exception as error:  # broad on purpose: any failure means "draw the stacks up front"
            reason = f"{type(error).__name__}: {str(error)[:200]}"
        if reason is None:
            self._draws_on_use = self._vmap_verified = any_requires_grad(outputs)
            return outputs
        restore_random_state()
        log.info("%s: mask stacks are drawn before each forward pass (drawing them when each module runs "
                 "failed: %s)", type(self.model).__name__, reason)
        self._draws_on_use = False
        return None

    def _run_drawn_on_use(self, keys: list[Tensor], inputs: tuple, options: dict):
        """The batched forward with each masked parameter's [K, *S] stack drawn when the module that
        owns it runs (models/masking/drawn_on_use.py), and drawn again in backward."""
        with RecomputedStacks().saving() as recomputed:
            weights, temperature = self.effective_weights(), self.config.temperature

            def draw(i: int, number: Tensor) -> Tensor:
                return keyed_masked_weight_sample(weights[self.names[i]], self.logits[i], keys[i], number, temperature,
                                                  recomputed)

            samples = torch.arange(self.config.num_samples, device=self.logits[0].device)
            sliced = self._slice(inputs)
            with attention_fast_path_disabled():
                outputs = run_drawn_on_use(self.model, weights, self.names, draw, samples, sliced, options)
                return self._joined(outputs, inputs, options)

    def keyed_stacks(self, keys: list[Tensor], recomputed: RecomputedStacks | None = None) -> tuple[dict, dict]:
        """({name: [K, *S] masked weights}, {name: unmasked parameter}) for the fused path's keys;
        stacks registered with `recomputed` are drawn again in backward instead of being kept."""
        K, temperature = self.config.num_samples, self.config.temperature
        return self._masked_weight_stacks(
            lambda weight, logit, i: keyed_masked_weight_samples(weight, logit, keys[i], K, temperature, recomputed))

    def _packs_keyed(self) -> bool:
        """A pack can draw this mask's weight stacks together with other members' (frozen weights,
        the batched path verified, int32 counters enough)."""
        return (self.pack is not None and self._vmap_verified and self.batched and not self.train_weights
                and all(fits_one_pack_kernel(l, self.config.num_samples) for l in self.logits))

    def forward_with_uniforms(self, uniforms: list[Tensor], *inputs, **options):
        """The forward pass for given noise (one [K, *S] uniform tensor per masked parameter)."""
        self._check_noise(uniforms)
        stacked, shared = self._masked_weight_stacks(
            lambda weight, logit, i: masked_weight_samples(weight, logit, uniforms[i], self.config.temperature))
        return self._run_samples(stacked, shared, inputs, options)

    def _check_noise(self, uniforms: list[Tensor]) -> None:
        if len(uniforms) != len(self.names):
            raise ValueError(f"expected {len(self.names)} uniform tensors, got {len(uniforms)}")

    def _run_samples(self, stacked: dict, shared: dict, inputs: tuple, options: dict):
        """The model's own outputs for the whole batch, slice k computed with mask sample k."""
        with attention_fast_path_disabled():
            sliced = self._slice(inputs)
            if not self.batched:
                outputs = run_looped(self.model, stacked, shared, sliced, options, self.config.num_samples)
            elif self._vmap_verified and self.pack is not None:
                outputs = self.pack.forward(self, stacked, shared, sliced, options)
            elif self._vmap_verified:
                outputs = run_vmapped(self.model, stacked, shared, sliced, options)
            else:
                outputs = self._first_batched(stacked, shared, sliced, options)
            return self._joined(outputs, inputs, options)

    def _first_batched(self, stacked: dict, shared: dict, sliced: list, options: dict):
        """vmap, unless it cannot batch the model: decided once, on the first call with gradients.

        vmap failing proves nothing by itself (a wrongly shaped input fails it too), so the
        per-sample loop then runs on the same inputs: if it fails as well, its error is the
        caller's and propagates, and the next call tries vmap again. vmap also "succeeds" through
        an inference fast path without a derivative; that is found in the autograd graph.
        """
        restore_random_state = random_state_snapshot(self.logits[0].device)
        try:
            outputs = run_vmapped(self.model, stacked, shared, sliced, options)
            reason = non_differentiable_operation(outputs)
        except Exception as error:  # broad on purpose: the loop below tells the module's failure from the caller's
            reason = f"{type(error).__name__}: {error}"
        if reason is None:
            self._vmap_verified = any_requires_grad(outputs)
            return outputs
        restore_random_state()  # the failed attempt's dropout must not shift the loop's noise
        outputs = run_looped(self.model, stacked, shared, sliced, options, self.config.num_samples)
        log.warning("vmap cannot batch %s (%s); its K mask samples run in a per-sample loop from now on",
                    type(self.model).__name__, reason)
        self.batched = False
        return outputs

    def _masked_weight_stacks(self, mask_function) -> tuple[dict, dict]:
        """mask_function(weight, logits, index) -> [K, *S] for each masked parameter."""
        weights = self.effective_weights()
        stacked = {name: mask_function(weights[name], logit, i)
                   for i, (name, logit) in enumerate(zip(self.names, self.logits))}
        shared = {n: w for n, w in weights.items() if n not in stacked}
        return stacked, shared

    def _slice(self, inputs: tuple) -> list:
        return split_inputs(inputs, self.batch_dims, self.config.num_samples)

    def _joined(self, outputs, inputs: tuple, options: dict):
        """A tree of [K, ...] per-sample outputs -> the model's own outputs for the whole batch."""
        if self.config.num_samples == 1:
            return sample(outputs, 0)
        signature = shape_signature(inputs, options, self.model.training)
        dims = self._output_batch_dims.get(signature) if signature is not None else None
        if dims is None:
            whole = whole_batch_output_shapes(self.model, inputs, options)
            dims = output_batch_dims(whole, outputs, self.config.num_samples)
            if signature is not None:
                if len(self._output_batch_dims) >= _MAX_CACHED_SIGNATURES:
                    self._output_batch_dims.clear()
                self._output_batch_dims[signature] = dims
        return join_samples(outputs, dims)

