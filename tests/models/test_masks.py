import numpy as np
import pytest
import torch
from torch import nn

from models.fnn import build_fnn
from models.masking import (
    MaskConfig,
    MaskedModel,
    Masks,
    applied,
    continual_logits,
    iou,
    keep_probability_histogram,
    reinitialize_free_weights,
    sharing,
    sharing_per_layer,
    union,
)


def _masks(**rows):
    return Masks({name: torch.tensor(values, dtype=torch.bool) for name, values in rows.items()})


# Hand-worked example: two layers, a target and two reference masks.
T = _masks(**{"a.weight": [1, 1, 1, 0], "b.weight": [1, 0]})
R1 = _masks(**{"a.weight": [1, 0, 0, 0], "b.weight": [0, 0]})
R2 = _masks(**{"a.weight": [0, 1, 0, 1], "b.weight": [0, 1]})


def test_set_algebra_by_hand():
    assert (R1 | R2).tensors["a.weight"].tolist() == [True, True, False, True]
    assert (T & R2).tensors["a.weight"].tolist() == [False, True, False, False]
    assert (~T).tensors["b.weight"].tolist() == [False, True]
    assert union([R1, R2]).kept() == 4


def test_sharing_iou_and_counts_by_hand():
    # t = 4 weights kept; OR of references keeps a0, a1, a3, b1 -> shared with t: a0, a1 = 2 of 4.
    assert sharing(T, union([R1, R2])) == pytest.approx(2 / 4)
    assert sharing_per_layer(T, union([R1, R2])) == {"a": pytest.approx(2 / 3), "b": 0.0}
    # T ∩ R2 = {a1}; T ∪ R2 = {a0, a1, a2, a3, b0, b1} -> 1/6.
    assert iou(T, R2) == pytest.approx(1 / 6)
    assert T.counts_per_layer() == {"a": (3, 4), "b": (1, 2)}
    assert T.kept_per_parameter() == {"a.weight": 3, "b.weight": 1}
    assert T.total() == 6


def test_masks_over_different_parameters_do_not_combine():
    other = _masks(**{"a.weight": [1, 0, 0, 0]})
    with pytest.raises(ValueError, match="different parameters"):
        T | other


def test_deterministic_mask_thresholds_sigmoid_at_half():
    logits = {"w": torch.tensor([-2.0, -0.01, 0.01, 3.0])}
    assert Masks.from_logits(logits).tensors["w"].tolist() == [False, False, True, True]


def test_save_and_load_round_trip_bit_packed(tmp_path):
    model = build_fnn(42, (400, 400, 200), 20)
    masks = Masks({n: torch.rand(p.shape) < 0.3 for n, p in model.named_parameters()})
    path = tmp_path / "masks.pt"
    masks.save(path)
    loaded = Masks.load(path, model)
    assert loaded.shapes() == masks.shapes()
    for name, tensor in masks.tensors.items():
        assert torch.equal(loaded.tensors[name], tensor)
    # one bit per weight plus a little framing
    assert path.stat().st_size < masks.total() / 8 * 1.05 + 20_000
    assert not list(tmp_path.glob(".*.tmp"))


def test_loading_a_mask_file_for_another_model_fails(tmp_path):
    masks = Masks({n: torch.ones(p.shape, dtype=torch.bool) for n, p in build_fnn(4, (5,), 3).named_parameters()})
    masks.save(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="shape"):
        Masks.load(tmp_path / "m.pt", build_fnn(4, (6,), 3))
    with pytest.raises(ValueError, match="not in the model"):
        Masks.load(tmp_path / "m.pt", nn.Sequential(nn.Linear(4, 3)))
    (tmp_path / "junk.pt").write_bytes(b"")
    with pytest.raises(Exception):
        Masks.load(tmp_path / "junk.pt")


def test_applied_mask_zeroes_removed_weights_and_restores_exactly():
    model = build_fnn(4, (5,), 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = Masks({n: torch.rand(p.shape) < 0.5 for n, p in model.named_parameters()})
    x = torch.randn(2, 4)
    expected = torch.relu(x @ (before["layers.0.weight"] * masks.tensors["layers.0.weight"]).T
                          + before["layers.0.bias"] * masks.tensors["layers.0.bias"])
    expected = expected @ (before["layers.1.weight"] * masks.tensors["layers.1.weight"]).T + (
        before["layers.1.bias"] * masks.tensors["layers.1.bias"])
    with applied(model, masks):
        torch.testing.assert_close(model(x), expected)
    with applied(model, ~masks):
        inverted = dict(model.named_parameters())
        assert torch.equal(inverted["layers.0.weight"] != 0, ~masks.tensors["layers.0.weight"] & (before["layers.0.weight"] != 0))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_keep_probability_histogram_by_hand():
    logits = {"w": torch.logit(torch.tensor([0.05, 0.15, 0.95, 0.96]))}
    counts, edges = keep_probability_histogram(logits, bins=10)
    assert counts.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert np.allclose(edges, np.linspace(0, 1, 11))


def test_continual_learning_initialisation():
    model = build_fnn(4, (5,), 3)
    used = Masks({n: torch.rand(p.shape) < 0.5 for n, p in model.named_parameters()})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reinitialize_free_weights(model, used)
    for n, p in model.named_parameters():
        assert torch.equal(p[used.tensors[n]], before[n][used.tensors[n]])
        assert (p[~used.tensors[n]] != before[n][~used.tensors[n]]).float().mean() > 0.9
    masked = MaskedModel(model, MaskConfig(), train_weights=True, frozen_weights=used.tensors)
    continual_logits(masked, used, used_logit=2.0, free_logit=-1.0)
    for n, l in masked.logits_by_name().items():
        assert torch.all(l[used.tensors[n]] == 2.0) and torch.all(l[~used.tensors[n]] == -1.0)


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path):
    from models.common import atomic_path

    target = tmp_path / "file.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and list(tmp_path.iterdir()) == [target]
