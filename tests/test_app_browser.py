"""The adapter inspector in a real headless Chromium: upload a photo, ask a question, and check
the answers, gate and attention the page shows against the library's own calls."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from app_demo import QUESTION, expected, load_demo_model, make_demo_dir
from vlm_inputs import image

from hf_cagul.evaluation.report import format_value

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Flags that keep Chromium off the network: the machine's closed network refuses the rest.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
    reason=f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}): "
    "apt-get install -y chromium chromium-driver (.ci/run does)",
)


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed: pip install 'hf_cagul[dev]'"
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_page_shows_what_the_library_computes(tmp_path, browser) -> None:
    pytest.importorskip("gradio", reason="Gradio is not installed: pip install 'hf_cagul[app]'")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_app import free_port

    from hf_cagul.app import AppArguments, build_from_arguments, launch_app

    demo = make_demo_dir(tmp_path / "demo")
    model, processor = load_demo_model(demo)
    photo = image(1)
    truth = expected(model, processor, photo, forced=False)
    upload = tmp_path / "photo.png"
    photo.save(upload)

    page = build_from_arguments(AppArguments(demo_dir=str(demo.root)))
    port = free_port()
    launch_app(page, port=port, block=False)
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(browser, 30)

        def value(selector: str) -> str:
            return browser.find_element(By.CSS_SELECTOR, selector).get_attribute("value") or ""

        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#photo input[type=file]").send_keys(str(upload))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#photo img"))
        browser.find_element(By.CSS_SELECTOR, "#question textarea").send_keys(QUESTION)
        browser.find_element(By.CSS_SELECTOR, "#inspect").click()
        wait.until(lambda d: value("#attention textarea"))

        assert value("#base-answer textarea") == truth.base_answer
        assert value("#adapted-answer textarea") == truth.adapted_answer
        assert truth.base_answer != truth.adapted_answer
        gates = browser.find_element(By.CSS_SELECTOR, "#gates").text
        assert f"default {format_value(truth.probability)} {format_value(0.5)} yes" in gates
        first, _, *grid = value("#attention textarea").splitlines()
        assert first == "flagged; rewritten tokens: " + ", ".join(map(str, truth.selected))
        shown = [float(score) for row in grid for score in row.split()]
        assert shown == pytest.approx(truth.scores, rel=1e-5)
        heatmap = browser.find_element(By.CSS_SELECTOR, "#heatmap img")
        assert browser.execute_script("return arguments[0].naturalWidth", heatmap) > 0
        assert "forgets" in browser.find_element(By.TAG_NAME, "body").text  # robustness
    finally:
        page.close()
