"""`pipeline data mathematics`: the official tarball, clear errors, and the seeded generator."""

import io
import tarfile
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from tasks.mathematics_generate import PACKAGES, create_environment, generate, generator_problem, generator_python

# Built once per machine and reused: creating it takes PyPI and about a minute.
ENVIRONMENT = Path(tempfile.gettempdir()) / "modular-masks-mathematics-generator-env"
MODULES = ["arithmetic__add_or_sub", "algebra__linear_1d"]


def _tarball(path: Path, modules: list[str]) -> Path:
    """A tarball with the official layout: mathematics_dataset-v1.0/<regime>/<module>.txt."""
    with tarfile.open(path, "w:gz") as archive:
        for regime in ("train-easy", "train-medium", "train-hard", "interpolate"):
            for module in modules:
                data = f"{regime} question of {module}?\n42\n".encode()
                info = tarfile.TarInfo(f"mathematics_dataset-v1.0/{regime}/{module}.txt")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def test_the_official_tarball_is_unpacked_into_the_v1_layout(tmp_path):
    tarball = _tarball(tmp_path / "mathematics_dataset-v1.0.tar.gz", MODULES)
    result = CliRunner().invoke(main, ["data", "mathematics", "--out", str(tmp_path / "out"), "--tarball",
                                       str(tarball), "--modules", ",".join(MODULES)])
    assert result.exit_code == 0, result.output
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.txt"))
    assert files == sorted(f"{r}/{m}.txt" for r in ("train-easy", "train-medium", "train-hard") for m in MODULES)
    assert (tmp_path / "out" / "train-hard" / "algebra__linear_1d.txt").read_text() == \
        "train-hard question of algebra__linear_1d?\n42\n"


def test_a_tarball_without_the_module_is_a_clear_error(tmp_path):
    tarball = _tarball(tmp_path / "t.tar.gz", ["arithmetic__add_or_sub"])
    result = CliRunner().invoke(main, ["data", "mathematics", "--out", str(tmp_path / "out"), "--tarball",
                                       str(tarball)])
    assert result.exit_code != 0 and "lacks" in result.output and "algebra__linear_1d" in result.output


def test_an_interpreter_without_the_generator_is_a_clear_error_with_the_install_line(tmp_path):
    result = CliRunner().invoke(main, ["data", "mathematics", "--out", str(tmp_path / "out"), "--python",
                                       str(tmp_path / "no-such-python")])
    assert result.exit_code != 0
    assert 'pip install mathematics_dataset==1.0.1 "sympy==1.4" "numpy<1.24"' in result.output


def test_an_unknown_module_is_named(tmp_path):
    result = CliRunner().invoke(main, ["data", "mathematics", "--out", str(tmp_path), "--modules", "calculus"])
    assert result.exit_code != 0 and "calculus__differentiate" in result.output


@pytest.fixture(scope="session")
def generator() -> Path:
    """The generator's interpreter (sympy 1.4, numpy < 1.24), built once under the temp folder."""
    interpreter = ENVIRONMENT / "bin" / "python"
    if interpreter.exists() and generator_problem(interpreter) is None:
        return interpreter
    try:
        create_environment(ENVIRONMENT, "python3.11")
    except RuntimeError as error:
        pytest.skip(f"cannot build the generator's environment ({' '.join(PACKAGES)}; needs python3.11 and "
                    f"PyPI): {error}")
    return interpreter


@pytest.mark.slow
def test_the_generator_gives_identical_files_under_a_seed(generator, tmp_path):
    """One module (each file is one interpreter start, seconds each): twice with seed 5, once with 6."""
    module = ["arithmetic__add_or_sub"]
    first = generate(generator, tmp_path / "a", module, per_module=8, seed=5, workers=3)
    second = generate(generator_python(str(generator)), tmp_path / "b", module, per_module=8, seed=5, workers=1)
    other_seed = generate(generator, tmp_path / "c", module, per_module=8, seed=6, workers=3)
    for regime in ("train-easy", "train-medium", "train-hard"):
        text = (first / regime / f"{module[0]}.txt").read_text()
        assert len(text.splitlines()) == 16  # 8 questions, 8 answers
        assert text == (second / regime / f"{module[0]}.txt").read_text()
        assert text != (other_seed / regime / f"{module[0]}.txt").read_text()
    with pytest.raises(ValueError, match="made with"):
        generate(generator, tmp_path / "a", module, per_module=8, seed=7, workers=1)


def _random_bytes(path: Path) -> Path:
    path.write_bytes(bytes(range(256)) * 8)
    return path


def _truncated(path: Path) -> Path:
    """A real tarball cut off in the middle of its members (an interrupted download)."""
    tarball = _tarball(path, MODULES * 1)
    data = tarball.read_bytes()
    tarball.write_bytes(data[: len(data) // 2])
    return tarball


@pytest.mark.parametrize("make, words", [
    (lambda tmp: tmp / "absent.tar.gz", "no tarball at"),
    (lambda tmp: _random_bytes(tmp / "garbage.tar.gz"), "is damaged or not a tar archive"),
    (lambda tmp: _truncated(tmp / "cut.tar.gz"), "is damaged or not a tar archive"),
], ids=["missing", "not-a-tarball", "truncated"])
def test_pipeline_data_with_a_bad_tarball_is_one_clear_line_and_leaves_no_file(tmp_path, make, words):
    tarball = make(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["data", "mathematics", "--out", str(out), "--tarball", str(tarball),
                                       "--modules", ",".join(MODULES)])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and words in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not [p for p in out.rglob("*") if p.is_file()]  # no half-unpacked file looks finished


def test_pipeline_data_into_a_folder_that_cannot_be_made_fails_before_any_work(tmp_path):
    """A file where --out's folder should be (what root, who may write anywhere, still cannot pass)."""
    (tmp_path / "a-file").write_text("not a folder")
    result = CliRunner().invoke(main, ["data", "mathematics", "--out", str(tmp_path / "a-file" / "out"), "--python",
                                       str(tmp_path / "no-such-python")])
    assert result.exit_code == 1 and "cannot write to --out" in result.output, result.output
    assert "no-such-python" not in result.output  # refused before looking for the generator
