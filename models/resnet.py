"""A CIFAR-style residual network (Appendix C.7.3 uses ResNet-110: 3 stages of 18 BasicBlocks).

As in He et al. (2016) and bearpaw/pytorch-classification: a 3x3 stem of 16 channels, stages of
16, 32, 64 channels (the 2nd and 3rd start with stride 2 and a 1x1 projection shortcut), spatial
average, linear -> classes; BatchNorm after every convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from models.registry import ExampleInput, ModelExample, register_model


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm1(self.conv1(x)).relu()
        return (self.norm2(self.conv2(y)) + self.shortcut(x)).relu()


class ResNet(nn.Module):
    """[B, C, H, W] -> [B, num_classes]; depth 6n+2 (n=18 gives ResNet-110)."""

    def __init__(self, blocks_per_stage: int = 18, width: int = 16, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, c_in = [], width
        for stage in range(3):
            c_out = width * 2**stage
            for block in range(blocks_per_stage):
                layers.append(BasicBlock(c_in, c_out, 2 if stage > 0 and block == 0 else 1))
                c_in = c_out
        self.stages = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.stages(self.stem(x)).mean(dim=(2, 3)))


def build_resnet(blocks_per_stage: int = 18, width: int = 16, num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet(blocks_per_stage, width, num_classes, in_channels)


@dataclass(frozen=True)
class ResNetSettings:
    builder: str = "resnet"
    blocks_per_stage: int = 18  # depth 6n+2: 18 gives ResNet-110
    width: int = 16


EXAMPLE = ModelExample(dims={"in_channels": 3, "num_classes": 10}, settings={"blocks_per_stage": 1, "width": 4},
                       inputs=(ExampleInput(("batch", "in_channels", 8, 8)),))


@register_model("resnet", ResNetSettings, EXAMPLE)
def resnet(in_channels: int, num_classes: int, blocks_per_stage: int = 18, width: int = 16) -> ResNet:
    return build_resnet(blocks_per_stage, width, num_classes, in_channels)
