"""The paper's simple CIFAR-10 CNN (Appendix C.7.1): conv + BatchNorm + ReLU blocks, dropout."""

from __future__ import annotations

from torch import Tensor, nn


class SimpleCNN(nn.Module):
    """[B, C, H, W] -> [B, num_classes]."""

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] = (32, 64, 128), num_classes: int = 10,
                 dropout: float = 0.25):
        super().__init__()
        blocks = []
        for c_in, c_out in zip((in_channels, *channels[:-1]), channels):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2),
                       nn.Dropout(dropout)]
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(channels[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))


def build_cnn(in_channels: int = 3, channels: tuple[int, ...] = (32, 64, 128), num_classes: int = 10,
              dropout: float = 0.25) -> SimpleCNN:
    return SimpleCNN(in_channels, tuple(channels), num_classes, dropout)
