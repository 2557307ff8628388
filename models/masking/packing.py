"""Several masks over one frozen network trained in one pass: M mask sets × K samples, one vmap.

Each mask (a MaskedModel over its own copy of the same frozen weights, with its own logits, β,
noise, data stream and optimiser) trains in its own thread, exactly as it would alone. Its forward
pass and its backward pass are handed to a MaskPack, which waits until every member of the pack is
waiting and then runs all waiting forward passes as one vmapped call of the model over M·K mask
samples (inputs of equal shapes only; others run alone) and all waiting backward passes as one
autograd call. Each member's loss depends only on its own slice of the joint output, so its
gradients are the ones it would get alone; what packing saves is the per-call overhead of M small
passes (launches on a GPU, dispatch and weight reads on a CPU).

    pack = MaskPack()
    def train(masked):                       # one thread per mask
        masked.pack = pack
        with pack.member():
            for _ in range(steps):
                training_step(masked, optimizer, loss)   # forward and backward go through the pack
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten, tree_unflatten

from models.masking.batching import run_vmapped
from models.masking.fused_sampling import keyed_masked_weight_pack


@dataclass(eq=False)
class _Request:
    kind: str  # "forward" or "backward"
    run_alone: Callable[[], Any]  # what the member would do without a pack
    payload: tuple = ()
    done: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Forward:
    """One member's masked forward, ready to run: its sliced inputs and either its weight stacks or,
    for a fused mask, its noise keys (the pack then draws the stacks of all members at once)."""

    masked: Any  # MaskedModel
    sliced: list  # positional inputs, every tensor [K, ...]
    options: dict
    signature: tuple
    stacked: dict[str, Tensor] | None = None  # name -> [K, *S]
    shared: dict[str, Tensor] | None = None  # unmasked parameters, the same values for every member
    keys: list[Tensor] | None = None  # one int32 [2] per masked parameter


class MaskPack:
    """A rendezvous for the forward and backward passes of the masks that train together.

    A member is a thread between `with pack.member():` entry and exit; a round runs when every
    member is waiting (a member leaving, by finishing or by an error, never blocks the others).
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._members = 0
        self._pending: list[_Request] = []
        self.rounds = 0  # rounds run, for tests and statistics
        self.packed_forwards = 0  # forward passes that ran in a group of more than one

    @contextlib.contextmanager
    def member(self):
        with self._condition:
            self._members += 1
        try:
            yield self
        finally:
            with self._condition:
                self._members -= 1
                self._condition.notify_all()

    # -- what a member calls ------------------------------------------------------------------------
    def forward(self, masked, stacked: dict, shared: dict, sliced: list, options: dict):
        """The member's [K, ...] outputs tree, computed together with the other members' forwards."""
        work = _Forward(masked, sliced, options, _signature(masked, stacked, shared, sliced, options), stacked, shared)
        return self._submit(_Request("forward", lambda: run_vmapped(masked.model, stacked, shared, sliced, options),
                                     (work,)))

    def keyed_forward(self, masked, keys: list[Tensor], sliced: list, options: dict):
        """As forward, for a fused mask given its noise keys: the pack draws every member's weight
        stacks in one kernel per parameter (no per-member stacks to copy into a joint one)."""
        signature = ("keyed", masked.config.num_samples, masked.config.temperature,
                     *_signature(masked, masked.logits_by_name(), {}, sliced, options))
        work = _Forward(masked, sliced, options, signature, keys=keys)

        def run():
            return run_vmapped(masked.model, *masked.keyed_stacks(keys), sliced, options)

        return self._submit(_Request("forward", run, (work,)))

    def backward(self, loss: Tensor) -> None:
        """loss.backward(), run together with the other members' backward passes."""
        self._submit(_Request("backward", loss.backward, (loss,)))

    # -- the rendezvous -------------------------------------------------------------------------------
    def _submit(self, request: _Request):
        with self._condition:
            if self._members == 0:  # not inside member(): nothing to wait for
                return request.run_alone()
            self._pending.append(request)
            while not request.done:
                if request in self._pending and len(self._pending) >= self._members:
                    batch, self._pending = self._pending, []
                    self._condition.release()
                    try:
                        self._run_round(batch)
                    finally:
                        self._condition.acquire()
                        self._condition.notify_all()
                else:
                    self._condition.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def _run_round(self, batch: list[_Request]) -> None:
        self.rounds += 1
        forwards = [r for r in batch if r.kind == "forward"]
        groups: dict[tuple, list[_Request]] = {}
        for request in forwards:
            groups.setdefault(request.payload[0].signature, []).append(request)
        for group in groups.values():
            _settle(group, lambda group=group: self._forward_group(group))
        backwards = [r for r in batch if r.kind == "backward"]
        if backwards:
            _settle(backwards, lambda: _backward([r.payload[0] for r in backwards]))

    def _forward_group(self, group: list[_Request]) -> list:
        if len(group) == 1:
            return [group[0].run_alone()]
        self.packed_forwards += len(group)
        works = [r.payload[0] for r in group]
        first = works[0]
        if first.keys is not None:
            stacked, shared = _keyed_pack_stacks(works)
            counts = [w.masked.config.num_samples for w in works]
        else:
            stacked = {name: _cat_samples([w.stacked[name] for w in works]) for name in first.stacked}
            shared, counts = first.shared, [next(iter(w.stacked.values())).shape[0] for w in works]
        sliced = _concatenate([w.sliced for w in works])
        outputs = run_vmapped(first.masked.model, stacked, shared, sliced, first.options)
        leaves, spec = tree_flatten(outputs)
        parts = [x.split(counts) if torch.is_tensor(x) else [x] * len(works) for x in leaves]
        return [tree_unflatten([p[i] for p in parts], spec) for i in range(len(works))]


