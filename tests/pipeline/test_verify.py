"""`pipeline verify` names every damaged file of a results folder; analysis names a damaged Parquet file."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from analysis.data import AnalysisInputError, load_tables
from models.common import file_hash
from pipeline.cli import main


def _results(tmp_path):
    """A finished trial with a mask file, a stage manifest and a Parquet part, as run_trial leaves them."""
    trial = tmp_path / "trials" / "t1"
    (trial / "masks").mkdir(parents=True)
    mask = trial / "masks" / "add.logits.pt"
    mask.write_bytes(b"logits" * 100)
    (trial / "masks" / "add.logits.pt.manifest.json").write_text(json.dumps({"add.logits.pt": file_hash(mask)}))
    part = tmp_path / "parquet" / "metrics" / "trial_id=t1" / "part-0.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(pa.table({"experiment": ["e"], "seed": [0], "sweep": [""], "mask": ["add"], "subtask": ["add"],
                             "accuracy": [1.0]}), part)
    files = {"trials/t1/masks/add.logits.pt": file_hash(mask), "parquet/metrics/trial_id=t1/part-0.parquet":
             file_hash(part)}
    (trial / "recorded.json").write_text(json.dumps({"run_id": "r", "metrics": {}, "files": files}))
    return mask, part


def test_an_intact_folder_verifies(tmp_path):
    _results(tmp_path)
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 0 and "intact: 1 finished trials, 1 stage manifests, 1 Parquet files" in result.output


@pytest.mark.parametrize("which", ["mask", "parquet"])
def test_each_damaged_file_is_named(tmp_path, which):
    mask, part = _results(tmp_path)
    damaged = {"mask": mask, "parquet": part}[which]
    damaged.write_bytes(damaged.read_bytes()[:10])
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 1 and f"damaged: {damaged}" in result.output
    assert "damaged file(s)" in result.output


def test_analysis_names_a_truncated_parquet_file_instead_of_a_traceback(tmp_path):
    _, part = _results(tmp_path)
    part.write_bytes(part.read_bytes()[:10])
    with pytest.raises(AnalysisInputError, match=f"damaged Parquet file {part}"):
        load_tables([tmp_path])
