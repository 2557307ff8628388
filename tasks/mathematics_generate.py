"""`pipeline data mathematics`: the paper's five modules in the v1.0 layout (`<regime>/<module>.txt`),
made by DeepMind's generator or taken from the official tarball.

The generator (PyPI mathematics_dataset 1.0.1) only runs with sympy 1.4 and numpy < 1.24, so it runs
in its own interpreter: a virtual environment this command creates under ~/.cache (needs PyPI once)
or one given with --python. Each file (one module, one difficulty) is written by its own process,
seeded with `random`, `numpy.random` and PYTHONHASHSEED from (seed, module, difficulty): two runs with
the same seed give identical files, whatever the order or the number of workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from models.common import atomic_path
from tasks.mathematics import MODULES
from tasks.registry import DataError, register_dataset

log = logging.getLogger(__name__)

PACKAGES = ("mathematics_dataset==1.0.1", "sympy==1.4", "numpy<1.24")
INSTALL_LINE = 'pip install mathematics_dataset==1.0.1 "sympy==1.4" "numpy<1.24"'
REGIMES = ("train-easy", "train-medium", "train-hard")
DEFAULT_ENVIRONMENT = Path.home() / ".cache" / "modular-masks" / "mathematics-generator-env"
SCRIPT = Path(__file__).with_name("_mathematics_generator_script.py")
TARBALL_ROOT = "mathematics_dataset-v1.0"
MANIFEST = "generation.json"


@register_dataset("mathematics")
def make_mathematics(out: Path, per_module: int = 1000, seed: int = 0, modules: str = ",".join(MODULES),
                     python: str = "", base_python: str = "python3.11", workers: int = 1, tarball: str = "") -> Path:
    """Write train-easy/, train-medium/ and train-hard/ <module>.txt for the paper's five modules.

    per_module: examples per module and difficulty (v1.0 has 666,666). python: an interpreter that has
    the generator (else a venv is made under ~/.cache from base_python). workers: files generated at
    once. tarball: take the files from mathematics_dataset-v1.0.tar.gz instead of generating them.
    """
    chosen = _module_list(modules)
    _check_writable(Path(out))
    if tarball:
        return unpack_tarball(Path(tarball), Path(out), chosen)
    if per_module < 1 or workers < 1:
        raise ValueError(f"per_module and workers must be >= 1, got {per_module} and {workers}")
    interpreter = generator_python(python, base_python)
    return generate(interpreter, Path(out), chosen, per_module, seed, workers)


def _check_writable(out: Path) -> None:
    """Before any work (a generator environment, an archive read): --out can be made and written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as error:
        raise PermissionError(f"cannot write to --out {out} ({error.strerror}); choose another --out") from None


def _module_list(modules: str) -> list[str]:
    chosen = [m.strip() for m in modules.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MODULES]
    if unknown or not chosen:
        raise ValueError(f"unknown module(s) {unknown or modules!r}; choose from {', '.join(MODULES)}")
    return chosen


# -- the generator's interpreter -----------------------------------------------------------------------
def generator_problem(python: Path) -> str | None:
    """Why `python` cannot run the generator, or None when it can."""
    probe = "import mathematics_dataset, sympy, numpy; print(sympy.__version__, numpy.__version__)"
    try:
        result = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=300)
    except OSError as error:
        return f"cannot run {python}: {error}"
    if result.returncode:
        return f"{python} cannot import the generator: {result.stderr.strip().splitlines()[-1:]}"
    sympy_version, numpy_version = result.stdout.split()
    major, minor = (int(part) for part in numpy_version.split(".")[:2])
    if sympy_version != "1.4" or (major, minor) >= (1, 24):
        return f"{python} has sympy {sympy_version} and numpy {numpy_version}; the generator needs sympy 1.4, numpy < 1.24"
    return None


def generator_python(python: str = "", base_python: str = "python3.11", environment: Path = DEFAULT_ENVIRONMENT
                     ) -> Path:
    """The interpreter that runs the generator: `python` if given, else the venv at `environment`,
    created from `base_python` (with pip, from PyPI) when missing. Clear errors otherwise."""
    if python:
        problem = generator_problem(Path(python))
        if problem:
            raise RuntimeError(f"{problem}. Make such an environment with: python3.11 -m venv ENV && ENV/bin/"
                               f"{INSTALL_LINE}, then pass --python ENV/bin/python")
        return Path(python)
    interpreter = environment / "bin" / "python"
    if interpreter.exists() and generator_problem(interpreter) is None:
        return interpreter
    create_environment(environment, base_python)
    return interpreter


