"""`pipeline verify RESULTS`: which files of a results folder are damaged.

Checks every finished trial's files against the checksums recorded when it finished (networks,
masks, logits, curves, Parquet parts), every finished stage against its manifest, and that every
Parquet file under parquet/ reads. Nothing is changed: running a damaged trial's command again
redoes what made the damaged files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.stages import damaged_files


def damaged(results_dir: Path) -> tuple[list[str], dict[str, int]]:
    """-> (one line per damaged file, counts of what was checked)."""
    problems: list[str] = []
    trials = sorted(results_dir.glob("trials/*/recorded.json"))
    for marker in trials:
        checksums = json.loads(marker.read_text()).get("files", {})
        problems += [f"{path}: does not match the checksum recorded when trial {marker.parent.name} finished"
                     for path in damaged_files(checksums, results_dir)]
    manifests = sorted(results_dir.glob("**/*.manifest.json"))
    for manifest in manifests:
        checksums = json.loads(manifest.read_text())
        problems += [f"{path}: does not match its stage's manifest {manifest.name}"
                     for path in damaged_files(checksums, manifest.parent)]
    parts = sorted((results_dir / "parquet").glob("*/*/*.parquet"))
    for part in parts:
        try:
            pq.read_metadata(part)
        except Exception as error:  # pyarrow raises ArrowInvalid or OSError for a truncated file
            problems.append(f"{part}: not a readable Parquet file ({str(error).splitlines()[0][:120]})")
    counts = {"finished trials": len(trials), "stage manifests": len(manifests), "Parquet files": len(parts)}
    return sorted(set(problems)), counts
