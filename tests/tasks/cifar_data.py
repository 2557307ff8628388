"""A tiny CIFAR-10 in torchvision's own on-disk format, for tests and offline smoke runs.

CIFAR-10 cannot be downloaded here, so tests write `cifar-10-batches-py/` (pickled batches
data_batch_1..5, test_batch, batches.meta, as in the published archive) with generated images and
load it through the real `torchvision.datasets.CIFAR10`. torchvision checks each file against the
published MD5s, which generated files cannot match: `accept_generated_checksums` swaps in the
generated files' own MD5s, so the check still runs, on these files. That swap lives here, in the
tests, never in the product.

Class 0 ("airplane") is a single constant colour: the easy class a class-removal mask must drop.
Every other class is noise around its own mean colour.

Offline smoke run of a preset on generated data (writes the data if it is missing):

    python -m tests.tasks.cifar_data DATA_DIR run cifar10-cnn --smoke --results-dir RESULTS
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import sys
from pathlib import Path

import numpy as np

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
EASY_CLASS = 0
EASY_COLOUR = (250, 20, 20)


def class_colours(seed: int) -> np.ndarray:
    """[10, 3] mean colour of each class (the same in the training and the test half)."""
    return np.random.default_rng(seed).uniform(60, 200, size=(len(CLASSES), 3))


def class_images(label: int, count: int, colour: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """[count, 3072] uint8 in CIFAR's layout (the R plane, then G, then B, each 32x32 row-major)."""
    if label == EASY_CLASS:
        return np.repeat(np.array(EASY_COLOUR, np.uint8), 1024)[None].repeat(count, 0)
    noise = generator.normal(0, 45, size=(count, 3, 1024))
    return np.clip(colour[None, :, None] + noise, 0, 255).astype(np.uint8).reshape(count, 3072)


def _images_and_labels(per_class: int, generator: np.random.Generator, colours: np.ndarray) -> tuple[np.ndarray, list]:
    """Shuffled images of every class: ([10·per_class, 3072] uint8, labels)."""
    blocks = [class_images(label, per_class, colours[label], generator) for label in range(len(CLASSES))]
    labels = [label for label in range(len(CLASSES)) for _ in range(per_class)]
    order = generator.permutation(len(labels))
    return np.concatenate(blocks)[order], [labels[i] for i in order]


def _write_pickle(path: Path, payload: dict) -> str:
    path.write_bytes(pickle.dumps(payload, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_cifar10(root: Path, train_per_class: int = 20, test_per_class: int = 10, seed: int = 0) -> dict[str, str]:
    """Write <root>/cifar-10-batches-py/ (10 classes × train_per_class training images spread over
    the five training batches, × test_per_class test images). -> file name: MD5."""
    folder = Path(root) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    colours = class_colours(seed)
    data, labels = _images_and_labels(train_per_class, generator, colours)
    checksums = {}
    for index, name in enumerate(TRAIN_FILES):
        part = slice(index * len(labels) // 5, (index + 1) * len(labels) // 5)
        checksums[name] = _write_pickle(folder / name, {"batch_label": f"training batch {index + 1} of 5",
                                                        "labels": labels[part], "data": data[part]})
    data, labels = _images_and_labels(test_per_class, generator, colours)
    checksums["test_batch"] = _write_pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1",
                                                                    "labels": labels, "data": data})
    checksums["batches.meta"] = _write_pickle(folder / "batches.meta", {"label_names": CLASSES,
                                                                        "num_cases_per_batch": len(labels)})
    return checksums


def generated_checksums(root: Path) -> dict[str, str]:
    """file name -> MD5 of the files under <root>/cifar-10-batches-py/."""
    folder = Path(root) / FOLDER
    return {name: hashlib.md5((folder / name).read_bytes()).hexdigest()
            for name in [*TRAIN_FILES, "test_batch", "batches.meta"]}


@contextlib.contextmanager
def accept_generated_checksums(root: Path):
    """Make torchvision's CIFAR10 check the generated files' MD5s instead of the published ones."""
    from torchvision.datasets import CIFAR10

    checksums = generated_checksums(root)
    saved = CIFAR10.train_list, CIFAR10.test_list, CIFAR10.meta
    CIFAR10.train_list = [[name, checksums[name]] for name in TRAIN_FILES]
    CIFAR10.test_list = [["test_batch", checksums["test_batch"]]]
    CIFAR10.meta = {**CIFAR10.meta, "md5": checksums["batches.meta"]}
    try:
        yield checksums
    finally:
        CIFAR10.train_list, CIFAR10.test_list, CIFAR10.meta = saved


def main(arguments: list[str]) -> None:
    """DATA_DIR PIPELINE-ARGUMENTS...: write the data if missing, then run `pipeline` on it."""
    from pipeline.cli import main as pipeline

    data_dir, rest = Path(arguments[0]).resolve(), arguments[1:]
    if not (data_dir / FOLDER / "test_batch").exists():
        write_cifar10(data_dir, train_per_class=100, test_per_class=50)
    with accept_generated_checksums(data_dir):
        data_option = ["--data-dir", str(data_dir)] if rest and rest[0] in ("run", "sweep") else []
        pipeline.main(rest + data_option, standalone_mode=True)


if __name__ == "__main__":
    main(sys.argv[1:])
