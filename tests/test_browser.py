"""The search page in a real browser: Debian's ``chromium`` + ``chromium-driver`` driven by Selenium
against a real ``regatt serve`` on 127.0.0.1 (a store with local features, a dedup output).

Load the page, upload a photo and see the expected top hit (with its verified inliers), draw a
box and see the roi sent, open a hit, open the duplicates view, and the page at a phone's width.
Screenshots of each step go to ``benchmarks/results/ui/`` for a person to look at. Skipped, with
the reason, when ``chromium``/``chromedriver`` are not on PATH or ``selenium`` does not import
(``.ci/run`` installs chromium best-effort; ``selenium`` is in the ``dev`` extra).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="pip install 'regatt[serve]'")
pytest.importorskip("uvicorn", reason="pip install 'regatt[serve]'")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("chromium/chromedriver not on PATH (apt-get install chromium chromium-driver)", allow_module_level=True)
pytest.importorskip("selenium", reason="pip install selenium (the dev extra)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from httpserver import ROOT, Server  # noqa: E402
from regatt_sdk.encoder import Encoder  # noqa: E402
from regatt_sdk.pipeline import encode_to_store  # noqa: E402

SIDE = "128"
SHOTS = ROOT / "benchmarks" / "results" / "ui"


@pytest.fixture(scope="module")
def site(tiny_model: Path, photo_dir: Path, tmp_path_factory):
    from typer.testing import CliRunner

    from regatt_sdk.cli.app import build

    root = tmp_path_factory.mktemp("browser")
    coll = root / "photos"
    coll.mkdir()
    for p in sorted(photo_dir.glob("*.jpg")):
        shutil.copy(p, coll / p.name)
    shutil.copy(coll / "chelsea.jpg", coll / "chelsea-copy.jpg")
    store = root / "store"
    encode_to_store(
        Encoder(tiny_model, device="cpu", max_side=int(SIDE)), [str(coll)], store, progress=False, local=True
    )
    out = root / "dedup"
    r = CliRunner().invoke(build(), ["dedup", "--store", str(store), "-o", str(out), "--threshold", "0.99999"])
    assert r.exit_code == 0, r.output
    srv = Server(tiny_model, "--store", str(store), "--max-side", SIDE, "--dedup", str(out), log=root / "server.log")
    yield srv, coll
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1200",
    ):
        options.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except Exception as exc:  # noqa: BLE001 - a browser that cannot start here is a skip, not a failure
        pytest.skip(f"chromium did not start: {str(exc).splitlines()[0]}")
    driver.set_window_size(1280, 1200)
    yield driver
    driver.quit()


def shot(driver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def wait(driver, what, timeout: float = 60):
    return WebDriverWait(driver, timeout).until(lambda d: what(d))


def search(driver) -> list:
    driver.find_element(By.ID, "go").click()  # the page says "searching…" at once
    wait(
        driver,
        lambda d: d.find_element(By.ID, "status").text.endswith("results") and d.find_element(By.ID, "sent").text,
    )
    assert driver.find_element(By.ID, "status").get_attribute("class") != "error"
    return driver.find_elements(By.CSS_SELECTOR, "#results .card")


def test_search_page_in_a_browser(site, browser) -> None:
    srv, coll = site
    d = browser
    d.get(f"http://127.0.0.1:{srv.port}/")
    wait(d, lambda d: "photos" in d.find_element(By.ID, "info").text)
    assert d.find_element(By.ID, "rerank-label").is_displayed()  # the store has local features
    shot(d, "01-page")

    # upload a photo: the expected top hit, with its thumbnail, score and verified inliers
    d.find_element(By.ID, "file").send_keys(str(coll / "astronaut.jpg"))
    wait(d, lambda d: d.find_element(By.ID, "go").is_enabled())
    cards = search(d)
    assert cards, d.find_element(By.ID, "status").text
    assert cards[0].find_element(By.CSS_SELECTOR, ".name").text.endswith("astronaut.jpg")
    assert "inliers" in cards[0].text
    wait(d, lambda d: d.execute_script("return document.querySelector('#results img').naturalWidth") > 0)
    shot(d, "02-results")

    # draw a box on the photo: the roi sent is in the photo's own pixels
    img = d.find_element(By.ID, "preview")
    w, h = img.size["width"], img.size["height"]
    nat = d.execute_script("const i = document.getElementById('preview'); return [i.naturalWidth, i.naturalHeight];")
    ActionChains(d).move_to_element_with_offset(img, -w // 4, -h // 4).click_and_hold().move_by_offset(
        w // 2, h // 2
    ).release().perform()
    roi = [float(v) for v in d.find_element(By.ID, "roi").get_attribute("value").split(",")]
    assert len(roi) == 4
    for got, want in zip(roi, (nat[0] / 4, nat[1] / 4, 3 * nat[0] / 4, 3 * nat[1] / 4)):
        assert abs(got - want) <= 0.05 * max(nat), (roi, nat)
    assert d.find_element(By.ID, "box").is_displayed()
    cards = search(d)
    sent = d.find_element(By.ID, "sent").text
    assert f"roi={d.find_element(By.ID, 'roi').get_attribute('value')}" in sent, sent
    assert cards
    shot(d, "03-box")

    # open a hit: the query and the hit side by side, with score and inliers
    cards[0].send_keys(Keys.ENTER)  # keyboard: results are buttons
    wait(d, lambda d: d.find_element(By.ID, "detail").get_attribute("open") is not None)
    text = d.find_element(By.ID, "detail-text").text
    assert "score" in text and "verified matches" in text, text
    wait(d, lambda d: d.execute_script("return document.getElementById('detail-hit').naturalWidth") > 0)
    wait(d, lambda d: d.execute_script("return document.getElementById('detail-match').naturalWidth") > 0)
    assert d.find_element(By.ID, "detail-match").is_displayed()  # the verified matches picture
    shot(d, "04-hit")
    d.find_element(By.ID, "detail-close").send_keys(Keys.ENTER)  # keyboard: the dialog's button
    wait(d, lambda d: d.find_element(By.ID, "detail").get_attribute("open") is None)
    cards[1].send_keys(Keys.ENTER)
    wait(d, lambda d: d.find_element(By.ID, "detail").get_attribute("open") is not None)
    ActionChains(d).send_keys(Keys.ESCAPE).perform()  # Escape closes it too
    wait(d, lambda d: d.find_element(By.ID, "detail").get_attribute("open") is None)

    # the duplicates view: the copied photo and its original, one kept, one to remove
    d.find_element(By.ID, "show-dups").click()
    group = wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#groups .group"))[0]
    assert "chelsea" in group.text and "keep" in group.text and "remove" in group.text
    assert not d.find_element(By.ID, "search-view").is_displayed()
    wait(
        d,
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('#groups img')].every(i => i.naturalWidth > 0)"
        ),
    )
    shot(d, "05-duplicates")

    # a phone's width: nothing wider than the screen
    d.find_element(By.ID, "show-search").click()
    d.set_window_size(390, 844)
    wait(d, lambda d: d.execute_script("return window.innerWidth") <= 400)
    assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(d, "06-phone")
    d.set_window_size(1280, 1200)
