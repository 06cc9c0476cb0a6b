"""The report and the MLflow dashboard in real headless Chromium (Debian's `chromium`, driven by Playwright).

Screenshots land in test-artifacts/. Run only these tests with `pytest -m browser`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from conftest import SMOKE
from study.ops import server

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
SECTIONS = ["Answers", "Contents", "Convergence speed", "Gradient magnitudes",
            "The confident-wrong penalty and its consequences", "Accuracy and stability",
            "Claims of the source text and published results", "Methods and statistics"]
ANSWERS = ["Convergence speed", "Gradient magnitudes", "The confident-wrong penalty"]
FIRST_SCREEN = {"width": 1400, "height": 900}
# This machine has no network and no display: keep Chromium from reaching out or looking for a GPU.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic"]


def find_chromium() -> str:
    """Debian's Chromium; installed here when missing and we are root (as `make test` does)."""
    path = shutil.which("chromium")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        path = shutil.which("chromium")
    if path is None:
        pytest.fail("Chromium is not installed: `apt-get install chromium` (make test installs it)")
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=find_chromium(), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900})
        try:
            yield context
        finally:
            context.close()


def watch_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def test_the_report_opens_from_disk_with_every_figure_and_section(smoke_pipeline, browser):
    index = smoke_pipeline.repo / "results" / "report" / "index.html"
    page = browser.new_page()
    errors = watch_errors(page)
    page.goto(index.as_uri(), wait_until="load")
    images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
    assert len(images) >= 10
    broken = [alt for alt, complete, width in images if not complete or width == 0]
    assert not broken, f"images that did not load: {broken}"
    headings = page.evaluate("Array.from(document.querySelectorAll('h2')).map(h => h.textContent.trim())")
    for section in SECTIONS:
        assert section in headings, f"missing section {section!r}; headings: {headings}"
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert not errors, errors
    page.close()


@pytest.fixture(scope="module")
def fabricated_report(tmp_path_factory) -> Path:
    """The report built from test_report.py's fabricated results tree (seconds, no training)."""
    from test_report import build, fabricate

    root = fabricate(tmp_path_factory.mktemp("results") / "results")
    build(root)
    return root / "report"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    header = path.read_bytes()[16:24]
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


# What the first screen shows, and every figure as the page displays it (inside a closed fold: not displayed).
FIRST_SCREEN_JS = """() => {
  const answers = [...document.querySelectorAll('h2')].find(h => h.textContent.trim() === 'Answers');
  const list = answers.nextElementSibling;
  const items = [...list.querySelectorAll(':scope > li')].map(li => ({
      text: li.textContent.trim(), bottom: li.getBoundingClientRect().bottom}));
  const figures = [...document.querySelectorAll('figure img')].map(img => {
      const fold = img.closest('details');
      const link = img.closest('a');
      return {id: img.closest('figure').id, top: img.getBoundingClientRect().top, shown: img.clientWidth,
              natural: img.naturalWidth, naturalHeight: img.naturalHeight,
              minText: parseFloat(img.dataset.minTextPx), displayed: fold === null || fold.open,
              href: link ? link.getAttribute('href') : null};
  });
  const methods = document.getElementById('methods-and-statistics').getBoundingClientRect().top;
  return {items, figures, methods, height: window.innerHeight};
}"""


def test_the_report_opens_on_the_three_answers_and_every_figure_is_readable_and_opens_full_size(
        fabricated_report, browser):
    page = browser.new_page()
    page.set_viewport_size(FIRST_SCREEN)
    errors = watch_errors(page)
    page.goto((fabricated_report / "index.html").as_uri(), wait_until="load")
    page.screenshot(path=str(ARTIFACTS / "report-first-screen.png"))
    seen = page.evaluate(FIRST_SCREEN_JS)
    height = seen["height"]
    assert [item["text"].split(":")[0] for item in seen["items"]] == ANSWERS
    assert all(item["bottom"] <= height for item in seen["items"]), seen["items"]  # the three answers, whole
    # and at least the top of the first figure, with room to see what it is (a fifth of the screen)
    assert seen["figures"] and min(f["top"] for f in seen["figures"]) < 0.8 * height
    ids = [f["id"] for f in seen["figures"]]
    assert len(ids) == len(set(ids)), sorted(ids)  # each figure in one place only
    assert seen["methods"] > height  # no methods paragraph on the first screen
    first_screen = page.evaluate("document.body.innerText").split("Contents")[0]
    assert "Holm" not in first_screen and "replication probability" not in first_screen

    displayed = [f for f in seen["figures"] if f["displayed"]]
    assert displayed
    for figure in displayed:  # the smallest text at the width the page shows the figure
        assert figure["shown"] <= 1000, figure
        assert figure["minText"] * figure["shown"] / figure["natural"] >= 8, figure
    for figure in seen["figures"]:  # every figure, folded or not, links to its PNG at full size
        assert figure["href"] == f"figures/{figure['id'].removeprefix('fig-')}.png", figure
        target = fabricated_report / figure["href"]
        assert target.exists(), figure
        assert png_size(target) == (figure["natural"], figure["naturalHeight"]), figure
    assert not errors, errors
    page.close()