def create_environment(environment: Path, base_python: str) -> None:
    """A fresh venv at `environment` with the generator's pinned packages (needs PyPI)."""
    log.info("creating the generator's environment %s (%s)", environment, " ".join(PACKAGES))
    shutil.rmtree(environment, ignore_errors=True)
    steps = [[base_python, "-m", "venv", str(environment)],
             [str(environment / "bin" / "python"), "-m", "pip", "install", "--quiet", *PACKAGES]]
    for command in steps:
        try:
            result = subprocess.run(command, capture_output=True, text=True)
        except OSError as error:
            result = subprocess.CompletedProcess(command, 1, "", str(error))
        if result.returncode:
            shutil.rmtree(environment, ignore_errors=True)
            raise RuntimeError(
                f"could not create the generator's environment ({' '.join(command)} failed: "
                f"{result.stderr.strip()[-500:]}). It needs Python 3.11 or older (numpy 1.23 has no wheels for newer) "
                f"and PyPI. Make one by hand: python3.11 -m venv ENV && ENV/bin/{INSTALL_LINE}, "
                "then pass --python ENV/bin/python")
    problem = generator_problem(environment / "bin" / "python")
    if problem:
        raise RuntimeError(f"the new environment {environment} does not work: {problem}")


# -- generating --------------------------------------------------------------------------------------
def file_seed(seed: int, module: str, regime: str) -> int:
    """A 32-bit seed of its own for every file (valid for numpy and PYTHONHASHSEED)."""
    return int(hashlib.sha256(f"{seed}:{module}:{regime}".encode()).hexdigest()[:8], 16)


def generate(python: Path, out: Path, modules: list[str], per_module: int, seed: int, workers: int) -> Path:
    """Every (difficulty, module) file under `out`; files already there from the same settings are kept."""
    _check_manifest(out, {"source": "generator", "seed": seed, "per_module": per_module, "packages": list(PACKAGES)})
    jobs = [(regime, module) for regime in REGIMES for module in modules
            if not (out / regime / f"{module}.txt").exists()]
    for regime in REGIMES:
        (out / regime).mkdir(parents=True, exist_ok=True)

    def run(job):
        regime, module = job
        file_seed_value = file_seed(seed, module, regime)
        environment = os.environ | {"PYTHONHASHSEED": str(file_seed_value)}
        command = [str(python), str(SCRIPT), module, regime, str(per_module), str(file_seed_value),
                   str(out / regime / f"{module}.txt")]
        result = subprocess.run(command, capture_output=True, text=True, env=environment)
        if result.returncode:
            raise RuntimeError(f"the generator failed on {regime}/{module}: {result.stderr.strip()[-1000:]}")
        log.info("wrote %s/%s.txt", regime, module)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, jobs))
    return out


def _check_manifest(out: Path, settings: dict) -> None:
    """Record how `out` was made; refuse to mix files made with other settings."""
    manifest = out / MANIFEST
    if manifest.exists():
        existing = json.loads(manifest.read_text())
        if existing != settings:
            raise ValueError(f"{out} holds files made with {existing}, not {settings}; choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(settings, indent=2))


# -- the official tarball ----------------------------------------------------------------------------
def unpack_tarball(tarball: Path, out: Path, modules: list[str]) -> Path:
    """The train files of `modules` from mathematics_dataset-v1.0.tar.gz into `out` (v1.0 layout)."""
    if not tarball.is_file():
        raise FileNotFoundError(f"no tarball at {tarball}")
    wanted = {f"{TARBALL_ROOT}/{regime}/{module}.txt": out / regime / f"{module}.txt"
              for regime in REGIMES for module in modules}
    try:
        with tarfile.open(tarball) as archive:
            names = set(archive.getnames())
            missing = sorted(set(wanted) - names)
            if missing:
                raise ValueError(f"{tarball} lacks {missing[:3]}{'...' if len(missing) > 3 else ''}; expected the "
                                 f"official v1.0 tarball with {TARBALL_ROOT}/train-easy/<module>.txt etc.")
            for member, target in wanted.items():
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.extractfile(member) as source, atomic_path(target) as partial, open(partial, "wb") as sink:
                    shutil.copyfileobj(source, sink)
                log.info("unpacked %s", target)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as error:
        reason = " ".join(str(error).split())  # tarfile's reason spans lines (one per compression it tried)
        raise DataError(f"{tarball} is damaged or not a tar archive ({type(error).__name__}: {reason}); download "
                        "mathematics_dataset-v1.0.tar.gz again") from None
    return out
