"""CIFAR-10 image classification (paper Section 5, Appendix B.1 and C.7), read by torchvision.

The images come from `torchvision.datasets.CIFAR10` pointed at `<data_dir>/cifar-10-batches-py/`
(torchvision checks the MD5 of every batch file). Splits are sets of classes:

- "all": every training image; "without-<class>": all but one class (class removal, Section 5);
  "pair-<class>-<class>": two classes (mask stability, Appendix B.1);
- "test", "test-<same suffix>": the test images of the same classes.

Two mask plans (task_options.masks): "class-removal" (a control mask "all" plus one mask per
removed class, 11 masks) and "class-pairs" (two masks, "…-a" and "…-b", for each of the 45 class
pairs; the mask-stability recipe trains 10 of them per network).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

from tasks.registry import register_task

log = logging.getLogger(__name__)

# Per-channel mean and std of the CIFAR-10 training images (the values torchvision examples use).
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
CROP_PADDING = 4
EVAL_CHUNK = 500
MASK_PLANS = ("class-removal", "class-pairs")
PAIR_MASK_SUFFIXES = ("a", "b")  # two masks per pair, each with its own mask seed


class Batch(NamedTuple):
    """images [B, 3, 32, 32] float (normalised); labels [B] class indices."""

    images: Tensor
    labels: Tensor


@dataclasses.dataclass(frozen=True)
class Cifar10Options:
    download: bool = False  # let torchvision download CIFAR-10 (170 MB) into data_dir when it is missing
    augment: bool = False  # random crop (padding 4) and horizontal flip of training batches (ResNet-110)
    masks: str = "class-removal"  # which masks the task defines: one of MASK_PLANS
    pairs: int = 10  # class-pairs plan: how many of the 45 pairs the mask-stability recipe uses per network


class Images(NamedTuple):
    """pixels [N, 3, 32, 32] uint8; labels [N] int64."""

    pixels: Tensor
    labels: Tensor


def load_cifar10(root: Path, train: bool, download: bool) -> tuple[Images, list[str]]:
    """One half of CIFAR-10 through torchvision -> (images, class names); a clear error if absent."""
    from torchvision.datasets import CIFAR10

    try:
        dataset = CIFAR10(str(root), train=train, download=download)
    except RuntimeError as error:
        raise FileNotFoundError(
            f"CIFAR-10 not found or corrupted under {root / CIFAR10.base_folder} ({error}). torchvision expects the "
            f"extracted python version there (data_batch_1..5, test_batch, batches.meta with their published MD5s). "
            f"Download it with --set task_options.download=true (needs internet), or extract {CIFAR10.url} into "
            f"{root}, or point --data-dir at the folder that holds {CIFAR10.base_folder}/") from None
    pixels = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return Images(pixels, torch.tensor(dataset.targets, dtype=torch.int64)), list(dataset.classes)


@register_task("cifar10")
class Cifar10Task:
    version = 1
    Options = Cifar10Options
    pair_mask_suffixes = PAIR_MASK_SUFFIXES
    pretrain_split = "all"
    eval_splits = ("test",)

    def __init__(self, options: Cifar10Options = Cifar10Options(), data_dir: Path | None = None):
        if options.masks not in MASK_PLANS:
            raise ValueError(f"task_options.masks must be one of {', '.join(MASK_PLANS)}, got {options.masks!r}")
        self.options = options
        self.data_dir = Path(data_dir) if data_dir is not None else Path(".")
        self.train_images, self.classes = load_cifar10(self.data_dir, True, options.download)
        self.test_images, _ = load_cifar10(self.data_dir, False, False)
        self.dims = {"in_channels": 3, "num_classes": len(self.classes)}
        self.mask_splits, self.control_mask = self._mask_plan(options.masks)
        self._on_device: dict[tuple[str, str], Images] = {}

    def _mask_plan(self, plan: str) -> tuple[dict[str, str], str | None]:
        if plan == "class-removal":
            return {"all": "all", **{f"without-{c}": f"without-{c}" for c in self.classes}}, "all"
        pairs = [f"pair-{a}-{b}" for a, b in itertools.combinations(self.classes, 2)]
        return {f"{pair}-{suffix}": pair for pair in pairs for suffix in PAIR_MASK_SUFFIXES}, None

    # -- splits ----------------------------------------------------------------------------------
    def classes_of(self, split: str) -> list[int]:
        """The class indices a split holds: "all"/"test" every class, "without-cat" all but cat,
        "pair-cat-dog" two (a "test-" prefix names the same classes on the test images)."""
        name = split.removeprefix("test-") if split != "test" else "all"
        if name == "all":
            return list(range(len(self.classes)))
        kind, _, rest = name.partition("-")
        if kind == "without" and rest in self.classes:
            return [i for i, c in enumerate(self.classes) if c != rest]
        if kind == "pair":
            first, _, second = rest.partition("-")
            if first in self.classes and second in self.classes and first != second:
                return sorted({self.classes.index(first), self.classes.index(second)})
        raise ValueError(f"unknown CIFAR-10 split {split!r}: use all, without-<class>, pair-<class>-<class> "
                         f"(optionally prefixed test-) with classes {', '.join(self.classes)}")

    def _images(self, which: str, device) -> Images:
        """The train or test images on `device`, moved there once."""
        key = (which, str(device))
        if key not in self._on_device:
            images = self.train_images if which == "train" else self.test_images
            self._on_device[key] = Images(images.pixels.to(device), images.labels.to(device))
        return self._on_device[key]

    def _indices(self, images: Images, split: str) -> Tensor:
        """[N_split] indices of the split's images."""
        wanted = torch.tensor(self.classes_of(split), device=images.labels.device)
        return torch.nonzero(torch.isin(images.labels, wanted)).squeeze(1)

    # -- the Task protocol ---------------------------------------------------------------------------
    def sample(self, split: str, batch_size: int, generator: torch.Generator, device="cpu") -> Batch:
        """B training images of the split's classes, drawn uniformly with replacement."""
        if split.startswith("test"):
            raise ValueError(f"{split!r} is a test split; training batches come from the training splits")
        images = self._images("train", device)
        indices = self._indices(images, split)
        chosen = indices[torch.randint(0, len(indices), (batch_size,), generator=generator, device=device)]
        pixels = images.pixels[chosen]
        if self.options.augment:
            pixels = augment(pixels, generator)
        return Batch(normalize(pixels), images.labels[chosen])

    def loss(self, model: nn.Module, batch: Batch) -> Tensor:
        return nn.functional.cross_entropy(model(batch.images), batch.labels)

    def eval_batches(self, split: str, size: int, device="cpu") -> list[Batch]:
        """The first `size` test images of the split's classes, in the test set's order."""
        images = self._images("test", device)
        indices = self._indices(images, split if split.startswith("test") else f"test-{split}")[:size]
        return [Batch(normalize(images.pixels[chunk]), images.labels[chunk]) for chunk in indices.split(EVAL_CHUNK)]

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> Tensor:
        """[B] predicted class indices."""
        return model(batch.images).argmax(1)

    def correct(self, model: nn.Module, batch: Batch) -> Tensor:
        return self.predict(model, batch) == batch.labels

    @torch.no_grad()
    def condition_rows(self, condition: str, inverted: bool, model: nn.Module,
                       batches: dict[str, list[Batch]]) -> dict[str, list[dict]]:
        """Figs. 18-21: the confusion matrix on the test set with each (not inverted) mask applied."""
        if inverted:
            return {}
        counts = self.confusion_matrix(model, batches["test"])
        return {"confusion": confusion_rows(condition, counts, self.classes)}

    def confusion_matrix(self, model: nn.Module, batches: list[Batch]) -> Tensor:
        """[C, C] counts: row = true class, column = predicted class."""
        size = len(self.classes)
        counts = torch.zeros(size * size, dtype=torch.int64)
        for batch in batches:
            pairs = batch.labels * size + self.predict(model, batch)
            counts += torch.bincount(pairs.cpu(), minlength=size * size)
        return counts.view(size, size)


