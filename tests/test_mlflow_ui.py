"""The MLflow UI as a user meets it, in headless Chromium: `mlflow ui` on 127.0.0.1 over a store with
a short tiny run and a 2-trial sweep. The experiment opens on its runs (not the GenAI overview),
the run's page draws the train/loss curve and lists its datasets, the sweep's trials are nested
under their parent with the searched parameters as columns, and the "Training curves" view starts
with the loss.

    python -m pytest -q tests/test_mlflow_ui.py            # about 40 s on 2 cores (runs train while the UI starts)
    NANOVLM_UI_SCREENSHOTS=docs python -m pytest -q tests/test_mlflow_ui.py      # and redraw the README's PNGs

Needs Debian's `chromium` and `chromium-driver` (`bash .ci/chromium`) and selenium (the `test`
extra). Without them the tests fail, saying so; NANOVLM_SKIP_BROWSER=1 skips them instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments.presets import get_preset
from experiments.runner import run_experiment
from nanovlm import dashboard
from nanovlm.config import override
from sweeps import lr
from sweeps.postgres import free_port
from sweeps.parent import view_id
from tests.conftest import wait_for_url

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("NANOVLM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("NANOVLM_CHROMEDRIVER", "/usr/bin/chromedriver")
RUN_NAME, STUDY = "tiny-short", "lr-demo"
TINY = {"max_steps": 6, "validation_steps": 3, "eval_interval": 3, "save_checkpoint_steps": 100, "batch_size": 4,
        "train_samples": 64, "val_samples": 8, "run_name": RUN_NAME}
SWEEP = ["--preset", "tiny", "--n_trials", "2", "--study_name", STUDY, "--max_steps", "2", "--validation_steps", "2",
         "--eval_interval", "2", "--save_checkpoint_steps", "100", "--batch_size", "4", "--train_samples", "32",
         "--val_samples", "8"]
WAIT_S = 30  # for one page to show what is asserted


def _require_browser() -> None:
    """Fail (never skip silently) when the browser is missing, unless NANOVLM_SKIP_BROWSER=1."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        message = f"browser tests need {', '.join(missing)}: run `bash .ci/chromium` as root"
        if os.environ.get("NANOVLM_SKIP_BROWSER") == "1":
            pytest.skip(message + " (skipped: NANOVLM_SKIP_BROWSER=1)")
        pytest.fail(message + ", or set NANOVLM_SKIP_BROWSER=1 to skip", pytrace=False)


def _chromium(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,800", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    # A fresh profile, but with MLflow's assistant chat panel closed (it opens on first visit and takes a third
    # of the window): set before any page script runs.
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
        "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")})
    return browser


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """base (URL), experiment_id, run_id, fingerprint (the tiny run's data) and browser, over a fresh store."""
    _require_browser()
    import torch
    from mlflow import MlflowClient

    tmp = tmp_path_factory.mktemp("mlflow-ui")
    uri = f"sqlite:///{tmp}/mlflow.db"
    MlflowClient(tracking_uri=uri).search_experiments()  # the schema, before two processes use the file
    port, log = free_port(), tmp / "mlflow-ui.log"
    # The README's command, started while the runs train. Quicker to start with one worker and without
    # the job runner (GenAI judges), which the pages here do not use.
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], cwd=tmp, stdout=open(log, "w"),
                              stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the server takes the other core
    browser = None
    try:
        from evals.fixtures import write_all

        write_all(tmp / "evalfix")  # MMStar in its schema, offline: the run evaluates it every 2 steps
        cfg = override(get_preset("tiny"), {**TINY, "output_dir": str(tmp / "runs"), "eval_tasks": "synthetic,mmstar",
                                            "eval_steps": 2, "eval_limit": 12, "eval_data_dir": str(tmp / "evalfix")})
        result = run_experiment(cfg, tracking_uri=uri)
        assert lr.main([*SWEEP, "--storage", f"sqlite:///{tmp}/optuna.db", "--tracking_uri", uri,
                        "--output_dir", str(tmp / "runs")]) == 0
        base = f"http://127.0.0.1:{port}"
        wait_for_url(f"{base}/health", server, log, timeout=120)
        browser = _chromium(tmp / "chromium")
        run = MlflowClient(tracking_uri=uri).get_run(result.run_id)
        yield SimpleNamespace(base=base, experiment_id=run.info.experiment_id, run_id=result.run_id,
                              fingerprint=run.data.tags["dataset_fingerprint"], browser=browser)
    finally:
        torch.set_num_threads(threads)
        if browser is not None:
            browser.quit()
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=3)
        except subprocess.TimeoutExpired:  # it only read the store: no need to wait for a graceful exit
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _wait(browser, condition, what: str):
    """`condition(browser)` once it is true; the page re-rendering under it (stale elements) is retried."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, WAIT_S, poll_frequency=0.2,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        raise AssertionError(f"{what} (after {WAIT_S} s at {browser.current_url})") from None


def _click(browser, find, what: str) -> None:
    """Click the first element `find(browser)` returns, again if the page re-rendered it meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    def clicked(b):
        elements = find(b)
        if not elements:
            return False
        try:
            elements[0].click()
            return True
        except StaleElementReferenceException:
            return False

    _wait(browser, clicked, what)


