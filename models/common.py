"""The low-level helpers every layer shares (models, tasks, pipeline, analysis): registries that
find their entries, atomic file writes, file hashes. Imports nothing heavy (no torch), so that
analysis can use it without the training stack.

A registry finds what is in its folder: the first lookup imports every module of its package
(modules whose name starts with "_" are not registered: scripts, private helpers) and every
entry point of its group, so that a plug-in package adds tasks, model families, studies or figures
by declaring, in its pyproject.toml,

    [project.entry-points."modular_masks.tasks"]
    my_task = "my_package.my_task"      # a module that registers on import
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.metadata
import json
import os
import pkgutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator


class Registry:
    """Things by unique name: `register(name)` decorates one in; `find(name)` finds it or raises a
    KeyError that suggests the nearest name. Every lookup first discovers the registry's package
    (every module in it) and its entry-point group, once."""

    def __init__(self, kind: str, package: str | None = None, group: str | None = None):
        self.kind, self.package, self.group = kind, package, group
        self._entries: dict[str, object] = {}
        self._discovered = self._discovering = False
        self._lock = threading.RLock()

    def register(self, name: str):
        def decorate(thing):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {_origin(self._entries[name])})")
            self._entries[name] = thing
            return thing

        return decorate

    def find(self, name: str, hint: str = ""):
        self.discover()
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}{suggest(name, self._entries)}; "
                           f"known: {', '.join(sorted(self._entries))}{hint}")
        return self._entries[name]

    def discover(self) -> None:
        """Import every module of the package and every entry point of the group (once). Another
        thread looking something up meanwhile waits for the whole registry (the trials of a pack run
        in threads); a module that looks something up while it registers sees a partial one."""
        if self._discovered:
            return
        with self._lock:
            if self._discovered or self._discovering:  # done by another thread, or under way in this one
                return
            self._discovering = True
            try:
                if self.package:
                    import_modules(self.package)
                if self.group:
                    for entry in importlib.metadata.entry_points(group=self.group):
                        entry.load()
            finally:
                self._discovered = True

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def items(self):
        self.discover()
        return self._entries.items()

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __getitem__(self, name: str):
        return self.find(name)

    def __iter__(self) -> Iterator[str]:
        self.discover()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)


def import_modules(package: str) -> None:
    """Import every module (and subpackage) of `package` whose name does not start with "_"."""
    root = importlib.import_module(package)
    for info in pkgutil.iter_modules(root.__path__, prefix=f"{package}."):
        if not info.name.rpartition(".")[2].startswith("_"):
            importlib.import_module(info.name)


def _origin(thing) -> str:
    """The module that registered `thing` (a model family: its builder's)."""
    return getattr(getattr(thing, "builder", thing), "__module__", "?")


def suggest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the nearest choice, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error delete it.

    The temporary name is unique, so concurrent writers of the same file never mix their bytes.
    Every file of a trial and of a report is written through this: a reader never sees a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json_atomic(data: dict, path: str | os.PathLike) -> None:
    write_text_atomic(json.dumps(data, indent=2, sort_keys=True, default=str), path)


def file_hash(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
