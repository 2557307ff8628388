"""End to end on the real thing: training, Parquet files, a sqlite MLflow store in tmp_path."""

import mlflow
import pyarrow.dataset as ds
import pytest
import torch
from click.testing import CliRunner

import pipeline.stages
from pipeline.cli import main
from pipeline.config import override
from pipeline.experiments import get_experiment
from pipeline.run import run_trial
from pipeline.trial import resolve

TINY = {"pretrain.steps": "60", "mask.steps": "30", "eval_size": "64", "checkpoint_every": "10",
        "mask.fused": "false"}
TINY_MODEL = {"fnn": {"model.size": "16"}, "lstm": {"model.hidden": "16"}}


def tiny(name="addmul-fnn", **extra):
    config = get_experiment(name, smoke=True)
    return override(config, TINY | TINY_MODEL[config.model.builder] | extra)


@pytest.fixture(autouse=True)
def local_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _runs(results_dir):
    client = mlflow.MlflowClient(f"sqlite:///{results_dir / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["addmul-fnn", "double-add-lstm-sequential"])
def test_trial_writes_parquet_and_one_mlflow_run(tmp_path, name):
    result = run_trial(tiny(name), tmp_path)
    metrics = ds.dataset(tmp_path / "parquet" / "metrics", partitioning="hive").to_table().to_pylist()
    layers = ds.dataset(tmp_path / "parquet" / "layers", partitioning="hive").to_table().to_pylist()
    subtasks = {"addmul-fnn": {"add", "mul"}, "double-add-lstm-sequential": {"pair1", "pair2"}}[name]
    assert {r["mask"] for r in metrics} == {"none"} | subtasks | {"full"} | {f"not-{m}" for m in subtasks | {"full"}}
    assert all(0 <= r["accuracy"] <= 1 and r["trial_id"] == result.trial_id and r["seed"] == 0 for r in metrics)
    assert all(r["task_version"] == 1 and r["mask.beta"] > 0 for r in metrics)
    # per-layer counts agree with the saved bit-packed masks
    from models.masking import Masks
    mask = Masks.load(result.trial_dir / "masks" / f"{sorted(subtasks)[0]}.masks.pt")
    total_row = [r for r in layers if r["mask"] == sorted(subtasks)[0] and r["layer"] == "all"][0]
    assert total_row["kept"] == mask.kept() and total_row["total"] == mask.total()
    runs = _runs(tmp_path)
    assert len(runs) == 1 and runs[0].data.tags["trial_id"] == result.trial_id
    assert runs[0].data.params["mask.beta"] == str(tiny(name).mask.beta)
    assert "accuracy/none/full" in runs[0].data.metrics
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"masks", "config.json", "tables"} <= artifacts
    assert "tables/layers" in {a.path for a in client.list_artifacts(runs[0].info.run_id, "tables")}


