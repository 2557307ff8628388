"""Deterministic binary masks as data: set algebra, counts, sharing, IoU, compact files."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from models.common import atomic_path

_FILE_FORMAT = "modular-masks/1"


@dataclass(frozen=True)
class Masks:
    """Binary masks over named parameters: name -> bool tensor of the parameter's shape."""

    tensors: dict[str, Tensor]

    @classmethod
    def from_logits(cls, logits: dict[str, Tensor]) -> "Masks":
        """M_i = 1[σ(l_i) > 0.5], i.e. l_i > 0."""
        return cls({name: (l.detach() > 0).cpu() for name, l in logits.items()})

    # -- set algebra -------------------------------------------------------------------------
    def _check_compatible(self, other: "Masks") -> None:
        if self.shapes() != other.shapes():
            raise ValueError(f"masks cover different parameters: {_describe_difference(self.shapes(), other.shapes())}")

    def __or__(self, other: "Masks") -> "Masks":
        self._check_compatible(other)
        return Masks({n: t | other.tensors[n] for n, t in self.tensors.items()})

    def __and__(self, other: "Masks") -> "Masks":
        self._check_compatible(other)
        return Masks({n: t & other.tensors[n] for n, t in self.tensors.items()})

    def __invert__(self) -> "Masks":
        return Masks({n: ~t for n, t in self.tensors.items()})

    # -- counts ------------------------------------------------------------------------------
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(t.shape) for n, t in self.tensors.items()}

    def kept(self) -> int:
        return sum(int(t.sum()) for t in self.tensors.values())

    def total(self) -> int:
        return sum(t.numel() for t in self.tensors.values())

    def kept_per_parameter(self) -> dict[str, int]:
        return {n: int(t.sum()) for n, t in self.tensors.items()}

    def counts_per_layer(self) -> dict[str, tuple[int, int]]:
        """Layer (the module owning the parameter) -> (kept, total)."""
        layers: dict[str, tuple[int, int]] = {}
        for name, t in self.tensors.items():
            layer = layer_of(name)
            kept, total = layers.get(layer, (0, 0))
            layers[layer] = (kept + int(t.sum()), total + t.numel())
        return layers

    # -- files -------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Bit-packed, with names and shapes; written atomically (temp file + rename)."""
        payload = {
            "format": _FILE_FORMAT,
            "names": list(self.tensors),
            "shapes": [list(t.shape) for t in self.tensors.values()],
            "bits": [torch.from_numpy(np.packbits(t.numpy().ravel())) for t in self.tensors.values()],
        }
        atomic_torch_save(payload, path)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> "Masks":
        """Read a mask file; with `model`, check it belongs to that model's parameters."""
        payload = torch.load(path, weights_only=True)
        if not isinstance(payload, dict) or payload.get("format") != _FILE_FORMAT:
            raise ValueError(f"{path} is not a mask file (expected format {_FILE_FORMAT!r})")
        tensors = {}
        for name, shape, bits in zip(payload["names"], payload["shapes"], payload["bits"]):
            count = int(np.prod(shape))
            flat = np.unpackbits(bits.numpy(), count=count).astype(bool)
            tensors[name] = torch.from_numpy(flat.reshape(shape))
        masks = cls(tensors)
        if model is not None:
            masks.check_matches(model, source=str(path))
        return masks

    def check_matches(self, model: nn.Module, source: str = "masks") -> None:
        """Raise if a mask names a parameter the model lacks or has a different shape."""
        params = dict(model.named_parameters())
        expected = {n: tuple(params[n].shape) for n in self.tensors if n in params}
        missing = [n for n in self.tensors if n not in params]
        if missing or expected != self.shapes():
            model_shapes = {n: tuple(p.shape) for n, p in params.items()}
            raise ValueError(
                f"{source} does not belong to this {type(model).__name__}: "
                f"{_describe_difference(self.shapes(), model_shapes, only_left=True)}"
            )


def layer_of(parameter_name: str) -> str:
    """'layers.2.weight' -> 'layers.2'; a top-level parameter is its own layer."""
    return parameter_name.rsplit(".", 1)[0] if "." in parameter_name else parameter_name


def union(masks: list[Masks]) -> Masks:
    """Logical OR of several masks."""
    if not masks:
        raise ValueError("union of an empty list of masks")
    result = masks[0]
    for m in masks[1:]:
        result = result | m
    return result


def sharing(target: Masks, reference: Masks) -> float:
    """s(t, r) = Σ t·r / Σ t: the share of the target's weights also used by the reference."""
    kept = target.kept()
    if kept == 0:
        return float("nan")
    return (target & reference).kept() / kept


def sharing_per_layer(target: Masks, reference: Masks) -> dict[str, float]:
    both = (target & reference).counts_per_layer()
    return {
        layer: (both[layer][0] / kept if kept else float("nan"))
        for layer, (kept, _) in target.counts_per_layer().items()
    }


def iou(a: Masks, b: Masks) -> float:
    """Intersection over union of the kept weights."""
    union_count = (a | b).kept()
    return (a & b).kept() / union_count if union_count else float("nan")


def keep_probability_histogram(logits: dict[str, Tensor], bins: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin edges of σ(l) over all masked weights on [0, 1] (paper Fig. 7)."""
    probs = torch.cat([torch.sigmoid(l.detach().float()).flatten().cpu() for l in logits.values()])
    counts, edges = np.histogram(probs.numpy(), bins=bins, range=(0.0, 1.0))
    return counts, edges


@contextlib.contextmanager
def applied(model: nn.Module, masks: Masks):
    """Temporarily zero the weights a mask removes; restores them bit for bit on exit."""
    masks.check_matches(model)
    params = dict(model.named_parameters())
    saved = {name: params[name].detach().clone() for name in masks.tensors}
    try:
        with torch.no_grad():
            for name, keep in masks.tensors.items():
                params[name].mul_(keep.to(params[name].device))
        yield model
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temp file in the same folder, then rename: no half-written file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _describe_difference(left: dict, right: dict, only_left: bool = False) -> str:
    problems = []
    for name, shape in left.items():
        if name not in right:
            problems.append(f"{name!r} not in the model" if only_left else f"{name!r} only on the left")
        elif right[name] != shape:
            problems.append(f"{name!r} has shape {list(shape)} but {list(right[name])} is expected")
    if not only_left:
        problems += [f"{name!r} only on the right" for name in right if name not in left]
    return "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
