"""Sweep storage that may be remote: a local results directory kept in step with a URI.

Trials work in a local (or NFS) results directory. With a storage URI (s3://, gs://, hdfs://,
file://, anything pyarrow.fs opens), every finished stage is pushed there and a trial pulls
what another node already finished: pretrained networks, masks, Parquet tables, the
finished-trial marker. Files are uploaded under a temporary name and then moved, so a half-copied
file never looks finished.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow.fs as pafs

from models.common import atomic_path


class Storage:
    """Relative paths under `local` mirrored to `uri` (a no-op without a URI)."""

    def __init__(self, local: Path, uri: str | None = None):
        self.local = Path(local)
        self.uri = uri
        if uri:
            try:
                self.remote, self.root = pafs.FileSystem.from_uri(uri)
            except Exception as error:  # pyarrow raises several types for unknown schemes
                raise ValueError(f"cannot open storage {uri!r}: {error}") from None

    def pull(self, relative: str) -> bool:
        """Copy `relative` (file) down when storage has it and the local folder does not. -> found."""
        target = self.local / relative
        if target.exists():
            return True
        if not self.uri or self._remote_info(relative).type != pafs.FileType.File:
            return False
        with atomic_path(target) as partial:
            pafs.copy_files(self._remote_path(relative), str(partial), source_filesystem=self.remote,
                            destination_filesystem=pafs.LocalFileSystem())
        return True

    def pull_all(self, *relatives: str) -> bool:
        """pull() each in order (put the file that marks completion last). -> all found."""
        return all([self.pull(relative) for relative in relatives])

    def push(self, *relatives: str) -> None:
        """Upload, in the given order, the local files storage lacks (the completion marker last)."""
        if not self.uri:
            return
        for relative in relatives:
            if not (self.local / relative).exists() or self._remote_info(relative).type == pafs.FileType.File:
                continue
            destination = self._remote_path(relative)
            partial = f"{destination}.{uuid.uuid4().hex}.tmp"
            self.remote.create_dir(destination.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(self.local / relative), partial, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.remote)
            self.remote.move(partial, destination)

    def _remote_path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}"

    def _remote_info(self, relative: str):
        return self.remote.get_file_info(self._remote_path(relative))