def test_concurrent_trials_sharing_a_network_pretrain_it_once(tmp_path, monkeypatch):
    import threading

    calls = []
    real = pipeline.stages.train_network

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(pipeline.stages, "train_network", counting)
    from pipeline.experiments import task_of
    from pipeline.storage import Storage

    contexts = [pipeline.stages.TrialContext(resolve(config), task_of(config), tmp_path, Storage(tmp_path))
                for config in (tiny(**{"mask.beta": b}) for b in ("1e-4", "2e-4", "3e-4"))]
    threads = [threading.Thread(target=pipeline.stages.pretrained_network, args=(ctx,)) for ctx in contexts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(list((tmp_path / "pretrained").glob("*/model.pt"))) == 1


def interrupt_in_second_mask(monkeypatch, results_dir) -> None:
    """Run the tiny trial into `results_dir`, stopped by a KeyboardInterrupt at the 15th step of its
    second mask (after that mask's checkpoint at step 10); training_step is real again afterwards."""
    calls = {"n": 0}
    real_step = pipeline.stages.training_step

    def failing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 45:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(pipeline.stages, "training_step", failing_step)
    with pytest.raises(KeyboardInterrupt):
        run_trial(tiny(), results_dir)
    monkeypatch.setattr(pipeline.stages, "training_step", real_step)


@pytest.mark.slow
def test_interrupted_trial_resumes_to_the_same_result_exactly_once(tmp_path, monkeypatch):
    straight = run_trial(tiny(), tmp_path / "straight")
    interrupt_in_second_mask(monkeypatch, tmp_path / "resumed")
    masks_dir = tmp_path / "resumed" / "trials" / straight.trial_id / "masks"
    assert (masks_dir / "add.logits.pt").exists() and (masks_dir / "mul.checkpoint.pt").exists()
    assert not (tmp_path / "resumed" / "parquet").exists() and not list(masks_dir.glob(".*.tmp"))
    pretrained = next((tmp_path / "resumed" / "pretrained").glob("*/model.pt"))
    pretrained_mtime = pretrained.stat().st_mtime_ns

    resumed = run_trial(tiny(), tmp_path / "resumed")
    run_trial(tiny(), tmp_path / "resumed")  # a third call finds it finished
    assert pretrained.stat().st_mtime_ns == pretrained_mtime
    for name in ("add", "mul", "full"):
        a = torch.load(straight.trial_dir / "masks" / f"{name}.logits.pt")
        b = torch.load(resumed.trial_dir / "masks" / f"{name}.logits.pt")
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert len(_runs(tmp_path / "resumed")) == 1
    table = ds.dataset(tmp_path / "resumed" / "parquet" / "metrics", partitioning="hive").to_table()
    assert table.num_rows == ds.dataset(tmp_path / "straight" / "parquet" / "metrics", partitioning="hive").to_table().num_rows


@pytest.mark.slow
def test_pretrained_network_is_reused_across_mask_settings(tmp_path):
    run_trial(tiny(), tmp_path)
    run_trial(tiny(**{"mask.beta": "1e-3"}), tmp_path)
    assert len(list((tmp_path / "pretrained").iterdir())) == 1
    assert len(list((tmp_path / "trials").iterdir())) == 2


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["run", "addmul-fn"], "did you mean 'addmul-fnn'"),
        (["run", "addmul-fnn", "--set", "mask.bta=1"], "did you mean 'mask.beta'"),
        (["run", "addmul-fnn", "--set", "pretrain.steps=x"], "pretrain.steps must be int"),
        (["run", "addmul-fnn", "--set", "mask.steps=-3"], "must not be negative"),
        (["run", "addmul-fnn", "--set", "model.size=tiny"], "model.size must be one of"),
    ],
)
def test_cli_bad_input(tmp_path, arguments, message):
    result = CliRunner().invoke(main, [*arguments, "--results-dir", str(tmp_path / "out")])
    assert result.exit_code != 0 and message in result.output
    assert not (tmp_path / "out").exists()


def test_cli_unreachable_tracking_and_unwritable_output(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["run", "addmul-fnn", "--smoke", "--results-dir", str(blocker / "out")])
    assert result.exit_code != 0 and "cannot write to the results directory" in result.output

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    result = CliRunner().invoke(main, ["run", "addmul-fnn", "--smoke", "--results-dir", str(tmp_path / "out")])
    assert result.exit_code != 0 and "cannot reach the MLflow tracking store" in result.output
    assert not (tmp_path / "out" / "trials").exists() and not (tmp_path / "out" / "pretrained").exists()


def test_cli_list_shows_every_experiment():
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    for name in ("addmul-fnn", "addmul-lstm", "double-add-fnn", "double-add-lstm", "double-add-lstm-sequential"):
        assert name in result.output
    assert "mask.beta = 0.0004" in result.output


def test_cli_list_shows_the_studies_and_each_scale():
    from pipeline.experiments import study_names

    output = CliRunner().invoke(main, ["list"]).output
    studies = output.split("studies (recipes; the key `study`):")[1].split("experiments (")[0]
    assert {line.split(":")[0].strip() for line in studies.strip().splitlines()} == set(study_names())
    assert {"masks", "transfer", "class-removal", "mask-stability", "repeat-masks", "scan"} <= set(study_names())
    assert "--scale cpu: mask.steps=10000" in output and "cpu: experiments addmul-fnn-stability" in output


