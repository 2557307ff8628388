"""Feed-forward ReLU network (paper Sections 3.1-3.3)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from models.registry import ExampleInput, ModelExample, register_model

# Hidden sizes of the paper's add/mul networks (Fig. 9).
FNN_SIZES = {
    "small": (400, 400, 200),
    "medium": (800, 800, 800, 800),
    "big": (2000, 2000, 2000, 2000),
    "huge": (4000, 4000, 4000, 4000),
}


class FeedForward(nn.Module):
    """Linear layers with ReLU between them: [B, input_size] -> [B, output_size]."""

    def __init__(self, input_size: int, hidden_sizes: tuple[int, ...], output_size: int):
        super().__init__()
        sizes = (input_size, *hidden_sizes, output_size)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = layer(x).relu()
        return self.layers[-1](x)


def build_fnn(input_size: int, hidden_sizes: tuple[int, ...], output_size: int) -> FeedForward:
    return FeedForward(input_size, tuple(hidden_sizes), output_size)


def hidden_sizes(size: str) -> tuple[int, ...]:
    """"medium" -> (800, 800, 800, 800); "300,200" -> (300, 200)."""
    if size in FNN_SIZES:
        return FNN_SIZES[size]
    try:
        sizes = tuple(int(s) for s in size.split(","))
    except ValueError:
        raise ValueError(
            f"model.size must be one of {', '.join(FNN_SIZES)} or comma-separated integers, got {size!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"model.size needs positive hidden sizes, got {size!r}")
    return sizes


@dataclass(frozen=True)
class FNNSettings:
    builder: str = "fnn"
    size: str = "small"  # a name of FNN_SIZES, or hidden sizes "800,800"


EXAMPLE = ModelExample(dims={"input_size": 42, "output_size": 20}, settings={"size": "16,12"},
                       inputs=(ExampleInput(("batch", "input_size")),))


@register_model("fnn", FNNSettings, EXAMPLE)
def fnn(input_size: int, output_size: int, size: str = "small") -> FeedForward:
    return build_fnn(input_size, hidden_sizes(size), output_size)
