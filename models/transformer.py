"""Transformer encoder-decoder for sequence tasks (SCAN, Mathematics Dataset), batch first."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Seq2SeqTransformer(nn.Module):
    """Token ids source [B, S], target [B, T] -> logits [B, T, output_vocab] (causal decoder)."""

    def __init__(self, input_vocab: int, output_vocab: int, d_model: int = 128, num_heads: int = 4,
                 num_layers: int = 3, feedforward: int = 256, max_length: int = 512):
        super().__init__()
        self.source_embedding = nn.Embedding(input_vocab, d_model)
        self.target_embedding = nn.Embedding(output_vocab, d_model)
        self.register_buffer("positions", _sinusoidal_positions(max_length, d_model), persistent=False)
        self.transformer = nn.Transformer(d_model, num_heads, num_layers, num_layers, feedforward, dropout=0.0,
                                          batch_first=True)
        self.output_layer = nn.Linear(d_model, output_vocab)

    def forward(self, source: Tensor, target: Tensor) -> Tensor:
        src = self.source_embedding(source) + self.positions[: source.shape[1]]
        tgt = self.target_embedding(target) + self.positions[: target.shape[1]]
        causal = nn.Transformer.generate_square_subsequent_mask(target.shape[1], device=target.device)
        return self.output_layer(self.transformer(src, tgt, tgt_mask=causal, tgt_is_causal=True))


def _sinusoidal_positions(length: int, d_model: int) -> Tensor:
    """[length, d_model] fixed sinusoidal position encodings."""
    position = torch.arange(length).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


def build_transformer(input_vocab: int, output_vocab: int, d_model: int = 128, num_heads: int = 4,
                      num_layers: int = 3, feedforward: int = 256) -> Seq2SeqTransformer:
    return Seq2SeqTransformer(input_vocab, output_vocab, d_model, num_heads, num_layers, feedforward)
