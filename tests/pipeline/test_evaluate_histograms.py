"""Fig. 7's histogram rows: the first bin also says how many σ(l) are below 0.0002 (paper Fig. 7a)."""

import math
from types import SimpleNamespace

import torch

from pipeline.evaluate import HISTOGRAM_BINS, histogram_rows


def test_first_bin_records_the_values_below_two_ten_thousandths(tmp_path):
    # σ(l) < 0.0002  <=>  l < log(0.0002 / 0.9998) = -8.517 (Fig. 7a: "Values < 0.0002 ... are removed")
    logits = {"a": torch.tensor([-9.0, -8.6, -8.4, -7.0]), "b": torch.tensor([[-20.0, 3.0], [0.0, -8.0]])}
    expected_low = sum(1 / (1 + math.exp(-v)) < 0.0002 for t in logits.values() for v in t.flatten().tolist())
    assert expected_low == 3  # -9, -8.6, -20; -8.4 gives 0.000225, -8 gives 0.000335, both in the first bin
    (tmp_path / "masks").mkdir()
    torch.save(logits, tmp_path / "masks" / "add.logits.pt")
    rows = histogram_rows(SimpleNamespace(trial_dir=tmp_path), ["add"])
    assert len(rows) == HISTOGRAM_BINS and sum(r["count"] for r in rows) == 8
    assert abs(rows[0]["bin_right"] - 0.002) < 1e-9 and rows[0]["count"] == 6  # all but 3.0 and 0.0
    assert rows[0]["low_count"] == 3 and rows[0]["low_cutoff"] == 0.0002
    assert all(r["low_count"] is None and r["low_cutoff"] is None for r in rows[1:])
