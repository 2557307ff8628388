"""The MLflow UI, opened in headless Chromium on a real `mlflow server` over a smoke sweep's store."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

from pipeline.sweep import SweepOptions, run_sweep
from tests.pipeline.test_sweep import TINY

pytestmark = pytest.mark.slow
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def _browser():
    """Headless Chromium through chromedriver, or a skip that says what is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("Chromium or chromedriver is missing: apt-get install chromium chromium-driver (.ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(store: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{store}",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # killed with its uvicorn workers, as a group
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    os.killpg(server.pid, signal.SIGKILL)
    pytest.fail("mlflow server did not answer /health within 120 s")


def _wait_for_text(browser, texts: list[str], timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        page = browser.find_element("tag name", "body").text
        if all(t in page for t in texts):
            return page
        time.sleep(0.5)
    raise AssertionError(f"the page never showed {texts}; it shows: {page[:1500]}")


def test_mlflow_ui_lists_the_sweeps_runs_with_metrics_and_curves(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    browser = _browser()
    run_sweep(SweepOptions("sharing-vs-capacity", tmp_path, "smoke", 1, TINY | {"log_every": "5"}, num_cpus=2))
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("modular/sweep/sharing-vs-capacity")
    trials = [r for r in client.search_runs([experiment.experiment_id]) if "trial_id" in r.data.tags]
    port = _free_port()
    server = _serve(tmp_path / "mlflow.db", port)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        base = f"http://127.0.0.1:{port}"
        view = "workflowType=machine_learning"  # MLflow 3's "Model training" view: the runs table
        browser.get(f"{base}/#/experiments/{experiment.experiment_id}?{view}")
        # the runs table, with the sweep's parent run and its nested trial runs
        page = _wait_for_text(browser, ["Run Name", "sharing-vs-capacity", f"{len(trials) + 1} matching runs"])
        assert "Observability" not in page  # not the GenAI overview
        browser.save_screenshot(str(ARTIFACTS / "mlflow-runs-table.png"))
        for run in trials:  # each trial's page: its name, parent, params and final metrics
            browser.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}?{view}")
            _wait_for_text(browser, [run.info.run_name, "Finished", "kept/add", "accuracy/add/add", "model.size"])
        browser.save_screenshot(str(ARTIFACTS / "mlflow-trial-run.png"))
        run = trials[0]
        browser.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}/model-metrics?{view}")
        # one chart section per stage: 6 curves for each mask, 3 for pretraining
        page = _wait_for_text(browser, ["mask/add\n(6)", "mask/mul\n(6)", "mask/full\n(6)", "pretrain\n(3)"])
        browser.save_screenshot(str(ARTIFACTS / "mlflow-trial-curves.png"))
        # the same server's API, read by the browser: the curve has many points, no step twice
        browser.get(f"{base}/ajax-api/2.0/mlflow/metrics/get-history?run_id={run.info.run_id}&metric_key=mask/add/loss")
        history = json.loads(browser.find_element("tag name", "body").text)["metrics"]
        assert len(history) > 1 and len({m["step"] for m in history}) == len(history)
    finally:
        browser.quit()
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
