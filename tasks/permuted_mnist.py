"""Permuted MNIST (paper Section 3.3, Appendix C.5): task t is MNIST with a fixed pixel permutation.

Images are read with torchvision.datasets.MNIST from `<data_dir>/MNIST/raw/` (the four unpacked IDX
files), flattened to 784 inputs and normalised with MNIST's mean and std. Task 0 is the identity
permutation; task t > 0 permutes the pixels with a permutation drawn from (seed, t), so every resume
and every evaluation sees the same permutations. `with_seed(seed)` gives the task of a trial's seed
(the engine builds the task without a seed, which is seed 0).

Splits are "task0", "task1", ...: training batches come from the 60k training images, evaluation
batches from the 10k test images.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tasks.registry import register_task

log = logging.getLogger(__name__)

PIXELS = 28 * 28
CLASSES = 10
MEAN, STD = 0.1307, 0.3081  # of the MNIST training images, the usual normalisation
EVAL_CHUNK = 5000  # test images per evaluation batch

# file -> (IDX magic number, item count); an image item is 28×28 bytes, a label item one byte.
IDX_FILES = {
    "train-images-idx3-ubyte": (2051, 60_000),
    "train-labels-idx1-ubyte": (2049, 60_000),
    "t10k-images-idx3-ubyte": (2051, 10_000),
    "t10k-labels-idx1-ubyte": (2049, 10_000),
}
# Logits of a new task's mask: (weights earlier tasks use, weights no earlier task uses).
LOGIT_INITIALISATIONS = {
    "default": (2.0, 2.0),  # the authors' code: every logit 2 (P ≈ 0.88)
    "prefer-old": (2.0, 0.0),  # Fig. 15a
    "prefer-old-more": (2.0, -1.0),  # Fig. 15b
}


@dataclass(frozen=True)
class PermutedMNISTOptions:
    """permutations: how many tasks (the paper: 11). logit_init: a name of LOGIT_INITIALISATIONS or
    "USED,NEW", the initial mask logits of weights earlier tasks use and of the free ones (the first
    task's logits all start at USED). download: fetch MNIST with torchvision when it is missing."""

    permutations: int = 11
    logit_init: str = "default"
    download: bool = False


def parse_logit_init(value: str) -> tuple[float, float]:
    """"prefer-old" -> (2.0, 0.0); "2,-1" -> (2.0, -1.0); anything else is an error."""
    if value in LOGIT_INITIALISATIONS:
        return LOGIT_INITIALISATIONS[value]
    parts = value.split(",")
    try:
        used, new = (float(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        used = new = None
    if used is None or not (math.isfinite(used) and math.isfinite(new)):
        raise ValueError(f"task_options.logit_init must be one of {', '.join(LOGIT_INITIALISATIONS)} or two finite "
                         f"logits 'USED,NEW' (e.g. '2,-1'), got {value!r}")
    return used, new


def task_permutation(seed: int, task: int) -> Tensor:
    """[784] pixel order of task `task`: the identity for task 0, else drawn from (seed, task)."""
    if task == 0:
        return torch.arange(PIXELS)
    rng = np.random.default_rng(np.random.SeedSequence([seed, task]))
    return torch.from_numpy(rng.permutation(PIXELS))


def check_mnist_files(data_dir: Path) -> None:
    """Fail naming the file when one of the four IDX files is missing, not IDX, or truncated."""
    raw = data_dir / "MNIST" / "raw"
    for name, (magic, count) in IDX_FILES.items():
        path = raw / name
        item_bytes = PIXELS if magic == 2051 else 1
        header_bytes = 16 if magic == 2051 else 8
        expected = header_bytes + count * item_bytes
        if not path.is_file():
            raise FileNotFoundError(
                f"MNIST file {path} is missing: the data directory {str(data_dir)!r} must hold the four unpacked IDX "
                f"files in MNIST/raw/ (as torchvision.datasets.MNIST expects); set --data-dir, or "
                f"task_options.download=true where downloading is allowed")
        size = path.stat().st_size
        with path.open("rb") as file:
            found_magic = int.from_bytes(file.read(4), "big")
        if found_magic != magic or size != expected:
            raise ValueError(
                f"MNIST file {path} is damaged: {size} bytes with IDX magic number {found_magic}, but the original "
                f"has {expected} bytes and magic {magic} ({count} items); replace it with an intact copy")


@functools.lru_cache(maxsize=4)
def load_mnist(data_dir: Path, train: bool) -> tuple[Tensor, Tensor]:
    """(images [N, 784] uint8, labels [N] int64), read once per process and folder."""
    import torchvision

    dataset = torchvision.datasets.MNIST(root=str(data_dir), train=train, download=False)
    return dataset.data.reshape(-1, PIXELS).contiguous(), dataset.targets.clone()


def normalise(images: Tensor) -> Tensor:
    """uint8 [B, 784] -> float [B, 784] with zero mean and unit std over MNIST's training pixels."""
    return (images.float() / 255.0 - MEAN) / STD


@register_task("permuted_mnist")
class PermutedMNIST:
    """Classify the digit of a pixel-permuted MNIST image: inputs [B, 784], labels [B]."""

    version = 1
    Options = PermutedMNISTOptions
    control_mask = None
    dims = {"input_size": PIXELS, "output_size": CLASSES}

    def __init__(self, options: PermutedMNISTOptions, data_dir: Path, seed: int = 0):
        if options.permutations < 2:
            raise ValueError(f"task_options.permutations must be at least 2 (transfer needs a second task), "
                             f"got {options.permutations}")
        self.initial_logits = parse_logit_init(options.logit_init)
        self.options, self.data_dir, self.seed = options, Path(data_dir), seed
        if options.download:
            self._download()
        check_mnist_files(self.data_dir)
        self.task_names = tuple(f"task{t}" for t in range(options.permutations))
        self.pretrain_split = self.task_names[0]
        self.mask_splits = {name: name for name in self.task_names}
        self.eval_splits = self.task_names
        self.permutations = [task_permutation(seed, t) for t in range(options.permutations)]
        self._on_device: dict[tuple[bool, str], tuple[Tensor, Tensor]] = {}

    def with_seed(self, seed: int) -> "PermutedMNIST":
        """The same task with the permutations of trial seed `seed`."""
        return PermutedMNIST(self.options, self.data_dir, seed)

    def _download(self) -> None:
        import torchvision

        for train in (True, False):
            torchvision.datasets.MNIST(root=str(self.data_dir), train=train, download=True)

    def _data(self, train: bool, device) -> tuple[Tensor, Tensor]:
        key = (train, str(device))
        if key not in self._on_device:
            images, labels = load_mnist(self.data_dir, train)
            self._on_device[key] = (images.to(device), labels.to(device))
        return self._on_device[key]

    def task_index(self, split: str) -> int:
        if split not in self.task_names:
            raise ValueError(f"permuted MNIST has no split {split!r}; its splits are {', '.join(self.task_names)}")
        return self.task_names.index(split)

    def sample(self, split: str, batch_size: int, generator: torch.Generator, device="cpu") -> tuple[Tensor, Tensor]:
        """(inputs [B, 784] float, labels [B]): training images drawn with replacement by `generator`."""
        permutation = self.permutations[self.task_index(split)]
        images, labels = self._data(True, device)
        rows = torch.randint(0, len(labels), (batch_size,), generator=generator, device=generator.device)
        rows = rows.to(images.device)
        return normalise(images[rows][:, permutation.to(images.device)]), labels[rows]

    def loss(self, model: nn.Module, batch) -> Tensor:
        inputs, labels = batch
        return nn.functional.cross_entropy(model(inputs), labels)

    def eval_batches(self, split: str, size: int, device="cpu") -> list[tuple[Tensor, Tensor]]:
        """The first min(size, 10000) test images of the split's permutation, in chunks of 5000."""
        permutation = self.permutations[self.task_index(split)]
        images, labels = self._data(False, device)
        images, labels = images[:size], labels[:size]
        return [(normalise(images[i:i + EVAL_CHUNK][:, permutation.to(images.device)]), labels[i:i + EVAL_CHUNK])
                for i in range(0, len(labels), EVAL_CHUNK)]

    def correct(self, model: nn.Module, batch) -> Tensor:
        inputs, labels = batch
        return model(inputs).argmax(1) == labels