def _find(browser, css: str, text: str = ""):
    """Visible elements matching `css` (and containing `text`)."""
    from selenium.webdriver.common.by import By

    return [e for e in browser.find_elements(By.CSS_SELECTOR, css) if e.is_displayed() and text in e.text]


def _rows(browser) -> list[str]:
    """The run ids of the runs table's rows, top to bottom (ag-grid keeps one element per row per pinned part)."""
    rows = {}
    for row in _find(browser, "[role=row][row-id]"):
        rows.setdefault(row.get_attribute("row-id"), row.location["y"])
    return sorted(rows, key=rows.get)


def _screenshot(browser, name: str) -> None:
    """docs/<name>.png when NANOVLM_UI_SCREENSHOTS names a folder; 8-bit colour keeps it small."""
    folder = os.environ.get("NANOVLM_UI_SCREENSHOTS")
    if not folder:
        return
    from PIL import Image

    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(colors=128).save(path, optimize=True)


def test_the_experiment_opens_on_its_runs_with_their_datasets(ui):
    browser = ui.browser
    # The README's link: straight to the runs table, whatever this browser chose before.
    browser.get(f"{ui.base}/#/experiments/{ui.experiment_id}?workflowType=machine_learning")
    _wait(browser, lambda b: "/runs" in b.current_url and _find(b, "a", RUN_NAME), "the runs table lists the run")
    # the Dataset cell shows the name and the start of the digest, the fingerprint
    _wait(browser, lambda b: _find(b, "[role=gridcell]", f"synthetic:training ({ui.fingerprint[:6]}"),
          "the Dataset column shows the training data with its fingerprint")
    _screenshot(browser, "mlflow-runs")

    # A new user: the experiments list, the sidebar's "Model training" switch once, then the experiment.
    browser.get(f"{ui.base}/#/experiments")
    _click(browser, lambda b: _find(b, "span", "Model training"), "the GenAI / Model training switch")
    _click(browser, lambda b: _find(b, f"a[href$='/experiments/{ui.experiment_id}']", "nanovlm"),
           "the experiment in the experiments list")
    _wait(browser, lambda b: "/runs" in b.current_url and _find(b, "a", RUN_NAME),
          "after choosing Model training the experiment opens on its runs")


def test_the_run_page_draws_the_loss_and_lists_its_inputs(ui):
    browser = ui.browser
    page = f"{ui.base}/#/experiments/{ui.experiment_id}/runs/{ui.run_id}"
    browser.get(f"{page}?workflowType=machine_learning")
    _wait(browser, lambda b: _find(b, "body", "synthetic:training") and _find(b, "body", "Training"),
          "the run's overview lists its training dataset")

    browser.get(f"{page}/model-metrics?workflowType=machine_learning")
    _wait(browser, lambda b: _find(b, "input[placeholder*='Search metric charts']"), "the chart search box")[0] \
        .send_keys("train/loss")

    def loss_curve(b):
        cards = _find(b, "[data-testid=experiment-view-compare-runs-card]", "loss")
        lines = [p for c in cards for p in c.find_elements("css selector", ".js-plotly-plot path.js-line")]
        return [p for p in lines if len(p.get_attribute("d") or "") > 20]  # a drawn polyline, not an empty path

    _wait(browser, loss_curve, "a rendered train/loss line chart")
    _screenshot(browser, "mlflow-run-metrics")


