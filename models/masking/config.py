"""Settings of mask training and the choice of which parameters get a mask."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

from torch import nn

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.RMSNorm,
)
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)


@dataclass(frozen=True)
class MaskConfig:
    """How masks are sampled and regularised (paper Section 2, Appendix C.1).

    alpha is the weight of the regulariser α·Σ l_i; use `MaskConfig.from_beta` for the paper's
    β = b·α convention, where b is the mask-training batch size.
    """

    num_samples: int = 4
    temperature: float = 1.0
    initial_keep_probability: float = 0.9
    alpha: float = 0.0

    def __post_init__(self):
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"num_samples (K) must be an integer >= 1, got {self.num_samples!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature τ must be > 0, got {self.temperature!r}")
        if not 0 < self.initial_keep_probability < 1:
            raise ValueError(
                f"initial_keep_probability must be strictly between 0 and 1, got {self.initial_keep_probability!r}"
            )
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0 (it weights Σ l_i), got {self.alpha!r}")

    @classmethod
    def from_beta(cls, beta: float, batch_size: int, **kwargs) -> "MaskConfig":
        """The paper's convention β = b·α: α = β / batch_size."""
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        return cls(alpha=beta / batch_size, **kwargs)

    @property
    def initial_logit(self) -> float:
        p = self.initial_keep_probability
        return math.log(p / (1 - p))


@dataclass(frozen=True)
class ParameterFilter:
    """Which parameters of a model get a mask. By default every parameter.

    exclude: glob patterns on parameter names (e.g. "embedding.*"); each must match something.
    """

    biases: bool = True
    embeddings: bool = True
    normalization: bool = True
    exclude: tuple[str, ...] = ()

    def select(self, model: nn.Module) -> list[str]:
        """Names of the parameters of `model` this filter keeps, in `named_parameters` order."""
        kinds = _parameter_kinds(model)
        all_names = list(kinds)
        for pattern in self.exclude:
            if not fnmatch.filter(all_names, pattern):
                raise ValueError(
                    f"exclude pattern {pattern!r} matches no parameter; names look like: {', '.join(all_names[:5])}"
                )
        selected = [name for name, kind in kinds.items() if self._keeps(name, kind)]
        if not selected:
            raise ValueError(
                f"the parameter filter {self} selects no parameter of {type(model).__name__} "
                f"({len(all_names)} parameters: {', '.join(all_names[:5])}...); loosen it"
            )
        return selected

    def _keeps(self, name: str, kind: set[str]) -> bool:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.exclude):
            return False
        return not (
            ("embedding" in kind and not self.embeddings)
            or ("normalization" in kind and not self.normalization)
            or ("bias" in kind and not self.biases)
        )


def _parameter_kinds(model: nn.Module) -> dict[str, set[str]]:
    """Every parameter name -> its kinds: a subset of {"embedding", "normalization", "bias"}."""
    kinds = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}" if module_name else param_name
            kinds[name] = {
                kind
                for kind, present in (
                    ("embedding", isinstance(module, _EMBEDDING_TYPES)),
                    ("normalization", isinstance(module, _NORM_TYPES)),
                    ("bias", "bias" in param_name),
                )
                if present
            }
    # named_modules skips shared modules; keep the canonical order of named_parameters.
    return {name: kinds[name] for name, _ in model.named_parameters() if name in kinds}
