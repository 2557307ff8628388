"""reproduction.record: the record's runs.json lists what ran, never an invocation that ran nothing."""

import json

from reproduction import record


def test_an_option_pipeline_sweep_does_not_take_is_refused_and_not_recorded(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(record, "RECORD", tmp_path / "record")
    returncode = record.main(["addmul", "--work", str(tmp_path / "work"), "--cpus-per-trail", "1"])
    assert returncode == 2
    error = capfd.readouterr().err  # pipeline sweep's (click's) message, then record's
    assert "No such option '--cpus-per-trail'" in error and "nothing ran, nothing recorded" in error
    assert not (tmp_path / "record").exists() and not (tmp_path / "work").exists()


def test_options_go_to_pipeline_sweep_and_into_runs_json(tmp_path, monkeypatch):
    """A sweep option record.py does not know reaches `pipeline sweep`; an invocation that fails (here
    the sweep refuses an unknown config key: exit 1) is kept in runs.json with its command and status."""
    monkeypatch.setattr(record, "RECORD", tmp_path / "record")
    returncode = record.main(["addmul", "--work", str(tmp_path / "work"), "--set", "no.such.key=1"])
    assert returncode == 1
    runs = json.loads((tmp_path / "record" / "addmul" / "runs.json").read_text())
    assert runs[0]["command"].endswith("--set no.such.key=1") and runs[0]["returncode"] == 1
