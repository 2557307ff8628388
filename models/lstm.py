"""An LSTM from Linear layers, so that torch.func.vmap can batch it over mask samples.

nn.LSTM calls a fused kernel that vmap has no batching rule for; this one is the same cell
(PyTorch's gate order i, f, g, o) written with Linear, sigmoid and tanh.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.registry import ExampleInput, ModelExample, register_model


class LSTMLayer(nn.Module):
    """One LSTM layer: inputs [B, T, input_size] -> outputs [B, T, hidden_size]."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.input_to_gates = nn.Linear(input_size, 4 * hidden_size)
        self.hidden_to_gates = nn.Linear(hidden_size, 4 * hidden_size, bias=False)

    def forward(self, inputs: Tensor, state: tuple[Tensor, Tensor] | None = None,
                keep: Tensor | None = None) -> tuple[Tensor, tuple]:
        """keep [B, T] bool (optional): where False (padding) the state passes through unchanged,
        so the final state of a right-padded sequence is the state after its last real step."""
        batch = inputs.shape[0]
        if state is None:
            zeros = inputs.new_zeros(batch, self.hidden_size)
            state = (zeros, zeros)
        hidden, cell = state
        projected = self.input_to_gates(inputs)  # [B, T, 4H], all steps in one product
        outputs = []
        for t in range(inputs.shape[1]):
            gates = projected[:, t] + self.hidden_to_gates(hidden)
            i, f, g, o = gates.chunk(4, dim=-1)
            new_cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
            new_hidden = torch.sigmoid(o) * torch.tanh(new_cell)
            if keep is not None:
                step_keeps = keep[:, t, None]
                new_cell, new_hidden = torch.where(step_keeps, new_cell, cell), torch.where(step_keeps, new_hidden, hidden)
            cell, hidden = new_cell, new_hidden
            outputs.append(hidden)
        return torch.stack(outputs, 1), (hidden, cell)


class LSTMClassifier(nn.Module):
    """Stacked LSTM layers + linear read-out at every step: [B, T, input_size] -> [B, T, output_size]."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int, num_layers: int = 1):
        super().__init__()
        sizes = [input_size] + [hidden_size] * num_layers
        self.layers = nn.ModuleList(LSTMLayer(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.output_layer = nn.Linear(hidden_size, output_size)

    def forward(self, inputs: Tensor) -> Tensor:
        hidden = inputs
        for layer in self.layers:
            hidden, _ = layer(hidden)
        return self.output_layer(hidden)


def build_lstm(input_size: int, hidden_size: int, output_size: int, num_layers: int = 1) -> LSTMClassifier:
    return LSTMClassifier(input_size, hidden_size, output_size, num_layers)


@dataclass(frozen=True)
class LSTMSettings:
    builder: str = "lstm"
    hidden: int = 256
    # The paper gives only "a hidden state size of 256" (Appendix C.3); the authors' published
    # configuration (profile add_mul and sweeps addmul_rnn / tuple_rnn of github.com/RobertCsordas/modules)
    # stacks two layers.
    layers: int = 2


EXAMPLE = ModelExample(dims={"input_size": 42, "output_size": 20}, settings={"hidden": 16, "layers": 1},
                       inputs=(ExampleInput(("batch", 3, "input_size")),))


@register_model("lstm", LSTMSettings, EXAMPLE)
def lstm(input_size: int, output_size: int, hidden: int = 256, layers: int = 2) -> LSTMClassifier:
    if layers < 1:
        raise ValueError(f"model.layers must be at least 1, got {layers}")
    return build_lstm(input_size, hidden, output_size, layers)
