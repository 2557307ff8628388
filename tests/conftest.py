import random
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same random state."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return 0


@pytest.fixture
def shared_data() -> Path:
    """The offline datasets beside the checkout (SCAN, MNIST, Mathematics Dataset sample)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"the shared datasets are not at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def test_data(tmp_path_factory, shared_data) -> Path:
    """The shared datasets plus a tiny generated CIFAR-10 (not available offline) in torchvision's
    on-disk format, whose own checksums torchvision accepts for the length of the test, and the
    shipped toy text data (tests/fixtures/text-demo)."""
    from tests.tasks.cifar_data import accept_generated_checksums, write_cifar10

    root = tmp_path_factory.mktemp("data")
    for entry in shared_data.iterdir():
        (root / entry.name).symlink_to(entry)
    (root / "text-demo").symlink_to(Path(__file__).resolve().parent / "fixtures" / "text-demo")
    write_cifar10(root)
    with accept_generated_checksums(root):
        yield root