@contextmanager
def serve_dashboard(repo: Path, uri: str, log_name: str) -> Iterator[str]:
    """`study dashboard` (mlflow ui on loopback) run in ``repo`` against the store ``uri``; yields its URL once it
    answers, and always stops it. Its output goes to test-artifacts/``log_name``."""
    port = server.free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / log_name).open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "study", "dashboard", "--port", str(port)], cwd=repo,
        env={**os.environ, "MLFLOW_TRACKING_URI": uri}, stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            server.wait_healthy(url, proc, 240, ARTIFACTS / log_name)  # an import of the results may come first
        except (RuntimeError, TimeoutError) as err:
            raise AssertionError(f"the dashboard did not start; see {ARTIFACTS / log_name}") from err
        yield url
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


@pytest.fixture
def dashboard(smoke_pipeline):
    """The dashboard on the store the smoke pipeline's training wrote."""
    with serve_dashboard(smoke_pipeline.repo, smoke_pipeline.tracking_uri, "dashboard-server.log") as url:
        yield url


def test_the_dashboard_lists_the_child_runs_with_their_tags(smoke_pipeline, browser, dashboard):
    from urllib.parse import quote

    from mlflow import MlflowClient

    client = MlflowClient(smoke_pipeline.tracking_uri)
    experiment = client.get_experiment_by_name("loss-study")
    children = client.search_runs([experiment.experiment_id], "tags.condition = 'fashion_sgd' and tags.stage = 'train' "
                                  "and tags.lr_tuned = 'true'")
    assert children
    page = browser.new_page()
    # The runs table (MLflow 3 opens experiments on a GenAI overview), filtered to one condition's training runs.
    query = quote("tags.condition = 'fashion_sgd' and tags.stage = 'train'")
    page.goto(f"{dashboard}/#/experiments/{experiment.experiment_id}/runs?searchFilter={query}")
    page.get_by_text("fashion_sgd/train", exact=True).first.wait_for(timeout=90_000)
    # Child runs sit under their parent: open it with the expander in the run-name cell.
    page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
    for child in children:
        page.get_by_text(child.info.run_name, exact=True).first.wait_for(timeout=30_000)
    listed = page.evaluate("document.body.innerText")
    for loss in ("mse", "sigmoid_bce", "softmax_nll", "smoothed_ce"):
        assert f"{loss}-lr" in listed, loss
    page.screenshot(path=str(ARTIFACTS / "dashboard-runs.png"), full_page=True)

    child = next(run for run in children if run.data.tags["loss"] == "mse")
    page.goto(f"{dashboard}/#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}")
    page.get_by_text("lr_tuned", exact=True).first.wait_for(timeout=90_000)
    lines = [line.strip() for line in page.evaluate("document.body.innerText").splitlines()]
    tags = dict(zip(lines, lines[1:]))  # the run page shows each tag as "key" then ": value"
    assert tags.get("condition") == ": fashion_sgd"
    assert tags.get("loss") == ": mse"
    page.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=True)
    page.close()