def confusion_rows(mask: str, counts: Tensor, classes: list[str]) -> list[dict]:
    """[C, C] counts -> one row per (true, predicted) pair."""
    return [{"mask": mask, "true_class": classes[t], "predicted_class": classes[p], "count": int(counts[t, p])}
            for t in range(len(classes)) for p in range(len(classes))]


def normalize(pixels: Tensor) -> Tensor:
    """[B, 3, H, W] uint8 -> float, per-channel standardised."""
    mean = torch.tensor(MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255 - mean) / std


def augment(pixels: Tensor, generator: torch.Generator) -> Tensor:
    """Random crop of the zero-padded image (padding 4) and a horizontal flip with probability ½,
    drawn with `generator` only: [B, 3, H, W] uint8 -> [B, 3, H, W] uint8."""
    batch, _, height, width = pixels.shape
    device = pixels.device
    padded = nn.functional.pad(pixels, (CROP_PADDING,) * 4)
    top = torch.randint(0, 2 * CROP_PADDING + 1, (batch,), generator=generator, device=device)
    left = torch.randint(0, 2 * CROP_PADDING + 1, (batch,), generator=generator, device=device)
    flip = torch.rand(batch, generator=generator, device=device) < 0.5
    rows = top[:, None] + torch.arange(height, device=device)  # [B, H]
    columns = torch.arange(width, device=device).expand(batch, width)
    columns = torch.where(flip[:, None], columns.flip(1), columns) + left[:, None]  # [B, W]
    examples = torch.arange(batch, device=device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[examples, rows[:, :, None], columns[:, None, :]]  # [B, H, W, 3]
    return cropped.permute(0, 3, 1, 2).contiguous()
