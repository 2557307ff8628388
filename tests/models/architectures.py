"""Small instances of every architecture of the paper, plus models the masking core never saw."""

import torch
import torchvision
from torch import nn

from models.cnn import build_cnn
from models.fnn import build_fnn
from models.lstm import build_lstm
from models.resnet import build_resnet
from models.transformer import build_transformer


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
    """name -> (model builder, input builder for a batch of B)."""
    return {
        "fnn": (lambda: build_fnn(42, (16, 12), 20), lambda b: (torch.randn(b, 42),)),
        "lstm": (lambda: build_lstm(42, 16, 20), lambda b: (torch.randn(b, 3, 42),)),
        "transformer": (
            lambda: build_transformer(11, 7, d_model=16, num_heads=2, num_layers=1, feedforward=32),
            lambda b: (torch.randint(0, 11, (b, 5)), torch.randint(0, 7, (b, 4))),
        ),
        "cnn": (lambda: build_cnn(3, (4, 8), 10).eval(), lambda b: (torch.randn(b, 3, 8, 8),)),
        "resnet": (lambda: build_resnet(1, 4, 10).eval(), lambda b: (torch.randn(b, 3, 8, 8),)),
        "unseen": (UnseenModel, lambda b: (torch.randint(0, 13, (b, 6)),)),
        "torchvision-mobilenet": (
            lambda: torchvision.models.mobilenet_v3_small(num_classes=5).eval(),
            lambda b: (torch.randn(b, 3, 32, 32),),
        ),
    }
