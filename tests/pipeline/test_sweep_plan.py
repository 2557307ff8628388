"""How a sweep is laid out before Ray starts: packs of mask-only grid points, GPU shares."""

import pytest

from pipeline.experiments import get_sweep
from pipeline.sweep import (GPUS_PER_TRIAL_ON_CUDA, MAX_PACK, MAX_PACK_CPU, _gpu_share, _trial_devices, default_pack_size,
                            member_configs, packs, param_space)


def test_packs_split_evenly_and_never_exceed_the_pack_size():
    members = [{"mask.beta": b} for b in range(26)]
    for size in (1, 4, 13, 16, 30):
        groups = packs(members, size)
        assert max(len(g) for g in groups) <= size
        assert max(len(g) for g in groups) - min(len(g) for g in groups) <= 1
        assert sorted(m["mask.beta"] for g in groups for m in g) == list(range(26))
        assert len(groups) == -(-26 // size)
    assert [len(g) for g in packs(members, None)] == [13, 13]  # at most 16 by default


def _grid(space: dict) -> dict:
    return {k: v["grid_search"] for k, v in space.items() if isinstance(v, dict) and "grid_search" in v}


def test_only_mask_axes_are_packed_and_each_member_is_one_grid_point():
    spec = get_sweep("alpha-sensitivity")
    packed = _grid(param_space(spec.at("smoke"), 2, "smoke", {}, 4))
    assert set(packed) == {"experiment", "seed", "model.size", "pack"}  # β moved into the packs
    assert len(packed["pack"]) == 1 and packed["pack"][0]["label"] == "mask.beta=1e-05,0.0001,0.001"
    unpacked = _grid(param_space(spec.at("smoke"), 2, "smoke", {}, 1))
    assert set(unpacked) == {"experiment", "seed", "model.size", "mask.beta"}

    trial = {"experiment": "addmul-fnn", "seed": 1, "model.size": "small", "pack": packed["pack"][0],
             "fixed_overrides": {"mask.steps": 7}, "scale": "smoke", "context": {"sweep": "alpha-sensitivity"}}
    configs = member_configs(trial)
    assert [c.mask.beta for c in configs] == [1e-5, 1e-4, 1e-3]
    assert {(c.seed, c.model.size, c.mask.steps, c.sweep) for c in configs} == {(1, "small", 7, "alpha-sensitivity")}


@pytest.mark.parametrize("overrides, asked, expected", [
    ({}, 0, 0), ({"device": "cuda"}, 0, GPUS_PER_TRIAL_ON_CUDA), ({"device": "cuda:1"}, 0.5, 0.5), ({}, 1, 1)])
def test_trials_on_cuda_reserve_a_gpu_share_and_pack_by_default(overrides, asked, expected):
    devices = _trial_devices(get_sweep("sharing-vs-capacity"), "smoke", overrides)
    assert _gpu_share(devices, asked) == expected
    assert default_pack_size(devices) == (MAX_PACK if "device" in overrides else MAX_PACK_CPU)


def test_a_pack_size_below_one_is_refused_before_anything_starts(tmp_path):
    from pipeline.sweep import run_sweep

    with pytest.raises(ValueError, match="pack size must be >= 1"):
        run_sweep("alpha-sensitivity", tmp_path, smoke=True, pack_size=0)
    assert not (tmp_path / "trials").exists()


def test_a_tuple_valued_grid_axis_reaches_the_trial_as_its_tuple():
    """Grid values are passed as they are (formerly turned into strings: "(100, 200)" did not parse)."""
    from pipeline.experiments import SweepSpec

    spec = SweepSpec(("addmul-fnn",), {"pretrain.lr_decay_steps": [(100, 200), ()]})
    grid = _grid(param_space(spec, 1, "smoke", {}, 1))
    assert grid["pretrain.lr_decay_steps"] == [(100, 200), ()]
    for value in grid["pretrain.lr_decay_steps"]:
        trial = {"experiment": "addmul-fnn", "seed": 0, "pretrain.lr_decay_steps": value, "fixed_overrides": {},
                 "scale": "smoke", "context": {"sweep": "test"}}
        assert member_configs(trial)[0].pretrain.lr_decay_steps == value


def test_the_papers_addmul_sweep_is_estimated_before_it_starts():
    """C.3: 20k pretraining steps per network, 20k steps per mask (add, mul and the control mask),
    FNN and LSTM x 10 seeds; trials that share a network (same seed, task and model) pretrain once."""
    from pipeline.sweep import sweep_workload

    spec = get_sweep("addmul").at("paper")
    work = sweep_workload(spec, 10, "paper", {})
    assert (work.trials, work.pretrain_steps, work.mask_steps) == (20, 20 * 20_000, 20 * 3 * 20_000)
    alpha = get_sweep("alpha-sensitivity").at("cpu")  # 5 β values share each seed's network
    work = sweep_workload(alpha, 5, "cpu", {})
    assert (work.trials, work.pretrain_steps) == (25, 5 * 20_000)
    assert "not measured" in work.lines("cuda")[-1] and len(work.lines("cpu")) == 1


def test_an_unreachable_cluster_address_writes_nothing(tmp_path):
    from pipeline.sweep import run_sweep

    with pytest.raises(ConnectionError, match="cannot reach the Ray cluster"):
        run_sweep("alpha-sensitivity", tmp_path / "results", smoke=True, address="127.0.0.1:1")
    assert not (tmp_path / "results").exists()
