"""The web console in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): create a job through the form on a tiny model, watch the loss chart receive points
and the job reach Completed, open the custom model, send a prompt to two models in the
playground, see a bad dataset's line-level errors. A screenshot of each page goes to
test-artifacts/console/ (the test run's artifacts)."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from test_service import Server

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "console"


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser():
    found = _chromium()
    if found is None:
        pytest.skip("Chromium is not installed and could not be (scripts/setup.sh installs "
                    "Debian's chromium and chromium-driver with apt-get when it runs as root)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e .[dev])")
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,900"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(found[1]), options=opts)
    drv.set_page_load_timeout(60)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield drv
    drv.quit()


def _wait(fn, timeout=120, every=0.3, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - element not there yet
            last = e
        time.sleep(every)
    raise TimeoutError(f"timed out waiting for {what}" + (f" (last error: {last})" if last
                                                         else ""))


def _shot(drv, name: str) -> None:
    drv.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _no_error(drv):
    from selenium.webdriver.common.by import By
    e = drv.find_element(By.ID, "error")
    assert not e.is_displayed(), e.text


def test_console_end_to_end(browser, tmp_path, tiny_model_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from conftest import mapping_rows, write_jsonl

    drv = browser
    srv = Server(tmp_path / "srv", tiny_model_dir).start()
    try:
        url = srv.url
        # -- a bad dataset shows its line-level errors
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"prompt": "a", "completion": "b"}\nnot json\n{"prompt": ""}\n')
        drv.get(f"{url}/console/data")
        drv.find_element(By.NAME, "file").send_keys(str(bad))
        drv.find_element(By.CSS_SELECTOR, "#check-form button").click()
        rows = _wait(lambda: [r.text for r in drv.find_elements(By.CSS_SELECTOR,
                                                                "#errors tbody tr")
                              if r.text and "No errors" not in r.text], what="error rows")
        assert any(r.startswith("2 ") and "malformed JSON" in r for r in rows), rows
        assert any(r.startswith("3 prompt") for r in rows), rows
        assert "fix the errors" in drv.find_element(By.ID, "summary").text
        _shot(drv, "data-check")
        # ... or picked in storage
        (srv.bucket).mkdir(parents=True, exist_ok=True)
        shutil.copy(bad, srv.bucket / "bad.jsonl")
        drv.get(f"{url}/console/data")
        drv.find_element(By.NAME, "s3Uri").send_keys("s3://mi-bucket/bad.jsonl")
        drv.find_element(By.CSS_SELECTOR, "#check-form button").click()
        rows = _wait(lambda: [r.text for r in drv.find_elements(By.CSS_SELECTOR,
                                                                "#errors tbody tr")
                              if r.text and "No errors" not in r.text], what="error rows")
        assert any(r.startswith("2 ") and "malformed JSON" in r for r in rows), rows

        # -- create a job through the form (file uploaded from this machine)
        train = write_jsonl(tmp_path / "train.jsonl", mapping_rows(64))
        drv.get(f"{url}/console/jobs/new")
        _wait(lambda: len(Select(drv.find_element(By.ID, "base-models")).options) > 1,
              what="base models")
        drv.find_element(By.NAME, "jobName").send_keys("ui-job")
        drv.find_element(By.NAME, "customModelName").send_keys("ui-model")
        # foundation models are listed by their Bedrock id (models/ids.py): alias tiny ->
        # afinar.tiny
        Select(drv.find_element(By.ID, "base-models")).select_by_visible_text("afinar.tiny")
        drv.find_element(By.NAME, "trainingFile").send_keys(str(train))
        # batch 2: 128 steps, so the job outlasts several of the page's 1.5 s polls even on a
        # fast machine (the chart must grow while it runs)
        for name, value in (("epochCount", "4"), ("learningRate", "0.01"),
                            ("batchSize", "2")):
            el = drv.find_element(By.NAME, name)
            el.clear()
            el.send_keys(value)
        assert "1-10" in drv.find_element(By.XPATH, "//input[@name='epochCount']/..").text
        _shot(drv, "job-new")
        drv.find_element(By.CSS_SELECTOR, "#job-form button[type=submit]").click()
        _wait(lambda: drv.current_url.endswith("/console/jobs/ui-job"), what="the job page")

        # -- the chart receives points while it runs, then the job completes
        def points():
            t = drv.find_element(By.ID, "points").text
            return int(t.split()[0]) if t else 0
        seen = []
        def done():
            seen.append(points())
            return drv.find_element(By.ID, "job-info").get_attribute(
                "data-status") in ("Completed", "Failed")
        _wait(done, timeout=300, every=0.5, what="the job to finish")
        assert drv.find_element(By.ID, "job-info").get_attribute("data-status") == "Completed", \
            drv.find_element(By.ID, "failure").text
        _wait(lambda: points() >= 30, what="all chart points")
        assert len(set(seen)) > 2, seen  # the chart grew while the job ran, not only at the end
        n_chart = drv.execute_script(
            "return Chart.getChart(document.getElementById('loss-chart'))"
            ".data.datasets[0].data.length")
        assert n_chart == points()
        assert "Training: Completed" in drv.find_element(By.ID, "phases").text
        assert drv.find_elements(By.CSS_SELECTOR, "#events li")
        _shot(drv, "job")

        # -- the jobs list and the custom model
        drv.get(f"{url}/console/jobs")
        _wait(lambda: "ui-job" in drv.find_element(By.ID, "jobs").text, what="jobs list")
        _shot(drv, "jobs")
        drv.get(f"{url}/console/models")
        _wait(lambda: "ui-model" in drv.find_element(By.ID, "custom-models").text,
              what="models list")
        _shot(drv, "models")
        drv.find_element(By.LINK_TEXT, "ui-model").click()
        _wait(lambda: "ui-model" in drv.find_element(By.ID, "model-info").text,
              what="model page")
        assert "→ ui-model" in drv.find_element(By.ID, "lineage").text
        assert "epochCount" in drv.find_element(By.ID, "model-hp").text
        _no_error(drv)
        _shot(drv, "model")

        # -- an evaluation of the custom model against its base, its report rendered
        drv.get(f"{url}/console/jobs/ui-job")
        train_uri = _wait(lambda: next(
            (d.text for d in drv.find_elements(By.CSS_SELECTOR, "#job-info dd")
             if d.text.startswith("s3://")), None), what="the training data URI")
        drv.get(f"{url}/console/evaluations")
        _wait(lambda: len(Select(drv.find_element(By.NAME, "model")).options) > 1,
              what="models")
        Select(drv.find_element(By.NAME, "model")).select_by_visible_text("ui-model")
        drv.find_element(By.NAME, "data").send_keys(train_uri)
        mx = drv.find_element(By.NAME, "maxExamples")
        mx.clear()
        mx.send_keys("4")
        drv.find_element(By.CSS_SELECTOR, "#eval-form button").click()
        link = _wait(lambda: drv.find_element(By.LINK_TEXT, "open report"), timeout=240,
                     what="the evaluation to complete")
        link.click()
        frame = _wait(lambda: drv.find_element(By.ID, "report-frame"), what="report frame")
        drv.switch_to.frame(frame)
        _wait(lambda: "ui-model" in drv.find_element(By.TAG_NAME, "body").text,
              what="the report")
        assert drv.find_elements(By.TAG_NAME, "img")  # its charts
        drv.switch_to.default_content()
        _no_error(drv)
        _shot(drv, "evaluation")

        # -- the playground: one prompt, two models, both stream an answer
        drv.get(f"{url}/console/playground?a=tiny&b=ui-model")
        _wait(lambda: len(Select(drv.find_element(By.NAME, "b")).options) > 1, what="models")
        assert Select(drv.find_element(By.NAME, "b")).first_selected_option.text == "ui-model"
        drv.find_element(By.NAME, "prompt").send_keys("Colour of sky?")
        mt = drv.find_element(By.NAME, "max_tokens")
        mt.clear()
        mt.send_keys("6")
        drv.find_element(By.CSS_SELECTOR, "#play-form button").click()
        _wait(lambda: all(drv.find_element(By.ID, f"{k}-out").get_attribute("data-done")
                          for k in "ab"), what="both answers")
        for k in "ab":  # the tiny models may stream whitespace: count what arrived
            out = drv.find_element(By.ID, f"{k}-out")
            assert int(out.get_attribute("data-pieces")) == 6
            assert len(out.get_attribute("textContent")) >= 1
        _no_error(drv)
        _shot(drv, "playground")

        # -- a knowledge base: create, add the bucket's documents, sync, ask
        from afinar.models.registry import BUILTIN_MODELS
        if BUILTIN_MODELS["all-minilm-l6-v2"].dir_path() is not None:
            from test_rag import write_corpus
            write_corpus(srv.home / "s3" / "kb-bucket" / "manuals")
            drv.get(f"{url}/console/kb")
            drv.find_element(By.CSS_SELECTOR, "#kb-form input[name=name]").send_keys("ui-kb")
            drv.find_element(By.CSS_SELECTOR, "#kb-form button").click()
            _wait(lambda: drv.find_element(By.ID, "kb-detail").is_displayed(), what="kb")
            drv.find_element(By.CSS_SELECTOR, "#ds-form input[name=bucket]").send_keys(
                "kb-bucket")
            drv.find_element(By.CSS_SELECTOR, "#ds-form input[name=prefix]").send_keys(
                "manuals/")
            drv.find_element(By.CSS_SELECTOR, "#ds-form button").click()
            _wait(lambda: "kb-bucket" in drv.find_element(By.ID, "sources").text,
                  what="data source")
            drv.find_element(By.ID, "sync").click()
            _wait(lambda: "COMPLETE" in drv.find_element(By.ID, "sync-status").text,
                  timeout=180, what="the sync")
            counters = drv.find_element(By.ID, "counters").text
            assert "numberOfNewDocumentsIndexed\n6" in counters, counters
            assert "broken.pdf" in drv.find_element(By.ID, "sync-status").text
            drv.find_element(By.CSS_SELECTOR, "#ask-form input[name=q]").send_keys(
                "How long is the warranty?")
            Select(drv.find_element(By.CSS_SELECTOR, "#ask-form select")
                   ).select_by_visible_text("tiny")
            drv.find_element(By.CSS_SELECTOR, "#ask-form button").click()
            _wait(lambda: drv.find_element(By.ID, "answer").get_attribute("data-done")
                  or drv.find_element(By.ID, "error").is_displayed(), what="the answer")
            assert drv.find_element(By.ID, "answer").text
            _no_error(drv)
            _shot(drv, "kb")

        # -- the other pages render without errors
        for page, ready in (("advisor", "advise-form"), ("catalog", "recipes")):
            drv.get(f"{url}/console/{page}")
            _wait(lambda ready=ready: drv.find_element(By.ID, ready), what=page)
            if page == "catalog":
                _wait(lambda: "faq-assistant" in drv.find_element(By.ID, "recipes").text,
                      what="recipes")
            if page == "advisor":
                Select(drv.find_element(By.NAME, "specialization")).select_by_visible_text(
                    "task")
                Select(drv.find_element(By.NAME, "labelled")).select_by_visible_text(
                    "thousands")
                drv.find_element(By.CSS_SELECTOR, "#advise-form button").click()
                _wait(lambda: "Recommendation" in drv.find_element(By.ID, "advice").text,
                      what="advice")
            time.sleep(0.5)
            _no_error(drv)
            _shot(drv, page)
        # keyboard: the nav links are reachable with Tab
        from selenium.webdriver.common.keys import Keys
        body = drv.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.TAB)
        assert drv.switch_to.active_element.tag_name == "a"
    finally:
        srv.kill(signal.SIGTERM)
    (ARTIFACTS / "index.json").write_text(json.dumps(sorted(p.name for p in
                                                            ARTIFACTS.glob("*.png"))))