def _keyed_pack_stacks(works: list[_Forward]) -> tuple[dict, dict]:
    """Every member's K-stacks of every masked parameter, drawn in one kernel per parameter:
    ({name: [M·K, *S]}, {name: unmasked parameter}). The frozen weights are the first member's
    (all members' are equal: the signature holds their content hash)."""
    first = works[0].masked
    weights = first.effective_weights()
    config = first.config
    stacked = {}
    for i, name in enumerate(first.names):
        logits = _stack_like([w.masked.logits[i] for w in works])
        keys = torch.stack([w.keys[i] for w in works])
        stacked[name] = keyed_masked_weight_pack(weights[name], logits, keys, config.num_samples, config.temperature)
    return stacked, {n: w for n, w in weights.items() if n not in stacked}


def _stack_like(parts: list[Tensor]) -> Tensor:
    """[*S] tensors -> [M, *S] in their memory layout (logits of matrices are stored transposed)."""
    if parts[0].dim() == 2 and not parts[0].is_contiguous() and parts[0].t().is_contiguous():
        return torch.stack([p.t() for p in parts]).transpose(-1, -2)
    return torch.stack(parts)


def _backward(losses: list[Tensor]) -> None:
    # A member's forward may have run in a group whose other members backpropagate in a later round
    # (a loss that calls the model twice): the joint graph is kept until every loss is gone.
    torch.autograd.backward(losses, retain_graph=True)


def _settle(requests: list[_Request], compute: Callable[[], list | None]) -> None:
    """Run `compute` for these requests; each gets its part of the result, or the error."""
    try:
        results = compute()
    except BaseException as error:  # every waiting member gets the error; none is left waiting
        for request in requests:
            request.error, request.done = error, True
        return
    for i, request in enumerate(requests):
        request.result, request.done = (results[i] if results is not None else None), True


def _concatenate(slices_per_member: list[list]) -> list:
    """Members' sliced inputs ([K_m, ...] tensors) -> one list of [Σ K_m, ...] tensors."""
    flat = [tree_flatten(s) for s in slices_per_member]
    spec = flat[0][1]
    leaves = [_cat_samples(parts) if torch.is_tensor(parts[0]) else parts[0] for parts in zip(*(f[0] for f in flat))]
    return tree_unflatten(leaves, spec)


def _cat_samples(parts: list[Tensor]) -> Tensor:
    """[K_m, ...] tensors -> [Σ K_m, ...] with the memory layout of the first (a matrix stack stored
    transposed stays so): the kernels then see the layout they see alone, and round alike."""
    first = parts[0]
    order = sorted(range(first.dim()), key=lambda d: (-first.stride(d), d))
    if order[0] != 0:
        return torch.cat(parts)
    inverse = [order.index(d) for d in range(first.dim())]
    return torch.cat([p.permute(order) for p in parts]).permute(inverse)


def _signature(masked, stacked: dict, shared: dict, sliced: list, options: dict) -> tuple:
    """Forwards that can share one vmapped call: the same frozen model (same weights: checked once
    per member), the same masked parameters, inputs of the same structure and per-sample shapes,
    and equal non-tensor inputs and options."""
    inputs, input_spec = tree_flatten(sliced)
    option_leaves, option_spec = tree_flatten(options)
    return (masked.frozen_identity(), tuple(stacked), tuple(shared), str(input_spec), str(option_spec),
            tuple((tuple(x.shape[1:]), x.dtype, x.device) if torch.is_tensor(x) else repr(x) for x in inputs),
            tuple(id(x) if torch.is_tensor(x) else repr(x) for x in option_leaves),  # passed once: must be the same
            masked.model.training)
