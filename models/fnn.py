"""Feed-forward ReLU network (paper Sections 3.1-3.3)."""

from __future__ import annotations

from torch import Tensor, nn

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
