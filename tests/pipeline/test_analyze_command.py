"""`pipeline analyze` finds the trials a user means: a sweep, an experiment's single runs, --where."""

from click.testing import CliRunner

from pipeline.cli import main
from tests.analysis.test_analysis import _layers_row, _write


def _continual(trial, experiment, sweep):
    return {"trial_id": trial, "experiment": experiment, "task": "permuted_mnist", "sweep": sweep, "seed": 0,
            "after_task": 0, "evaluated_task": 0, "accuracy": 0.9}


def _analyze(*arguments):
    return CliRunner().invoke(main, ["analyze", *arguments])


def test_a_sweep_name_with_only_single_runs_analyses_the_single_runs_of_its_experiments(tmp_path):
    # what `pipeline run permuted-mnist --smoke` leaves: rows with sweep ""
    _write(tmp_path, "continual", [_continual("a", "permuted-mnist", "")])
    result = _analyze("permuted-mnist", "--results-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "analysing the single runs of its experiments permuted-mnist" in result.output
    assert "drew" in result.output and (tmp_path / "analysis" / "permuted-mnist" / "report.md").exists()


def test_an_experiment_name_analyses_its_single_runs_or_says_which_command_would(tmp_path):
    _write(tmp_path, "continual", [_continual("a", "permuted-mnist", ""),
                                   _continual("b", "permuted-mnist-prefer-old", "permuted-mnist")])
    result = _analyze("permuted-mnist-prefer-old", "--results-dir", str(tmp_path))
    assert result.exit_code != 0
    assert (f"`pipeline analyze permuted-mnist --results-dir {tmp_path} --where experiment=permuted-mnist-prefer-old`"
            in result.output)
    result = _analyze("permuted-mnist-prefer-old-more", "--results-dir", str(tmp_path))
    assert result.exit_code != 0 and "`pipeline run permuted-mnist-prefer-old-more`" in result.output
    assert _analyze("permuted-mnst", "--results-dir", str(tmp_path)).exit_code != 0


def test_where_selects_trials_and_a_wrong_key_is_a_clear_error(tmp_path):
    _write(tmp_path, "layers", [_layers_row(f"t{beta}{seed}", seed, size, beta, mask, "all", 100, 40, 20)
                                for beta in (1e-4, 1e-3) for seed in (0, 1) for size in ("small", "big")
                                for mask in ("add", "mul")])
    result = _analyze(str(tmp_path), "--where", "mask.beta=1e-4")
    assert result.exit_code == 0, result.output
    report = (tmp_path / "analysis" / "all" / "report.md").read_text()
    assert "Trials selected by mask.beta = '1e-4'" in report and "mask.beta=" not in report.split("## Fig. 9")[1]
    result = _analyze(str(tmp_path), "--where", "mask.betta=1e-4")
    assert result.exit_code != 0 and "no trial records a config key 'mask.betta'" in result.output
