"""In a real browser: the MLflow UI lists the sweep and the baseline; the report renders.

Headless Debian Chromium (`scripts/install_test_tools.sh`, which `make test` runs) driven by
Selenium through Debian's chromedriver: no browser download.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import RecordedSweep, copy_recorded, free_port, wait_until_serving
from tunelab.analysis.report import build_report
from tunelab.define.data import Splits
from tunelab.delivery.export import export_model, resolve_source
from tunelab.record.names import MetricName
from tunelab.record.recorded import find_sweep
from tunelab.record.store import Tracker
from tunelab.services import mlflow_ui_command, mlflow_ui_environment

pytestmark = pytest.mark.slow


def chromium_paths() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert browser and driver, "no chromium/chromedriver: run scripts/install_test_tools.sh"
    return browser, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium_paths()
    options = Options()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1800,1200",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_text(driver: Any, text: str, limit: float = 60) -> str:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        body = str(driver.find_element(By.TAG_NAME, "body").text)
        if text in body:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{text!r} did not appear in the page")


@pytest.fixture(scope="module")
def mlflow_ui(
    _recorded_once: RecordedSweep, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`mlflow ui` on 127.0.0.1 against a copy of the recorded store (a baseline and a tiny
    sweep)."""
    recorded_sweep = copy_recorded(_recorded_once, tmp_path_factory.mktemp("ui") / "recorded")
    port = free_port()
    server = subprocess.Popen(
        mlflow_ui_command(port),
        env=mlflow_ui_environment(recorded_sweep.tracking_uri),  # what `tunelab ui` runs
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/health", server, 120)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_mlflow_ui_lists_the_sweep_its_trials_and_the_baseline_with_accuracy(
    browser: Any, mlflow_ui: str, recorded_sweep: RecordedSweep, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    tracker = Tracker(recorded_sweep.tracking_uri)
    sweep_experiment = tracker.experiment_id("recorded")
    parent_name = tracker.client.get_run(recorded_sweep.parent_run_id).info.run_name
    browser.get(f"{mlflow_ui}/#/experiments/{sweep_experiment}/runs")
    wait_for_text(browser, parent_name)
    name = browser.find_element(By.XPATH, f"//*[text()='{parent_name}']")
    name.find_element(By.XPATH, "./ancestor::*[@role='gridcell'][1]").find_element(
        By.TAG_NAME, "button"
    ).click()  # expand the parent: its trials are nested under it
    children = find_sweep(tracker, "recorded").trial_runs(tracker)
    for child in children:
        wait_for_text(browser, child.info.run_name)
    browser.save_screenshot(str(tmp_path / "sweep.png"))

    baseline = tracker.client.get_run(recorded_sweep.baseline_run_id)
    best = tracker.client.get_run(recorded_sweep.best_run_id)
    browser.get(f"{mlflow_ui}/#/experiments/{baseline.info.experiment_id}/runs")
    wait_for_text(browser, baseline.info.run_name)
    for run in (baseline, best):  # each run's page shows its best validation accuracy
        browser.get(f"{mlflow_ui}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}")
        body = wait_for_text(browser, MetricName.BEST_VAL_ACCURACY)
        assert str(run.data.metrics[MetricName.BEST_VAL_ACCURACY]) in body
    browser.save_screenshot(str(tmp_path / "run.png"))
    assert (tmp_path / "sweep.png").stat().st_size > 10_000


def test_the_printed_landing_page_shows_the_sweep_and_every_trial_without_a_click(
    browser: Any, mlflow_ui: str, recorded_sweep: RecordedSweep, tmp_path: Path
) -> None:
    from tunelab.services import landing_url

    tracker = Tracker(recorded_sweep.tracking_uri)
    experiment = tracker.experiment_id("recorded")
    assert tracker.client.get_experiment(experiment).tags["mlflow.experimentKind"] == (
        "custom_model_development"  # MLflow's "Machine learning" kind, not GenAI
    )
    browser.get(landing_url(mlflow_ui, experiment))
    parent = tracker.client.get_run(recorded_sweep.parent_run_id).info.run_name
    body = wait_for_text(browser, parent)
    for child in find_sweep(tracker, "recorded").trial_runs(tracker):
        body = wait_for_text(browser, child.info.run_name)
    assert "Run Name" in body  # the runs table is the first page
    assert "Detect Issues" not in body and "Token Usage" not in body  # no GenAI overview
    browser.save_screenshot(str(tmp_path / "landing.png"))


def test_dashboard_serves_the_study_and_its_trials(
    browser: Any, recorded_sweep: RecordedSweep, tmp_path: Path
) -> None:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tunelab",
            "dashboard",
            "--storage",
            recorded_sweep.storage_url,
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(f"{url}/api/studies", server, 120)
        browser.get(f"{url}/dashboard")
        wait_for_text(browser, "recorded")  # the study, by name
        browser.get(f"{url}/dashboard/studies/1/trials")
        body = wait_for_text(browser, "Trial 2")
        assert "Trial 0" in body and "Trial 1" in body  # every trial of the 3-point grid
        browser.save_screenshot(str(tmp_path / "dashboard.png"))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_report_renders_in_chromium_without_errors(
    browser: Any, recorded_sweep: RecordedSweep, tiny_splits: Splits, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    tracker = Tracker(recorded_sweep.tracking_uri)
    source, _ = resolve_source(tracker, "recorded")
    export_model(
        tracker, source, tiny_splits, out=tmp_path / "bundle", formats=("keras",), register=False
    )
    page = tmp_path / "report.html"
    page.write_text(build_report(tracker, find_sweep(tracker, "recorded"), top=3))
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(page.as_uri())
    body = wait_for_text(browser, "Champion on the test set")
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []
    widths = browser.execute_script("return Array.from(document.images).map(i => i.naturalWidth)")
    assert len(widths) >= 6 and all(width > 0 for width in widths)  # every picture decodes
    rows = browser.find_elements(By.CSS_SELECTOR, "table tbody tr")
    assert len(rows) == 4  # the baseline and the top 3 trials
    assert "baseline (classic CNN)" in body and "(exported)" in body
    browser.save_screenshot(str(tmp_path / "report.png"))
