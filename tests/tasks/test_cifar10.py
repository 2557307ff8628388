"""The CIFAR-10 task on a generated dataset in torchvision's format, read by torchvision itself."""

import functools
import hashlib
import http.server
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.datasets import CIFAR10

from tasks.cifar10 import CROP_PADDING, Batch, Cifar10Options, Cifar10Task, augment
from tests.tasks.cifar_data import CLASSES, EASY_CLASS, EASY_COLOUR, FOLDER, accept_generated_checksums, write_cifar10


@pytest.fixture
def data_dir(tmp_path):
    write_cifar10(tmp_path, train_per_class=6, test_per_class=4)
    with accept_generated_checksums(tmp_path):
        yield tmp_path


def _pickled(path):
    """Independent read of one batch file: (pixels [N, 3, 32, 32], labels)."""
    entry = pickle.loads(path.read_bytes(), encoding="latin1")
    return np.asarray(entry["data"]).reshape(-1, 3, 32, 32), list(entry["labels"])


def test_loads_every_image_of_the_generated_files_through_torchvision(data_dir):
    task = Cifar10Task(Cifar10Options(), data_dir)
    parts = [_pickled(data_dir / FOLDER / f"data_batch_{i}") for i in range(1, 6)]
    pixels = np.concatenate([p for p, _ in parts])
    labels = [label for _, part_labels in parts for label in part_labels]
    assert task.classes == CLASSES and task.dims == {"in_channels": 3, "num_classes": 10}
    assert np.array_equal(task.train_images.pixels.numpy(), pixels)
    assert task.train_images.labels.tolist() == labels
    assert len(task.test_images.labels) == 40
    easy = task.train_images.pixels[task.train_images.labels == EASY_CLASS]
    assert (easy[:, :, 5, 7] == torch.tensor(EASY_COLOUR, dtype=torch.uint8)).all()


def test_a_missing_or_corrupt_dataset_is_a_clear_error_with_the_download_hint(tmp_path, data_dir):
    with pytest.raises(FileNotFoundError, match="task_options.download=true"):
        Cifar10Task(Cifar10Options(), tmp_path / "empty")
    batch = data_dir / FOLDER / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-10])
    with pytest.raises(FileNotFoundError, match="not found or corrupted"):
        Cifar10Task(Cifar10Options(), data_dir)


def test_splits_hold_the_classes_they_name(data_dir):
    task = Cifar10Task(Cifar10Options(), data_dir)
    batch = task.sample("without-cat", 200, torch.Generator().manual_seed(0))
    assert CLASSES.index("cat") not in batch.labels.tolist() and len(set(batch.labels.tolist())) == 9
    pair = task.sample("pair-ship-bird", 50, torch.Generator().manual_seed(0))
    assert set(pair.labels.tolist()) == {CLASSES.index("ship"), CLASSES.index("bird")}
    test = torch.cat([b.labels for b in task.eval_batches("test-pair-ship-bird", 100)])
    assert sorted(test.tolist()) == [2] * 4 + [8] * 4
    assert len(task.mask_splits) == 11 and task.control_mask == "all"
    assert task.mask_splits["without-dog"] == "without-dog"
    with pytest.raises(ValueError, match="unknown CIFAR-10 split 'without-unicorn'"):
        task.sample("without-unicorn", 4, torch.Generator())


def test_the_class_pairs_plan_has_two_masks_for_each_of_the_45_pairs(data_dir):
    task = Cifar10Task(Cifar10Options(masks="class-pairs"), data_dir)
    assert len(task.mask_splits) == 90 and task.control_mask is None
    assert task.mask_splits["pair-cat-dog-a"] == task.mask_splits["pair-cat-dog-b"] == "pair-cat-dog"


def test_samples_depend_only_on_the_generator(data_dir):
    task = Cifar10Task(Cifar10Options(augment=True), data_dir)
    first = task.sample("all", 16, torch.Generator().manual_seed(5))
    torch.manual_seed(123)
    second = task.sample("all", 16, torch.Generator().manual_seed(5))
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_augmentation_is_a_window_of_the_zero_padded_image_maybe_mirrored():
    pixels = torch.randint(1, 256, (6, 3, 32, 32), dtype=torch.uint8)
    out = augment(pixels, torch.Generator().manual_seed(0))
    padded = torch.zeros(6, 3, 32 + 2 * CROP_PADDING, 32 + 2 * CROP_PADDING, dtype=torch.uint8)
    padded[:, :, CROP_PADDING:-CROP_PADDING, CROP_PADDING:-CROP_PADDING] = pixels
    for image, source in zip(out, padded):
        windows = [source[:, y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
        assert any(torch.equal(image, w) or torch.equal(image, w.flip(-1)) for w in windows)


def test_confusion_matrix_by_hand(data_dir):
    task = Cifar10Task(Cifar10Options(), data_dir)

    class AlwaysCat(nn.Module):
        def forward(self, images):
            return nn.functional.one_hot(torch.full((len(images),), 3), 10).float()

    batches = [Batch(torch.zeros(3, 3, 32, 32), torch.tensor([3, 3, 5])), Batch(torch.zeros(1, 3, 32, 32), torch.tensor([0]))]
    counts = task.confusion_matrix(AlwaysCat(), batches)
    expected = torch.zeros(10, 10, dtype=torch.int64)
    expected[3, 3], expected[5, 3], expected[0, 3] = 2, 1, 1
    assert torch.equal(counts, expected)
    rows = task.condition_rows("all", False, AlwaysCat(), {"test": batches})["confusion"]
    assert len(rows) == 100 and {"mask": "all", "true_class": "dog", "predicted_class": "cat", "count": 1} in rows
    assert task.condition_rows("not-all", True, AlwaysCat(), {"test": batches}) == {}


def test_download_fetches_the_archive_from_the_url_torchvision_names(tmp_path, monkeypatch):
    """download=True runs torchvision's real download, here from a local HTTP server."""
    source = tmp_path / "source"
    checksums = write_cifar10(source, train_per_class=2, test_per_class=2)
    archive = tmp_path / "served" / CIFAR10.filename
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / FOLDER, arcname=FOLDER)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(archive.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(CIFAR10, "url", f"http://127.0.0.1:{server.server_port}/{CIFAR10.filename}")
        monkeypatch.setattr(CIFAR10, "tgz_md5", hashlib.md5(archive.read_bytes()).hexdigest())
        monkeypatch.setattr(CIFAR10, "train_list", [[f"data_batch_{i}", checksums[f"data_batch_{i}"]] for i in range(1, 6)])
        monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", checksums["test_batch"]]])
        monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": checksums["batches.meta"]})
        task = Cifar10Task(Cifar10Options(download=True), tmp_path / "data")
    finally:
        server.shutdown()
    assert len(task.train_images.labels) == 20 and (tmp_path / "data" / FOLDER / "test_batch").exists()
