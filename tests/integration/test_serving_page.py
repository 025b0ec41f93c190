"""The upload page at / in a real headless Chromium (Debian's chromium + chromedriver, driven by
Selenium): a person picks an image and sees its score and tags."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageFilter
from skimage import data

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        if os.environ.get("CI") == "true":
            pytest.fail("CI installs chromium and chromium-driver (.ci/run); they are missing")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # The flags this closed network needs: no background fetches, no sandbox as root.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _save(img: Image.Image, path: Path) -> Path:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue())
    return path


def _upload(browser, base: str, path: Path) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(base)
    browser.find_element(By.ID, "pick").send_keys(str(path))
    WebDriverWait(browser, 60).until(lambda d: "scoring" not in d.find_element(By.ID, "out").text)
    return browser.find_element(By.ID, "out").text


def test_a_person_drops_an_image_and_sees_score_and_tags(browser, server: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    photo = _save(Image.fromarray(data.chelsea()), tmp_path / "cat.jpg")
    text = _upload(browser, f"http://{server}/", photo)
    assert "score 0." in text or "score 1." in text
    # The model's range, from the answer's model.score_range, and which version answered.
    assert "score runs from 0 (worst) to 1 (best)" in text
    assert "model lightbox version 3" in text
    # The image preview is shown beside the answer.
    assert browser.find_element(By.CSS_SELECTOR, "#out img").get_attribute("src").startswith("blob:")
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 0


def test_a_bad_file_shows_the_error_and_the_page_keeps_working(browser, server: str, tmp_path: Path) -> None:
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"this is text, not a JPEG")
    assert "400" in _upload(browser, f"http://{server}/", bad)
    good = _save(Image.fromarray(data.astronaut()).filter(ImageFilter.GaussianBlur(2)), tmp_path / "a.jpg")
    assert "score " in _upload(browser, f"http://{server}/", good)


def test_the_gate_report_opens_in_a_browser_with_its_plots(browser, tmp_path: Path) -> None:
    """The HTML gate report a version carries: a person opens it and sees the plots, not markdown."""
    import numpy as np
    import pandas as pd
    from selenium.webdriver.common.by import By

    from pipelines.gates import GateCheck, GateVerdict, ModelLabels
    from pipelines.report import render_html
    from pipelines.validate_model import GateReport

    rows = [
        {"group": g, "kind": k, "level": lvl, "score_unit": 0.9 - 0.2 * lvl, "true_unit": 1 - 0.25 * lvl}
        for g in ("a", "b")
        for k, lvl in (("none", 0), ("blur", 1), ("blur", 2), ("blur", 3))
    ]
    preds = pd.DataFrame(rows).assign(tags=["dog", ""] * 4, **{"p:dog": np.linspace(0.1, 0.9, 8)})
    report = GateReport(
        "lightbox", "7", GateVerdict([GateCheck("golden.score_srocc", 0.8, 0.5, ">=")], ["first model"]),
        {"golden.srocc.blur": 0.8}, {}, "md5", None, "2026-12-01",
        labels=ModelLabels(("dog",), (1.0, 10.0), "rating"), preds=preds,
    )  # fmt: skip
    page = tmp_path / "report.html"
    page.write_text(render_html(report))
    browser.get(page.as_uri())
    assert "Gates for lightbox v7: PASSED" in browser.find_element(By.TAG_NAME, "h1").text
    images = browser.find_elements(By.TAG_NAME, "img")
    assert images and all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
    assert not browser.find_elements(By.TAG_NAME, "pre")
