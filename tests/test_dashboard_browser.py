"""End to end in a real browser: API + ``streamlit run dashboard`` + headless Chromium.

Starts ``tympan serve`` on a tiny bundle and ``streamlit run dashboard/streamlit_app.py`` (both
subprocesses on free ports), opens the page in headless Chromium through Selenium and the
system chromedriver (nothing is downloaded), uploads a clip, waits for the predictions and saves
a screenshot. ``TYMPAN_SAVE_SCREENSHOT=1`` also copies it to ``docs/img/dashboard.png``.
Optional: ``TYMPAN_SCREENSHOT_BUNDLE`` (a trained bundle to serve instead of the tiny one) and
``TYMPAN_SCREENSHOT_CLIP`` (an audio file to upload instead of the generated one).

Needs ``apt-get install chromium chromium-driver`` and ``pip install selenium``; skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CHROMEDRIVER, CHROMIUM, free_port, headless_chromium, process  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium is absent (apt-get install chromium)"),
    pytest.mark.skipif(not CHROMEDRIVER.is_file(),
                       reason="/usr/bin/chromedriver is absent (apt-get install chromium-driver)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytest.importorskip("streamlit")
pytest.importorskip("tympan.serving.app", reason="tympan.serving is not available")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def tiny_bundle(dest: Path) -> Path:
    import torch

    from tympan.bundle import Bundle
    from tympan.datasets.synthetic import CLASSES
    from tympan.features import FrontendConfig
    from tympan.models import build_model

    torch.manual_seed(0)
    bundle = Bundle(model=build_model("cnn", n_classes=5, width=4).eval(), arch="cnn", arch_params={"width": 4},
                    classes=list(CLASSES[:5]), frontend=FrontendConfig(clip_seconds=2.0), name="tiny-test",
                    ood={"score": "energy", "temperature": 1.0, "threshold": 0.0})
    return bundle.save(dest)


def test_upload_in_a_real_browser_shows_predictions(tmp_path: Path, synthetic_dir: Path) -> None:
    bundle = Path(os.environ.get("TYMPAN_SCREENSHOT_BUNDLE") or tiny_bundle(tmp_path / "bundle"))
    clip = Path(os.environ.get("TYMPAN_SCREENSHOT_CLIP") or sorted((synthetic_dir / "audio").iterdir())[0])
    from tympan.bundle import read_metadata

    classes = read_metadata(bundle)["classes"]
    api_port, ui_port = free_port(), free_port()
    env = {**os.environ, "TYMPAN_API_URL": f"http://127.0.0.1:{api_port}", "TYMPAN_ESC50_DIR": str(synthetic_dir),
           "TYMPAN_TORCH_THREADS": "1"}
    api_cmd = [sys.executable, "-m", "tympan", "serve", "--bundle", str(bundle), "--port", str(api_port),
               "--torch-threads", "1", "--log-level", "warning"]
    ui_cmd = [sys.executable, "-m", "streamlit", "run", "dashboard", "--server.port", str(ui_port),
              "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
              "--server.fileWatcherType", "none", "--theme.base", "light", "--client.toolbarMode", "minimal"]
    with process(api_cmd, tmp_path / "api.log", env) as api, process(ui_cmd, tmp_path / "ui.log", env) as ui:
        wait_http(f"http://127.0.0.1:{api_port}/ready", api)
        wait_http(f"http://127.0.0.1:{ui_port}/_stcore/health", ui)
        driver = headless_chromium()
        try:
            driver.get(f"http://127.0.0.1:{ui_port}/?page=classify")
            wait = WebDriverWait(driver, 90, poll_frequency=0.25)
            upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "input[type='file']"))
            upload.send_keys(str(clip))

            def predicted(d):
                metrics = d.find_elements(By.CSS_SELECTOR, "[data-testid='stMetric']")
                text = " ".join(m.text for m in metrics)
                return text if "Prediction" in text and any(c in text for c in classes) else False

            metric_text = wait.until(predicted)
            # the top-k bar chart, waveform and log-mel are drawn by plotly in the browser
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg")) >= 3)
            time.sleep(1.5)  # let plotly finish its transitions before the picture
            errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")]
            assert not errors, errors
            shot = tmp_path / "dashboard.png"
            assert driver.save_screenshot(str(shot))
        finally:
            driver.quit()
    assert "Prediction" in metric_text
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
    if os.environ.get("TYMPAN_SAVE_SCREENSHOT") == "1":
        dest = REPO / "docs" / "img" / "dashboard.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, dest)