def test_the_run_page_draws_the_benchmark_curve(ui):
    """--eval_tasks mmstar --eval_steps 2: the score at steps 2, 4 and 6, charted beside the loss."""
    browser = ui.browser
    browser.get(f"{ui.base}/#/experiments/{ui.experiment_id}/runs/{ui.run_id}/model-metrics?workflowType=machine_learning")
    from selenium.webdriver.common.keys import Keys

    box = _wait(browser, lambda b: _find(b, "input[placeholder*='Search metric charts']"), "the chart search box")[0]
    box.send_keys(Keys.CONTROL, "a")  # the page may keep the previous test's search
    box.send_keys(Keys.BACKSPACE, "eval/mmstar/average")

    def score_curve(b):
        cards = _find(b, "[data-testid=experiment-view-compare-runs-card]", "eval/mmstar/average")
        # a drawn line over the steps of the evaluations (2 to 6 on the x axis)
        return [c for c in cards if {"Step", "2", "6"} <= set(c.text.split())
                and any(len(p.get_attribute("d") or "") > 10
                        for p in c.find_elements("css selector", ".js-plotly-plot path.js-line"))]

    _wait(browser, score_curve, "a rendered eval/mmstar/average curve over the evaluations")
    _screenshot(browser, "mlflow-benchmark-curve")


def test_sweep_trials_are_nested_under_their_parent(ui):
    browser = ui.browser
    browser.get(dashboard.ui_link(ui.base, ui.experiment_id, view=view_id(STUDY), charts=False))
    parent_id = _wait(browser, lambda b: _find(b, "[role=row][row-id]", STUDY), "the sweep's parent run")[0] \
        .get_attribute("row-id")
    assert _rows(browser) == [parent_id], "trials hidden until the parent is expanded"
    _click(browser, lambda b: _find(b, f"[row-id='{parent_id}'] [col-id='attributes.`Run Name`'] button"),
           "the parent's expand button")
    _wait(browser, lambda b: len(_rows(b)) == 3, "the two trials shown under the parent")
    rows = _rows(browser)
    assert rows[0] == parent_id
    trials = {r: _find(browser, f"[role=row][row-id='{r}']", f"{STUDY}-trial-") for r in rows[1:]}
    assert all(trials.values()), "the rows under the parent are its trials"
    searched = ("train.lr_projector", "train.lr_backbones", "train.freeze_vision_encoder", "val/loss")
    _wait(browser, lambda b: all(c in " ".join(h.text for h in _find(b, "[role=columnheader]")) for c in searched),
          f"columns for the searched parameters and the metric: {searched}")
    _screenshot(browser, "mlflow-sweep")


def test_the_training_view_starts_with_the_loss(ui):
    browser = ui.browser
    browser.get(dashboard.ui_link(ui.base, ui.experiment_id, view=dashboard.TRAINING_VIEW))

    def first_chart(b):
        cards = _find(b, "[data-testid=experiment-view-compare-runs-card]")
        return cards[0].text if cards and "Step" in cards[0].text else None  # drawn: it has an x axis

    first = _wait(browser, first_chart, "the view's first chart drawn")
    assert "(train/loss)" in first, first  # its legend: "<run> (train/loss)"
    headers = _find(browser, "[data-testid=experiment-view-compare-runs-section-header]")
    sections = [h.text.splitlines()[0].strip() for h in headers]
    assert sections[:len(dashboard.TRAINING_SECTIONS)] == list(dashboard.TRAINING_SECTIONS), sections
    _screenshot(browser, "mlflow-training-view")
