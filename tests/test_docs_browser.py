"""``/docs`` and ``/redoc`` render in a browser that cannot reach the internet.

FastAPI's default pages load Swagger UI from a CDN, so offline they were blank. Here a real
uvicorn server runs the app and headless Chromium resolves no host but 127.0.0.1: the pages must
draw the API's operations from the assets the server itself serves.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CHROMEDRIVER, CHROMIUM, OFFLINE_ARGS, LiveServer, headless_chromium

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium is absent (apt-get install chromium)"),
    pytest.mark.skipif(not CHROMEDRIVER.is_file(),
                       reason="/usr/bin/chromedriver is absent (apt-get install chromium-driver)"),
]
pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
serving_app = pytest.importorskip("tympan.serving.app", reason="tympan.serving is not available")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def test_docs_render_their_operations_offline(fitted_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TYMPAN_API_KEY", "secret")  # the docs and their assets stay open behind the key
    app = serving_app.create_app(fitted_bundle)
    with LiveServer(app) as server:
        driver = headless_chromium(*OFFLINE_ARGS)
        try:
            wait = WebDriverWait(driver, 60, poll_frequency=0.25)
            driver.get(f"{server.url}/docs")
            paths = wait.until(lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")]
                               or False)
            resources = driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)")
            driver.get(f"{server.url}/redoc")
            redoc = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation']") or False)
        finally:
            driver.quit()
    assert {"/predict", "/predict/file", "/health", "/ready"} <= {p.replace("\u200b", "") for p in paths}, paths
    assert resources and all(r.startswith(server.url) for r in resources), resources
    assert len(redoc) >= 4


def test_docs_pages_name_local_assets(fitted_bundle: Path) -> None:
    import httpx

    with LiveServer(serving_app.create_app(fitted_bundle)) as server:
        html = httpx.get(f"{server.url}/docs").text
        js = httpx.get(f"{server.url}/docs/assets/swagger-ui-bundle.js")
    assert "cdn.jsdelivr.net" not in html and "/docs/assets/swagger-ui-bundle.js" in html
    assert js.status_code == 200 and "SwaggerUIBundle" in js.text
