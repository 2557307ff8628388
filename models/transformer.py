"""Transformer encoder-decoder for sequence tasks (SCAN, Mathematics Dataset), batch first."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.registry import ExampleInput, ModelExample, register_model


class Seq2SeqTransformer(nn.Module):
    """Token ids source [B, S], target [B, T] -> logits [B, T, output_vocab] (causal decoder).

    tied=True: one embedding for source and target tokens, also used as the output layer's weight
    (one parameter, so a mask over it is one mask); needs input_vocab == output_vocab.
    teacher_forcing=False (forward): only target[:, 0] is read and each step's input is the previous
    step's argmax, the same contract as models.lstm_seq2seq.LSTMSeq2Seq.
    """

    def __init__(self, input_vocab: int, output_vocab: int, d_model: int = 128, num_heads: int = 4,
                 num_layers: int = 3, feedforward: int = 256, max_length: int = 512, dropout: float = 0.0,
                 tied: bool = False):
        super().__init__()
        if tied and input_vocab != output_vocab:
            raise ValueError(f"tied embeddings need one vocabulary, got input {input_vocab} and output {output_vocab}")
        self.source_embedding = nn.Embedding(input_vocab, d_model)
        # Tied: no second name for the one embedding module (torch.func.functional_call, which masking uses,
        # does not restore a module registered under two names correctly).
        self.target_embedding = None if tied else nn.Embedding(output_vocab, d_model)
        self.register_buffer("positions", _sinusoidal_positions(max_length, d_model), persistent=False)
        self.transformer = nn.Transformer(d_model, num_heads, num_layers, num_layers, feedforward, dropout=dropout,
                                          batch_first=True)
        # Padded sources as nested tensors are an inference shortcut that vmap (mask samples) cannot batch.
        self.transformer.encoder.enable_nested_tensor = self.transformer.encoder.use_nested_tensor = False
        self.output_layer = nn.Linear(d_model, output_vocab, bias=not tied)
        if tied:
            self.output_layer.weight = self.source_embedding.weight

    def forward(self, source: Tensor, target: Tensor, source_padding: Tensor | None = None,
                teacher_forcing: bool = True) -> Tensor:
        """source [B, S], target [B, T] -> logits [B, T, output_vocab].

        source_padding [B, S] bool, True at padding: neither the encoder nor the decoder attends there
        (so an example's output does not depend on how much padding its batch needed).
        """
        memory = self.transformer.encoder(self.source_embedding(source) + self.positions[: source.shape[1]],
                                          src_key_padding_mask=source_padding)
        if teacher_forcing:
            return self.decode(memory, target, source_padding)
        prefix = target[:, :1]
        for _ in range(target.shape[1]):
            logits = self.decode(memory, prefix, source_padding)
            prefix = torch.cat([prefix, logits[:, -1:].argmax(-1)], 1)
        return logits

    def decode(self, memory: Tensor, target: Tensor, source_padding: Tensor | None) -> Tensor:
        """memory [B, S, d_model], target [B, T] -> logits [B, T, output_vocab] (causal)."""
        tgt = (self.target_embedding or self.source_embedding)(target) + self.positions[: target.shape[1]]
        causal = nn.Transformer.generate_square_subsequent_mask(target.shape[1], device=target.device)
        hidden = self.transformer.decoder(tgt, memory, tgt_mask=causal, tgt_is_causal=True,
                                          memory_key_padding_mask=source_padding)
        return self.output_layer(hidden)


def _sinusoidal_positions(length: int, d_model: int) -> Tensor:
    """[length, d_model] fixed sinusoidal position encodings."""
    position = torch.arange(length).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


def build_transformer(input_vocab: int, output_vocab: int, d_model: int = 128, num_heads: int = 4,
                      num_layers: int = 3, feedforward: int = 256, dropout: float = 0.0,
                      tied: bool = False, max_length: int = 512) -> Seq2SeqTransformer:
    return Seq2SeqTransformer(input_vocab, output_vocab, d_model, num_heads, num_layers, feedforward, max_length,
                              dropout, tied)


@dataclass(frozen=True)
class TransformerSettings:
    builder: str = "transformer"
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 3  # encoder layers, and as many decoder layers
    feedforward: int = 256
    dropout: float = 0.0
    tied: bool = False  # one embedding for source, target and output layer
    max_length: int = 512


EXAMPLE = ModelExample(dims={"input_vocab": 11, "output_vocab": 7},
                       settings={"d_model": 16, "num_heads": 2, "num_layers": 1, "feedforward": 32},
                       inputs=(ExampleInput(("batch", 5), "input_vocab"), ExampleInput(("batch", 4), "output_vocab")))

register_model("transformer", TransformerSettings, EXAMPLE)(build_transformer)
