"""The CIFAR-10 networks against the paper's description (Table 2, Appendix C.7.3)."""

import torch
from torch import nn

from models.simple_cnn import build_simple_cnn
from models.resnet import BasicBlock, build_resnet

# Table 2, one row per layer: (operation, inputs, outputs, kernel, padding), dropout as its own row.
TABLE_2 = [
    ("conv", 3, 32, 3, 1), ("relu",), ("maxpool", 2),
    ("conv", 32, 64, 3, 1), ("relu",), ("maxpool", 2),
    ("conv", 64, 128, 3, 1), ("relu",), ("dropout", 0.25), ("maxpool", 2),
    ("conv", 128, 256, 3, 1), ("relu",), ("dropout", 0.5),
]


def _describe(module: nn.Module) -> tuple:
    if isinstance(module, nn.Conv2d):
        return ("conv", module.in_channels, module.out_channels, module.kernel_size[0], module.padding[0])
    if isinstance(module, nn.ReLU):
        return ("relu",)
    if isinstance(module, nn.MaxPool2d):
        return ("maxpool", module.kernel_size)
    if isinstance(module, nn.Dropout):
        return ("dropout", module.p)
    return (type(module).__name__,)


def test_simple_cnn_matches_table_2_layer_by_layer():
    model = build_simple_cnn()
    assert [_describe(m) for m in model.features] == TABLE_2
    assert (model.classifier.in_features, model.classifier.out_features) == (256, 10)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()), "Table 2 has no BatchNorm"
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    # spatial average of the last feature map, then the linear layer
    expected = model.classifier(model.features(images).mean(dim=(2, 3)))
    torch.testing.assert_close(model(images), expected)
    assert model.features(images).shape == (2, 256, 4, 4)  # 32 -> 16 -> 8 -> 4 after three poolings


def test_simple_cnn_without_dropout_is_table_2_without_the_dropout_rows():
    model = build_simple_cnn(dropout=False)
    assert [_describe(m) for m in model.features] == [row for row in TABLE_2 if row[0] != "dropout"]


def test_resnet110_has_110_weighted_layers_in_three_stages_of_18_basic_blocks():
    model = build_resnet(18)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 54
    # 1 stem conv + 2 convs per block + the linear layer; projection shortcuts are not counted in the depth
    projections = sum(1 for b in blocks if not isinstance(b.shortcut, nn.Identity))
    convs = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d)) - projections
    assert convs + 1 == 110 and projections == 2
    assert [b.conv1.out_channels for b in blocks[::18]] == [16, 32, 64]
    assert model.classifier.in_features == 64
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
