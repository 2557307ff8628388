"""How a sweep is laid out before Ray starts: every trial resolved once, packs of mask-only grid
points, GPU shares, the trial ids that results folders are keyed by."""

import pytest

from pipeline.config import override
from pipeline.experiments import SweepSpec, get_experiment
from pipeline.plan import MAX_PACK, MAX_PACK_CPU, default_pack_size, packs, plan_sweep
from pipeline.sweep import GPUS_PER_TRIAL_ON_CUDA, SweepOptions, _gpu_share, run_sweep
from pipeline.trial import TrialSpec


def test_packs_split_evenly_and_never_exceed_the_pack_size():
    members = [{"mask.beta": b} for b in range(26)]
    for size in (1, 4, 13, 16, 30):
        groups = packs(members, size)
        assert max(len(g) for g in groups) <= size
        assert max(len(g) for g in groups) - min(len(g) for g in groups) <= 1
        assert sorted(m["mask.beta"] for g in groups for m in g) == list(range(26))
        assert len(groups) == -(-26 // size)
    assert [len(g) for g in packs(members, None)] == [13, 13]  # at most 16 by default


def test_only_mask_axes_are_packed_and_each_member_is_one_grid_point():
    packed = plan_sweep("alpha-sensitivity", "smoke", 2, {"mask.steps": "7"}, pack_size=4)
    assert len(packed.runs) == 2  # one pack per seed: β moved into the packs
    assert packed.runs[0].columns == {"experiment": "addmul-fnn", "seed": 0, "model.size": "small",
                                      "pack": "mask.beta=1e-05,0.0001,0.001"}
    members = packed.runs[1].trials
    assert [t.config.mask.beta for t in members] == [1e-5, 1e-4, 1e-3]
    assert {(t.config.seed, t.config.model.size, t.config.mask.steps, t.config.sweep) for t in members} == {
        (1, "small", 7, "alpha-sensitivity")}
    unpacked = plan_sweep("alpha-sensitivity", "smoke", 2, {"mask.steps": "7"}, pack_size=1)
    assert len(unpacked.runs) == 6 and all(len(run.trials) == 1 for run in unpacked.runs)
    assert {run.columns["mask.beta"] for run in unpacked.runs} == {"1e-05", "0.0001", "0.001"}
    assert sorted(t.id for t in packed.trials) == sorted(t.id for t in unpacked.trials)  # packing is not in the id


def test_each_trial_is_resolved_once_with_the_config_a_preset_gives():
    """The plan's trial = the preset at the scale with the grid values, seed and sweep set; its id is
    the one `pipeline run` finds for the same config (an independent resolution of the same settings)."""
    from pipeline.trial import resolve

    plan = plan_sweep("sharing-vs-capacity", "cpu", 2)
    assert len(plan.trials) == 3 * 2 and all(isinstance(t, TrialSpec) for t in plan.trials)
    for trial in plan.trials:
        expected = override(get_experiment("addmul-fnn", scale="cpu"), {"model.size": trial.config.model.size,
                                                                        "seed": str(trial.config.seed)})
        assert trial.config == override(expected, {"sweep": "sharing-vs-capacity"})
        assert trial.id == resolve(trial.config).id and trial.id.startswith(f"addmul-fnn-s{trial.config.seed}-")


@pytest.mark.parametrize("overrides, asked, expected", [
    ({}, 0, 0), ({"device": "cuda"}, 0, GPUS_PER_TRIAL_ON_CUDA), ({"device": "cuda:1"}, 0.5, 0.5), ({}, 1, 1)])
def test_trials_on_cuda_reserve_a_gpu_share_and_pack_by_default(overrides, asked, expected):
    devices = {override(get_experiment("addmul-fnn", scale="smoke"), overrides).device}
    assert _gpu_share(devices, asked) == expected
    assert default_pack_size(devices) == (MAX_PACK if "device" in overrides else MAX_PACK_CPU)


def test_a_pack_size_below_one_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="pack size must be >= 1"):
        run_sweep(SweepOptions("alpha-sensitivity", tmp_path, "smoke", pack_size=0))
    assert not (tmp_path / "trials").exists()


def test_a_tuple_valued_grid_axis_reaches_the_trial_as_its_tuple():
    """Grid values are passed as they are (formerly turned into strings: "(100, 200)" did not parse)."""
    spec = SweepSpec(("addmul-fnn",), {"pretrain.lr_decay_steps": [(100, 200), ()]})
    plan = plan_sweep("test", "smoke", 1, pack_size=1, spec=spec)
    assert [t.config.pretrain.lr_decay_steps for t in plan.trials] == [(100, 200), ()]


def test_the_papers_addmul_sweep_is_estimated_before_it_starts():
    """C.3: 20k pretraining steps per network, 20k steps per mask (add, mul and the control mask),
    FNN and LSTM x 10 seeds; trials that share a network (same seed, task and model) pretrain once."""
    work = plan_sweep("addmul", "paper", 10).workload()
    assert (work.trials, work.pretrain_steps, work.mask_steps) == (20, 20 * 20_000, 20 * 3 * 20_000)
    work = plan_sweep("alpha-sensitivity", "cpu", 5).workload()  # 5 β values share each seed's network
    assert (work.trials, work.pretrain_steps) == (25, 5 * 20_000)
    assert "not measured" in work.lines("cuda")[-1] and len(work.lines("cpu")) == 1


def test_an_unreachable_cluster_address_writes_nothing(tmp_path):
    with pytest.raises(ConnectionError, match="cannot reach the Ray cluster"):
        run_sweep(SweepOptions("alpha-sensitivity", tmp_path / "results", "smoke", address="127.0.0.1:1"))
    assert not (tmp_path / "results").exists()


def test_a_trial_waits_for_the_memory_it_reserves_then_starts(monkeypatch):
    """A trial retried after a memory kill waits while the node has less available than it reserves
    (here: 1 GB available for 2 GB reserved, then 3 GB), and never longer than the limit."""
    import pipeline.trainable as trainable

    readings = iter([2**30, 2**30, 3 * 2**30])
    monkeypatch.setattr(trainable, "_available_memory", lambda: next(readings))
    monkeypatch.setattr(trainable.time, "sleep", lambda seconds: None)
    assert trainable.wait_for_memory(2 * 2**30, poll=5) == 10
    monkeypatch.setattr(trainable, "_available_memory", lambda: 2**30)
    assert trainable.wait_for_memory(2 * 2**30, poll=5, limit=30) == 30
    assert trainable.wait_for_memory(0) == 0  # no reservation: no wait


def test_available_memory_is_read_from_the_kernel():
    import pipeline.trainable as trainable

    meminfo = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines())
    kilobytes = int(meminfo["MemAvailable"].split()[0])
    assert abs(trainable._available_memory() - kilobytes * 1024) < 512 * 2**20  # the same reading, moments apart