def test_the_dashboard_rebuilds_a_fresh_store_from_results_and_lists_every_child_run(smoke_pipeline, browser,
                                                                                      tmp_path):
    """A fresh clone has results/ but no store: `study dashboard` imports the results, then serves every run."""
    from urllib.parse import quote

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    with serve_dashboard(smoke_pipeline.repo, uri, "dashboard-rebuilt-server.log") as url:
        smoke = yaml.safe_load(SMOKE.read_text())
        stages = len(smoke["conditions"]) + len(smoke["study"]["tune"])
        deadline = time.monotonic() + 120  # the server answers first; the import fills the store meanwhile
        while f"imported {stages} stages" not in (said := (ARTIFACTS / "dashboard-rebuilt-server.log").read_text()):
            assert time.monotonic() < deadline, said
            time.sleep(0.5)
        assert "study dashboard: the store lacks" in said, said
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("loss-study")
        runs = client.search_runs([experiment.experiment_id], "", max_results=1000)
        parents = {run.info.run_id: run for run in runs if "mlflow.parentRunId" not in run.data.tags}
        assert {run.info.run_name.split("/")[0] for run in parents.values()} == set(smoke["conditions"])
        for parent in parents.values():
            page = browser.new_page()
            condition, stage = parent.data.tags["condition"], parent.data.tags["stage"]
            query = quote(f"tags.condition = '{condition}' and tags.stage = '{stage}'")
            page.goto(f"{url}/#/experiments/{experiment.experiment_id}/runs?searchFilter={query}")
            page.get_by_text(parent.info.run_name, exact=True).first.wait_for(timeout=90_000)
            page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
            children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
            assert children
            for child in children:
                page.get_by_text(child.info.run_name, exact=True).first.wait_for(timeout=30_000)
            if parent.info.run_name == "fashion_sgd/train":
                page.screenshot(path=str(ARTIFACTS / "dashboard-rebuilt-runs.png"), full_page=True)
            page.close()


def test_the_runs_view_lists_every_parent_run_and_the_speed_chart_draws_one_line_per_run(smoke_pipeline, browser,
                                                                                       dashboard):
    """The URL `study dashboard` prints lists every condition's parent run; the chart view of one condition's child
    runs draws `speed/val_accuracy` (validation accuracy against 100 * log10(step + 1)), a line per run."""
    from urllib.parse import quote

    from mlflow import MlflowClient

    from study import tracking

    client = MlflowClient(smoke_pipeline.tracking_uri)
    experiment = client.get_experiment_by_name("loss-study")
    runs = client.search_runs([experiment.experiment_id], "", max_results=1000)
    parents = {run.info.run_name for run in runs if "mlflow.parentRunId" not in run.data.tags}
    smoke = yaml.safe_load(SMOKE.read_text())
    assert {name.split("/")[0] for name in parents} == set(smoke["conditions"])
    said = (ARTIFACTS / "dashboard-server.log").read_text()
    printed = said.split("MLflow dashboard: ")[1].split()[0]
    assert printed == f"{dashboard}/#/experiments/{experiment.experiment_id}/runs", said
    page = browser.new_page()
    page.set_viewport_size({"width": 1400, "height": 1400})
    page.goto(printed)
    for name in sorted(parents):
        page.get_by_text(name, exact=True).first.wait_for(timeout=90_000)
    page.screenshot(path=str(ARTIFACTS / "dashboard-parents.png"), full_page=True)

    children = [run for run in runs if run.data.tags.get("condition") == "fashion_sgd"
                and run.data.tags.get("stage") == "train" and "mlflow.parentRunId" in run.data.tags]
    assert children and all(tracking.SPEED_METRIC in run.data.metrics for run in children)
    query = quote("tags.condition = 'fashion_sgd' and tags.stage = 'train' and tags.lr_tuned = 'true'")
    page.set_viewport_size({"width": 1900, "height": 1200})
    page.goto(f"{printed}?searchFilter={query}&compareRunsMode=CHART")
    # The chart view lists the matching children under their parent; charts are drawn for the runs shown.
    page.get_by_text("fashion_sgd/train", exact=True).first.wait_for(timeout=90_000)
    page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()
    card = page.locator("[data-testid='experiment-view-compare-runs-card']").filter(has_text=tracking.SPEED_METRIC)
    card.first.wait_for(timeout=90_000)
    shown = min(len(children), 10)  # MLflow charts the first ten runs unless told otherwise
    deadline = time.monotonic() + 60
    while (traces := card.first.locator(".scatterlayer .trace").count()) < shown:
        assert time.monotonic() < deadline, f"{traces} lines drawn for {shown} runs"
        time.sleep(0.5)
    card.first.screenshot(path=str(ARTIFACTS / "dashboard-speed.png"))
    page.screenshot(path=str(ARTIFACTS / "dashboard-speed-page.png"))
    page.close()
