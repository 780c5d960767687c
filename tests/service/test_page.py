"""The page at / in headless Chromium (Debian's chromium and chromium-driver): pick an image, see the boxes."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
FLAGS += ["--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1200,1000"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.fail("install Debian's chromium and chromium-driver: apt-get install chromium chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager fetch a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")  # not a profile left in /tmp
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for_status(driver, predicate, timeout: float = 60) -> str:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: predicate(d.find_element("id", "status").text))
    return driver.find_element("id", "status").text


@pytest.mark.slow
def test_pick_an_image_and_see_boxes(browser, server, image_paths):
    browser.get(server.url + "/")
    assert "shufflenet-detect" in browser.title
    wait_for_status(browser, lambda _: "GMACs" in browser.find_element("id", "model").text, timeout=30)
    threshold = browser.find_element("id", "threshold")
    threshold.clear()
    threshold.send_keys("0")  # the demo model, on a photo of no shapes: low scores
    browser.find_element("id", "file").send_keys(str(image_paths[0]))
    status = wait_for_status(browser, lambda text: "detection" in text or "failed" in text)
    assert "failed" not in status and " detections in " in status, status
    rows = browser.find_elements("css selector", "#table tbody tr")
    assert rows and rows[0].find_elements("tag name", "td")[0].text in {"circle", "square", "triangle", "star"}
    size = browser.execute_script("const c = document.getElementById('canvas'); return [c.width, c.height];")
    assert size == [640, 480]
    # Box outlines are drawn in the palette's colours: some canvas pixels must be exactly one of them.
    drawn = browser.execute_script(
        """
        const c = document.getElementById('canvas');
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const palette = new Set(COLORS.map((h) => [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)).join()));
        let n = 0;
        for (let i = 0; i < data.length; i += 4) if (palette.has(`${data[i]},${data[i + 1]},${data[i + 2]}`)) n++;
        return n;
        """
    )
    assert drawn > 500, drawn


@pytest.mark.slow
def test_the_sample_button(browser, server):
    browser.get(server.url + "/")
    threshold = browser.find_element("id", "threshold")
    threshold.clear()
    threshold.send_keys("0")
    browser.find_element("id", "sample").click()
    status = wait_for_status(browser, lambda text: "detection" in text or "failed" in text)
    assert " detections in " in status, status
    size = browser.execute_script("const c = document.getElementById('canvas'); return [c.width, c.height];")
    assert size == [640, 427]  # the sample is a COCO photo (service/static/SAMPLE_SOURCE.txt)


@pytest.mark.slow
def test_a_bad_file_shows_the_error(browser, server, tmp_path):
    browser.get(server.url + "/")
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    browser.find_element("id", "file").send_keys(str(bad))
    status = wait_for_status(browser, lambda text: "failed" in text or "detection" in text)
    assert status.startswith("failed: 400") and "not an image" in status, status


@pytest.mark.slow
def test_the_api_docs_render_offline_under_their_csp(browser, server):
    """Swagger UI from the service itself (no CDN), its inline start-up script allowed by the page's CSP."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/docs")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements("css selector", ".swagger-ui .opblock"))
    paths = {e.text for e in browser.find_elements("css selector", ".opblock-summary-path")}
    assert "/detect" in paths, paths
