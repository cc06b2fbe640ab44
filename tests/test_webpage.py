"""The prediction page in a real headless Chromium: upload or draw, every model predicts."""

from __future__ import annotations

import base64
import io
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kerassl.serving.server import make_server, serve_in_thread
from kerassl.testing.fake_run import make_export_dir

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(
    not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
    reason="needs Debian's chromium and chromium-driver packages (.ci/run installs them)",
)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    export_dir = make_export_dir(tmp_path_factory.getbasetemp() / "serving-export")
    server = make_server(export_dir, port=0)
    serve_in_thread(server)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def rest_top5(server, name: str, png: bytes) -> list[str]:
    body = json.dumps({"instances": [{"b64": base64.b64encode(png).decode()}]}).encode()
    request = urllib.request.Request(f"{server.url}v1/models/{name}:predict", data=body)
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())["predictions"][0]["class_names"]


def card_labels(browser, name: str) -> list[str]:
    card = browser.find_element(By.CSS_SELECTOR, f'article[data-model="{name}"]')
    return [row.text for row in card.find_elements(By.CSS_SELECTOR, ".prediction .label")]


def wait_for_predictions(browser, count: int) -> None:
    WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-predicted") == str(count)
    )


def test_upload_shows_top5_of_each_model_side_by_side(server, browser, tmp_path):
    browser.get(server.url)
    WebDriverWait(browser, 30).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.model")) == 2
    )
    cards = browser.find_elements(By.CSS_SELECTOR, "article.model")
    assert sorted(card.get_attribute("data-model") for card in cards) == ["baseline", "ssl"]

    # A 40x40 RGB image: the page sends it as is; the SavedModel converts and resizes.
    rng = np.random.default_rng(4)
    image = np.kron(rng.integers(0, 256, (5, 5, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    path = tmp_path / "upload.png"
    Image.fromarray(image).save(path)
    browser.find_element(By.ID, "file-input").send_keys(str(path))
    wait_for_predictions(browser, 1)

    for name in ("ssl", "baseline"):
        labels = card_labels(browser, name)
        assert len(labels) == 5
        assert labels == rest_top5(server, name, path.read_bytes())
        card = browser.find_element(By.CSS_SELECTOR, f'article[data-model="{name}"]')
        percents = [
            float(p.text.rstrip("%")) for p in card.find_elements(By.CSS_SELECTOR, ".probability")
        ]
        assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.5
    boxes = [card.rect for card in cards]
    assert boxes[0]["y"] == boxes[1]["y"] and boxes[0]["x"] != boxes[1]["x"]  # side by side
    browser.save_screenshot(str(tmp_path / "upload.png.screenshot.png"))


def test_drawing_predicts_with_every_model(server, browser, tmp_path):
    browser.get(server.url)
    canvas = WebDriverWait(browser, 30).until(
        lambda d: (
            d.find_element(By.ID, "canvas")
            if d.find_element(By.ID, "canvas").is_displayed()
            else None
        )
    )
    ActionChains(browser).move_to_element_with_offset(
        canvas, -40, -60
    ).click_and_hold().move_by_offset(20, 60).move_by_offset(20, 60).release().perform()
    wait_for_predictions(browser, 1)
    drawing = browser.execute_script(
        "return document.getElementById('canvas').toDataURL('image/png').split(',')[1]"
    )
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(drawing))).convert("L"))
    assert pixels.max() == 255 and pixels.min() == 0  # a white stroke on black
    for name in ("ssl", "baseline"):
        assert card_labels(browser, name) == rest_top5(server, name, base64.b64decode(drawing))
    browser.save_screenshot(str(tmp_path / "drawing.screenshot.png"))
