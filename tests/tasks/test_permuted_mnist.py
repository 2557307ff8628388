"""Permuted MNIST: the files, the permutations, and the inputs that are rejected before any work."""

import dataclasses
import shutil

import pytest
import torch

from tasks.registry import get_task
from tasks.permuted_mnist import IDX_FILES, PermutedMNISTOptions, parse_logit_init, task_permutation

RAW = "MNIST/raw"


def _task(shared_data, **options):
    return get_task("permuted_mnist", PermutedMNISTOptions(**options), shared_data)


def test_reads_mnist_as_the_data_readme_describes(shared_data):
    task = _task(shared_data, permutations=2)
    (test_inputs, test_labels), (rest_inputs, rest_labels) = task.eval_batches("task0", 10_000)
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    counts = torch.bincount(torch.cat([test_labels, rest_labels]), minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert test_inputs.shape == (5000, 784) and test_inputs.dtype == torch.float32
    # pixel 0 of every MNIST image is 0: normalised (0 - 0.1307) / 0.3081
    assert torch.allclose(test_inputs[:, 0], torch.full((5000,), -0.1307 / 0.3081))


def test_task_t_permutes_the_pixels_of_task_0(shared_data):
    task = _task(shared_data, permutations=3).with_seed(5)
    (plain, labels), _ = task.eval_batches("task0", 10_000)
    (permuted, same_labels), _ = task.eval_batches("task2", 10_000)
    order = task_permutation(5, 2)
    assert torch.equal(labels, same_labels)
    for pixel in (0, 100, 783):  # input pixel i of task 2 is pixel order[i] of the plain image
        assert torch.equal(permuted[:, pixel], plain[:, order[pixel]])


def test_permutations_are_fixed_by_seed_and_task():
    assert torch.equal(task_permutation(3, 0), torch.arange(784))
    assert sorted(task_permutation(3, 1).tolist()) == list(range(784))
    assert torch.equal(task_permutation(3, 1), task_permutation(3, 1))
    assert not torch.equal(task_permutation(3, 1), task_permutation(3, 2))
    assert not torch.equal(task_permutation(3, 1), task_permutation(4, 1))


def test_training_batches_come_from_the_generator_only(shared_data):
    task = _task(shared_data, permutations=2)
    first = task.sample("task1", 32, torch.Generator().manual_seed(9))
    torch.manual_seed(123)  # the global RNG must not matter
    second = task.sample("task1", 32, torch.Generator().manual_seed(9))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    with pytest.raises(ValueError, match="no split 'task7'"):
        task.sample("task7", 4, torch.Generator())


def test_logit_initialisations():
    assert parse_logit_init("default") == (2.0, 2.0)
    assert parse_logit_init("prefer-old") == (2.0, 0.0)
    assert parse_logit_init("prefer-old-more") == (2.0, -1.0)
    assert parse_logit_init("3,-0.5") == (3.0, -0.5)


@pytest.mark.parametrize("value", ["prefer-new", "2", "2,x", "nan,0", "1,inf", ""])
def test_bad_logit_init_is_rejected_when_the_task_is_built(shared_data, value):
    with pytest.raises(ValueError, match="task_options.logit_init must be one of"):
        _task(shared_data, logit_init=value)


@pytest.mark.parametrize("count", [0, 1])
def test_fewer_than_two_permutations_are_rejected(shared_data, count):
    with pytest.raises(ValueError, match="permutations must be at least 2"):
        _task(shared_data, permutations=count)


def test_missing_mnist_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte is missing"):
        get_task("permuted_mnist", data_dir=tmp_path)


def test_truncated_file_names_the_file(shared_data, tmp_path):
    raw = tmp_path / RAW
    raw.mkdir(parents=True)
    for name in IDX_FILES:
        shutil.copyfile(shared_data / RAW / name, raw / name)
    with (raw / "t10k-images-idx3-ubyte").open("r+b") as file:
        file.truncate(1_000_000)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte is damaged: 1000000 bytes.*7840016 bytes"):
        get_task("permuted_mnist", data_dir=tmp_path)


def test_options_are_a_frozen_dataclass():
    assert dataclasses.fields(PermutedMNISTOptions)[0].name == "permutations"
    with pytest.raises(dataclasses.FrozenInstanceError):
        PermutedMNISTOptions().permutations = 3
