"""The LSTM encoder-decoder of Lake & Baroni (2018) as used by the paper on SCAN (Appendix C.6.1).

Built from models.lstm.LSTMLayer (Linear, sigmoid, tanh) so that torch.func.vmap batches it over
mask samples; nn.LSTM has no vmap rule and would fall back to a per-sample loop.

Contract shared with models.transformer.Seq2SeqTransformer (what tasks/scan.py relies on):
  forward(source [B, S], target [B, T], source_padding [B, S] bool or None, teacher_forcing=True)
  -> logits [B, T, output_vocab] (source_padding: True at right-padding, which the encoder skips);
  with teacher_forcing=False only target[:, 0] (the start token) is read and the decoder feeds
  back its own argmax for T steps; `output_layer` is the nn.Linear whose row i scores token i.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.lstm import LSTMLayer
from models.registry import ExampleInput, ModelExample, register_model

State = list[tuple[Tensor, Tensor]]  # per layer (hidden [B, H], cell [B, H])


class LSTMSeq2Seq(nn.Module):
    """Encoder and decoder of `num_layers` LSTM layers each, no attention; the decoder starts from
    the encoder's final state. Dropout on the embeddings, between layers and before the output layer."""

    def __init__(self, input_vocab: int, output_vocab: int, embedding_size: int = 16, hidden: int = 200,
                 num_layers: int = 2, dropout: float = 0.5):
        super().__init__()
        self.source_embedding = nn.Embedding(input_vocab, embedding_size)
        self.target_embedding = nn.Embedding(output_vocab, embedding_size)
        sizes = [embedding_size] + [hidden] * (num_layers - 1)
        self.encoder = nn.ModuleList(LSTMLayer(size, hidden) for size in sizes)
        self.decoder = nn.ModuleList(LSTMLayer(size, hidden) for size in sizes)
        self.dropout = nn.Dropout(dropout)
        self.output_layer = nn.Linear(hidden, output_vocab)

    def forward(self, source: Tensor, target: Tensor, source_padding: Tensor | None = None,
                teacher_forcing: bool = True) -> Tensor:
        """source [B, S], target [B, T] (start token first) -> logits [B, T, output_vocab]."""
        state = self.encode(source, source_padding)
        if teacher_forcing:
            hidden, _ = self.decode(self.target_embedding(target), state)
            return self.output_layer(self.dropout(hidden))
        return self.free_running(target[:, :1], target.shape[1], state)

    def encode(self, source: Tensor, source_padding: Tensor | None = None) -> State:
        """[B, S] -> the final (hidden, cell) of every encoder layer, padding skipped."""
        keep = None if source_padding is None else ~source_padding
        inputs, state = self.source_embedding(source), []
        for layer in self.encoder:
            inputs, layer_state = layer(self.dropout(inputs), keep=keep)
            state.append(layer_state)
        return state

    def decode(self, embedded: Tensor, state: State) -> tuple[Tensor, State]:
        """[B, T, E] decoder inputs from `state` -> (top-layer outputs [B, T, H], final state)."""
        inputs, final = embedded, []
        for layer, layer_state in zip(self.decoder, state):
            inputs, layer_final = layer(self.dropout(inputs), layer_state)
            final.append(layer_final)
        return inputs, final

    def free_running(self, start: Tensor, steps: int, state: State) -> Tensor:
        """start [B, 1] -> logits [B, steps, V]; each step's input is the previous step's argmax."""
        token, logits = start, []
        for _ in range(steps):
            hidden, state = self.decode(self.target_embedding(token), state)
            step_logits = self.output_layer(self.dropout(hidden))  # [B, 1, V]
            logits.append(step_logits)
            token = step_logits.argmax(-1)
        return torch.cat(logits, 1)


@dataclass(frozen=True)
class LSTMSeq2SeqSettings:
    builder: str = "lstm-seq2seq"
    embedding_size: int = 16
    hidden: int = 200
    num_layers: int = 2
    dropout: float = 0.5


EXAMPLE = ModelExample(dims={"input_vocab": 15, "output_vocab": 9},
                       settings={"embedding_size": 4, "hidden": 8, "dropout": 0.0},
                       inputs=(ExampleInput(("batch", 6), "input_vocab"), ExampleInput(("batch", 5), "output_vocab")))


@register_model("lstm-seq2seq", LSTMSeq2SeqSettings, EXAMPLE)
def build_lstm_seq2seq(input_vocab: int, output_vocab: int, embedding_size: int = 16, hidden: int = 200,
                       num_layers: int = 2, dropout: float = 0.5) -> LSTMSeq2Seq:
    return LSTMSeq2Seq(input_vocab, output_vocab, embedding_size, hidden, num_layers, dropout)