def test_cli_rejects_a_uri_results_dir_instead_of_writing_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["run", "addmul-fnn", "--results-dir", "s3://bucket/results"])
    assert result.exit_code != 0 and "looks like a URI" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_storage_uri_shares_finished_stages_between_machines(tmp_path, monkeypatch):
    """Two 'nodes' with their own local results folders and one storage URI (file:// here; s3://
    and gs:// go through the same pyarrow filesystem calls)."""
    storage = (tmp_path / "bucket").as_uri()
    (tmp_path / "bucket").mkdir()
    first = run_trial(tiny(), tmp_path / "node-a", storage_uri=storage)
    bucket = tmp_path / "bucket"
    assert len(list(bucket.glob("pretrained/*/model.pt"))) == 1
    assert {p.name for p in (bucket / "trials" / first.trial_id / "masks").iterdir()} == {
        f"{name}.{kind}" for name in ("add", "mul", "full") for kind in ("curve.json", "masks.pt", "logits.pt",
                                                                       "logits.pt.manifest.json")}
    assert (bucket / "trials" / first.trial_id / "recorded.json").exists()
    assert not list(bucket.rglob("*.tmp"))

    def no_pretraining(*args):
        raise AssertionError("node b pretrained although storage had the network")

    monkeypatch.setattr(pipeline.stages, "train_network", no_pretraining)
    run_trial(tiny(**{"mask.beta": "1e-3"}), tmp_path / "node-b", storage_uri=storage)
    same = run_trial(tiny(), tmp_path / "node-b", storage_uri=storage)  # finished on node a: pulled, not rerun
    assert same.trial_id == first.trial_id and not (tmp_path / "node-b" / "trials" / first.trial_id / "masks").exists()

    result = CliRunner().invoke(main, ["analyze", storage, "--out", str(tmp_path / "figures")])
    assert result.exit_code == 0, result.output
    assert "2 trials" in (tmp_path / "figures" / "report.md").read_text()


@pytest.mark.parametrize("fused", ["false", "true"])
def test_masks_of_a_trial_trained_together_equal_masks_trained_one_by_one(tmp_path, fused):
    """mask.pack=true trains add, mul and the control mask in one pass: the same trial, the same masks."""
    alone = run_trial(tiny(**{"mask.fused": fused}), tmp_path / "alone")
    packed = run_trial(tiny(**{"mask.fused": fused, "mask.pack": "true"}), tmp_path / "packed")
    assert packed.trial_id == alone.trial_id  # packing does not change what is computed
    names = sorted(p.name for p in (alone.trial_dir / "masks").glob("*.logits.pt"))
    assert names == ["add.logits.pt", "full.logits.pt", "mul.logits.pt"]
    for name in names:
        a, b = torch.load(alone.trial_dir / "masks" / name), torch.load(packed.trial_dir / "masks" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert len(_runs(tmp_path / "packed")) == 1


def test_curve_points_are_sent_before_each_checkpoint(tmp_path, monkeypatch):
    """A worker killed after a checkpoint resumes from it: every curve point up to the checkpoint must
    already be recorded, or the curve has a hole where the lost points were (a 5 s batching interval
    held them back)."""
    import types

    import pipeline.loop

    held, sent, at_checkpoint = [], [], []
    ctx = types.SimpleNamespace(config=tiny(checkpoint_every="10", log_every="5"),
                                log_metrics=lambda stage, step, values: held.append(step),
                                flush_metrics=lambda: (sent.extend(held), held.clear()))
    monkeypatch.setattr(pipeline.loop, "atomic_torch_save", lambda payload, path: at_checkpoint.append(
        (payload["step"], list(sent))))
    step = lambda: {"loss": torch.tensor(1.0)}  # noqa: E731
    pipeline.loop.run_stage(ctx, pipeline.loop.Stage("mask add", 30, tmp_path / "unused.pt", step, {}))
    assert [(step, points) for step, points in at_checkpoint] == [(10, [5, 10]), (20, [5, 10, 15, 20])]
