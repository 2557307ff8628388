"""Transformers built from configs, masked through `pipeline run` on the shipped toy data: Parquet
rows and an MLflow run like every other study, on the batched path; bad input stops before training."""

import logging
from pathlib import Path

import mlflow
import pyarrow.dataset as ds
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("transformers")

from pipeline.cli import main  # noqa: E402
from pipeline.config import override  # noqa: E402
from pipeline.experiments import EXPERIMENTS, get_experiment  # noqa: E402
from pipeline.run import run_trial  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = {"pretrain.steps": "20", "mask.steps": "6", "checkpoint_every": "5", "log_every": "5",
        "pretrain.batch_size": "16", "mask.batch_size": "16", "data_dir": str(FIXTURES)}


@pytest.fixture(autouse=True)
def local_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def tiny(name, **extra):
    return override(get_experiment(name, smoke=True), TINY | EXPERIMENTS[name].tiny | extra)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["text-bert", "text-gpt2"])
def test_tiny_transformer_masked_end_to_end_on_the_batched_path(name, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        result = run_trial(tiny(name), tmp_path)
    assert "vmap cannot batch" not in caplog.text  # every mask trained on the batched path
    metrics = ds.dataset(tmp_path / "parquet" / "metrics", partitioning="hive").to_table().to_pylist()
    masks = {"all", "living", "machines"}
    assert {(r["mask"], r["subtask"]) for r in metrics} == {
        (m, s) for m in {"none"} | masks | {f"not-{m}" for m in masks} for s in masks}
    assert all(r["trial_id"] == result.trial_id and r["task"] == "text" and r["model.builder"] == "huggingface"
               for r in metrics)
    layers = ds.dataset(tmp_path / "parquet" / "layers", partitioning="hive").to_table().to_pylist()
    shared = [r for r in layers if r["mask"] == "living" and r["layer"] == "all"][0]
    assert 0 <= shared["shared"] <= shared["kept"] <= shared["total"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["model.config"] == get_experiment(name).model.config
    assert "accuracy/living/living" in runs[0].data.metrics


@pytest.mark.slow
def test_next_token_preset_through_the_cli(tmp_path, caplog):
    arguments = ["run", "text-gpt2-lm", "--smoke", "--data-dir", str(FIXTURES), "--results-dir", str(tmp_path)]
    for key, value in (TINY | EXPERIMENTS["text-gpt2-lm"].tiny).items():
        if key != "data_dir":
            arguments += ["--set", f"{key}={value}"]
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(main, arguments)
    assert result.exit_code == 0, result.output
    assert "vmap cannot batch" not in caplog.text
    metrics = ds.dataset(tmp_path / "parquet" / "metrics", partitioning="hive").to_table().to_pylist()
    assert {r["mask"] for r in metrics} >= {"living", "machines", "all"}


@pytest.mark.slow
def test_given_network_study_masks_the_pretrained_weights_untrained(tmp_path):
    from models.huggingface import huggingface

    torch.manual_seed(5)
    saved = huggingface(38, 4, 0, 16, config="bert", settings="num_hidden_layers=1,hidden_size=8,"
                        "num_attention_heads=2,intermediate_size=8,max_position_embeddings=16")
    saved.model.save_pretrained(tmp_path / "bert-folder")
    config = tiny("text-bert", study="given-network", **{"model.config": "", "model.settings": "",
                                                         "model.pretrained": str(tmp_path / "bert-folder")})
    result = run_trial(config, tmp_path / "results")
    network = torch.load(result.trial_dir / "network" / "model.pt", weights_only=True)
    for name, weight in saved.state_dict().items():
        assert torch.equal(network[name], weight), name
    assert not (tmp_path / "results" / "pretrained").exists()  # nothing was trained before the masks


@pytest.mark.parametrize("change, message", [
    ({"model.config": "gpx2"}, r"not a model type transformers knows \(did you mean 'gpt2'\?\)"),
    ({"model.pretrained": "{empty}"}, "holds no weights"),
    ({"task_options.label_column": "topic"}, r"has no column 'topic'"),
])
def test_bad_input_is_one_clear_error_before_any_training(change, message, tmp_path):
    (tmp_path / "empty").mkdir()
    change = {k: v.format(empty=tmp_path / "empty") for k, v in change.items()}
    with pytest.raises(ValueError, match=message):
        run_trial(tiny("text-gpt2", **change), tmp_path / "results")
    assert not (tmp_path / "results" / "pretrained").exists() and not (tmp_path / "results" / "trials").exists()
