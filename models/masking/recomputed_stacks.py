"""Masked weight stacks drawn again in the backward pass instead of being kept (MaskedModel(recompute=True))."""

from __future__ import annotations

import weakref

import torch
from torch import Tensor


class RecomputedStacks:
    """Masked weight stacks that are drawn again in the backward pass instead of being kept.

    A layer's backward pass needs the [K, *S] masked weights it multiplied with (for the gradient of
    its input), so autograd normally keeps every layer's stack from the forward pass to the backward:
    K times the masked weights' bytes. Inside `saving()`, a tensor that an operation saves for backward
    and that lives in a registered stack's memory (the stack or a view of it) is kept as a recipe:
    the frozen weight, the logits and the noise key, from which the forward kernel draws the same
    stack bit for bit when backward unpacks it (one extra forward kernel per masked weight and step).
    The logits must not change between forward and backward (an optimizer steps after backward).
    A saved tensor that is a copy of a stack (not a view) is kept as it is.
    """

    def __init__(self):
        self._recipes: dict[int, tuple[weakref.ref, _Recipe]] = {}

    def register(self, stack: Tensor, draw) -> None:
        storage = stack.untyped_storage()
        # The weak reference tells a live stack from memory that a freed one left to a new tensor.
        self._recipes[storage.data_ptr()] = (weakref.ref(storage), _Recipe(draw))

    def saving(self):
        """Context for the forward pass of the registered stacks; registrations end with it."""
        return _SavingContext(self)

    def _pack(self, tensor: Tensor):
        if not self._recipes or not isinstance(tensor, Tensor) or tensor.layout != torch.strided:
            return tensor
        address = tensor.untyped_storage().data_ptr()
        storage, recipe = self._recipes.get(address, (None, None))
        if recipe is None or storage() is None:
            self._recipes.pop(address, None)
            return tensor
        recipe.pending += 1
        return recipe, tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset()

    @staticmethod
    def _unpack(packed):
        if isinstance(packed, Tensor):
            return packed
        recipe, shape, stride, offset = packed
        return recipe.stack().as_strided(shape, stride, offset)


class _Recipe:
    """How to draw one stack again; the drawn stack is kept until every saved view of it was unpacked."""

    def __init__(self, draw):
        self.draw, self.pending, self._stack = draw, 0, None

    def stack(self) -> Tensor:
        stack = self._stack if self._stack is not None else self.draw()
        self.pending -= 1
        self._stack = stack if self.pending > 0 else None
        return stack


class _SavingContext:
    def __init__(self, owner: RecomputedStacks):
        self.owner = owner
        self.hooks = torch.autograd.graph.saved_tensors_hooks(owner._pack, owner._unpack)

    def __enter__(self):
        self.hooks.__enter__()
        return self.owner

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        # Stacks die with the forward pass; their memory may then hold other tensors.
        self.owner._recipes.clear()
        return False

