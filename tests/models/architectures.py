"""Small instances of every registered model family, plus models the masking core never saw.

The families come from the model registry, each built from the example it registers (its dims,
small settings and the inputs of a batch): a new family is covered without an edit here.
"""

import functools

import pytest
import torch
import torchvision
from torch import nn

from models.registry import ModelFamily, build_model, model_families, model_settings


def example_model(family: ModelFamily) -> nn.Module:
    """The family's example instance (skipped where an optional package it needs is missing)."""
    for package in family.example.needs:
        pytest.importorskip(package)
    return build_model(model_settings(family.name, **family.example.settings), family.example.dims)


def example_batch(family: ModelFamily, batch_size: int) -> tuple:
    """The positional inputs of the family's example for a batch of `batch_size`: token ids below the
    size of their vocabulary, a filled integer tensor, or standard normal numbers."""
    dims = family.example.dims
    return tuple(_example_input(spec, dims, batch_size) for spec in family.example.inputs)


def _example_input(spec, dims: dict, batch_size: int) -> torch.Tensor:
    shape = tuple(batch_size if size == "batch" else dims[size] if isinstance(size, str) else size
                  for size in spec.shape)
    if spec.vocabulary is not None:
        return torch.randint(0, dims[spec.vocabulary], shape)
    if spec.fill is not None:
        return torch.full(shape, spec.fill)
    return torch.randn(shape)


def family_architectures() -> dict:
    """family name -> (model builder, input builder for a batch of B), for every registered family."""
    return {name: (functools.partial(example_model, family), functools.partial(example_batch, family))
            for name, family in model_families().items() if family.example is not None}


class UnseenModel(nn.Module):
    """Standard layers in an arrangement nothing in the project uses: [B, L] ids -> [B, 3]."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(13, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Sequential(nn.GELU(), nn.Linear(8, 3))

    def forward(self, ids):
        x = self.embed(ids)
        x = self.norm(self.conv(x.transpose(1, 2)).transpose(1, 2) + x)
        x, _ = self.attention(x, x, x, need_weights=False)
        return self.head(x.mean(1))


def architectures():
    """name -> (model builder, input builder for a batch of B): every registered family, and models
    built from standard layers that no family builds."""
    return family_architectures() | {
        "unseen": (UnseenModel, lambda b: (torch.randint(0, 13, (b, 6)),)),
        "torchvision-mobilenet": (
            lambda: torchvision.models.mobilenet_v3_small(num_classes=5).eval(),
            lambda b: (torch.randn(b, 3, 32, 32),),
        ),
    }


def vision_transformer():
    """A tiny torchvision ViT: [B, 3, 8, 8] -> [B, 3]."""
    model = torchvision.models.VisionTransformer(image_size=8, patch_size=4, num_layers=1, num_heads=2, hidden_dim=8,
                                                 mlp_dim=16, num_classes=3)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: no gradient would flow
    return model


class TiedLanguageModel(nn.Module):
    """Embedding and read-out share one weight: [B, L] ids -> [B, L, 13]."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(13, 8)
        self.mix = nn.Linear(8, 8)
        self.read_out = nn.Linear(8, 13, bias=False)
        self.read_out.weight = self.embed.weight

    def forward(self, ids):
        return self.read_out(torch.tanh(self.mix(self.embed(ids))))


def _with_batchnorm_statistics(model: nn.Module, input_shape: tuple) -> nn.Module:
    """BatchNorm running statistics as training leaves them (at initialisation they are 0 and 1, and
    in eval mode mobilenet's squeeze-excitation gates then saturate: no gradient passes them)."""
    model.train()
    with torch.no_grad():
        for _ in range(20):
            model(torch.randn(16, *input_shape))
    return model


def unseen_modules():
    """name -> (model builder, input builder for a batch of B, batch_dims, whether vmap can batch it):
    modules of every kind that nothing in the project builds, for the masking core's contract test.
    torchvision models are built without weights: nothing is downloaded."""
    return {
        "conv-batchnorm": (
            lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(4, 3)),
            lambda b: (torch.randn(b, 3, 6, 6),), 0, True,
        ),
        "torchvision-mobilenet": (
            lambda: _with_batchnorm_statistics(torchvision.models.mobilenet_v3_small(weights=None, num_classes=3),
                                               (3, 32, 32)),
            lambda b: (torch.randn(b, 3, 32, 32),), 0, True,
        ),
        "torchvision-resnet18": (
            lambda: torchvision.models.resnet18(weights=None, num_classes=3),
            lambda b: (torch.randn(b, 3, 16, 16),), 0, True,
        ),
        "vision-transformer": (vision_transformer, lambda b: (torch.randn(b, 3, 8, 8),), 0, True),
        "transformer-encoder": (
            lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2),
            lambda b: (torch.randn(b, 5, 8),), 0, True,
        ),
        "self-attention": (UnseenModel, lambda b: (torch.randint(0, 13, (b, 6)),), 0, True),
        "gru-time-first": (lambda: nn.GRU(4, 8, num_layers=2), lambda b: (torch.randn(5, b, 4),), 1, False),
        "lstm": (lambda: nn.LSTM(4, 8, batch_first=True), lambda b: (torch.randn(b, 5, 4),), 0, False),
        "tied-weights": (TiedLanguageModel, lambda b: (torch.randint(0, 13, (b, 6)),), 0, True),
    }
