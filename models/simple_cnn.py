"""The paper's simple CIFAR-10 CNN (Appendix C.7.1, Table 2), with or without dropout (C.7.2).

Table 2: four 3x3 convolutions (32, 64, 128, 256 channels, padding 1) with ReLU, 2x2 max pooling
after the first three, dropout 0.25 after the third and 0.5 after the fourth, spatial average,
linear 256 -> 10. No normalisation layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from models.registry import ExampleInput, ModelExample, register_model

TABLE_2_CHANNELS = (32, 64, 128, 256)
TABLE_2_DROPOUT = (0.25, 0.5)  # after the second-to-last and the last convolution


class SimpleCNN(nn.Module):
    """[B, C, H, W] -> [B, num_classes]."""

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = TABLE_2_CHANNELS, num_classes: int = 10,
                 dropout: bool = True):
        super().__init__()
        dropout_after = dict(zip(range(len(channels) - len(TABLE_2_DROPOUT), len(channels)), TABLE_2_DROPOUT))
        blocks: list[nn.Module] = []
        for index, (c_in, c_out) in enumerate(zip((in_channels, *channels[:-1]), channels)):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]
            if dropout and index in dropout_after:
                blocks.append(nn.Dropout(dropout_after[index]))
            if index < len(channels) - 1:
                blocks.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(channels[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def build_simple_cnn(in_channels: int = 3, channels: tuple[int, ...] = TABLE_2_CHANNELS, num_classes: int = 10,
                     dropout: bool = True) -> SimpleCNN:
    return SimpleCNN(in_channels, tuple(channels), num_classes, dropout)


@dataclass(frozen=True)
class SimpleCNNSettings:
    builder: str = "simple_cnn"
    channels: tuple[int, ...] = TABLE_2_CHANNELS
    dropout: bool = True  # Table 2's dropout; False is the ablation of Appendix C.7.2


EXAMPLE = ModelExample(dims={"in_channels": 3, "num_classes": 10}, settings={"channels": (4, 8), "dropout": False},
                       inputs=(ExampleInput(("batch", "in_channels", 8, 8)),))


@register_model("simple_cnn", SimpleCNNSettings, EXAMPLE)
def simple_cnn(in_channels: int, num_classes: int, channels: tuple[int, ...] = TABLE_2_CHANNELS,
               dropout: bool = True) -> SimpleCNN:
    return build_simple_cnn(in_channels, channels, num_classes, dropout)
