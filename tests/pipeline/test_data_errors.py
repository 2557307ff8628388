"""Every dataset's bad data through `pipeline run` and `pipeline sweep`: one clear line naming what is
wrong, exit code 1, no traceback, and nothing created in the data folder (nor, for a sweep, a results
folder) before the data is known to be usable."""

import shutil
import urllib.error

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tests.tasks.cifar_data import write_cifar10

# (preset, sweep, words the one line must hold when the data is missing)
DATASETS = {"scan": ("scan-lstm", "scan", "SCAN file"),
            "mnist": ("permuted-mnist", "permuted-mnist", "MNIST file"),
            "mathematics": ("mathematics-algebra__linear_1d", "mathematics", "no Mathematics Dataset"),
            "cifar10": ("cifar10-cnn", "cifar10", "CIFAR-10 not found")}


def _truncate(path):
    data = path.read_bytes()
    path.unlink()  # the shared copies are read-only links: write a new file in their place
    path.write_bytes(data[: len(data) // 3])


def _corrupt(dataset: str, folder, shared_data) -> str:
    """A copy of the dataset with one file damaged -> words the error must hold."""
    if dataset == "scan":
        shutil.copytree(shared_data / "SCAN", folder / "SCAN")
        _truncate(folder / "SCAN" / "simple_split" / "tasks_train_simple.txt")
        return "tasks_train_simple.txt has md5"
    if dataset == "mnist":
        shutil.copytree(shared_data / "MNIST", folder / "MNIST")
        _truncate(folder / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")
        return "t10k-labels-idx1-ubyte"
    if dataset == "mathematics":
        source = shared_data / "mathematics_dataset_sample"
        shutil.copytree(source, folder / "mathematics_dataset-v1.0")
        path = folder / "mathematics_dataset-v1.0" / "train-easy" / "algebra__linear_1d.txt"
        lines = path.read_text().splitlines()
        path.unlink()
        path.write_text("\n".join(lines[:-1]) + "\n")  # a question without its answer
        return "odd number of lines"
    _truncate(folder / "cifar-10-batches-py" / "data_batch_1")  # after its intact MD5 was taken
    return "CIFAR-10 not found or corrupted"


def _invoke(command: str, dataset: str, data, tmp_path, monkeypatch):
    def offline(*args, **kwargs):  # no network here or in CI: a download fails as it would offline
        raise urllib.error.URLError("offline")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    preset, sweep, _ = DATASETS[dataset]
    arguments = ["run", preset] if command == "run" else ["sweep", sweep, "--seeds", "1"]
    return CliRunner().invoke(main, [*arguments, "--smoke", "--data-dir", str(data),
                                     "--results-dir", str(tmp_path / "results")])


def _assert_one_clear_line(result, words):
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and words in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize("command", ["run", "sweep"])
@pytest.mark.parametrize("dataset", DATASETS)
def test_missing_data_is_one_clear_line_and_creates_nothing(dataset, command, tmp_path, monkeypatch):
    data = tmp_path / "absent"
    result = _invoke(command, dataset, data, tmp_path, monkeypatch)
    _assert_one_clear_line(result, DATASETS[dataset][2])
    assert not data.exists(), f"{dataset} created {sorted(p.name for p in data.rglob('*'))}"
    if command == "sweep":
        assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("command", ["run", "sweep"])
@pytest.mark.parametrize("dataset", DATASETS)
def test_a_damaged_file_is_one_clear_line_naming_it(dataset, command, tmp_path, monkeypatch, shared_data):
    from tests.tasks.cifar_data import accept_generated_checksums

    data = tmp_path / "data"
    data.mkdir()
    if dataset == "cifar10":  # generated data: torchvision checks it against the generated files' MD5s
        write_cifar10(data)
    with accept_generated_checksums(data) if dataset == "cifar10" else _nothing():
        words = _corrupt(dataset, data, shared_data)
        before = sorted(p.relative_to(data) for p in data.rglob("*"))
        result = _invoke(command, dataset, data, tmp_path, monkeypatch)
    _assert_one_clear_line(result, words)
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before  # nothing added to the data folder


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
