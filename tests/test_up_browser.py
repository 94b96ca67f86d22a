"""The newcomer's first screens: ``tympan up`` with ESC-50 beside the checkout, in headless Chromium.

Starts ``tympan up`` as a user does (both servers are its children) and visits every dashboard
page: each must show the ESC-50 data (not the generated set), no exception, and, where the OOD
score appears, the served score's name and threshold (the outlier probe's for the shipped
model). Screenshots are saved in the test's folder; ``TYMPAN_SAVE_SCREENSHOT=1`` also copies the
ones under 300 kB to ``docs/img/up-<page>.png``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CHROMEDRIVER, CHROMIUM, OFFLINE_ARGS, free_port, headless_chromium, process

from tympan.bundle import default_bundle_dir, read_metadata

pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="/usr/bin/chromium is absent (apt-get install chromium)"),
    pytest.mark.skipif(not CHROMEDRIVER.is_file(),
                       reason="/usr/bin/chromedriver is absent (apt-get install chromium-driver)"),
]
pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
pytest.importorskip("streamlit")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROBE_THR = f"{read_metadata(default_bundle_dir())['ood']['embedding']['threshold']:.3f}"  # -3.160


def _wait_line(proc: subprocess.Popen, log: Path, prefix: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log.read_text(errors="replace").splitlines()
        hit = next((line for line in lines if line.startswith(prefix)), None)
        if hit:
            return hit
        if proc.poll() is not None:
            raise AssertionError(f"tympan up exited with {proc.returncode}:\n" + "\n".join(lines[-20:]))
        time.sleep(0.5)
    raise AssertionError(f"no {prefix!r} line within {timeout:.0f} s")


def _page_text(driver) -> str:
    return driver.find_element(By.CSS_SELECTOR, "[data-testid='stMain']").text


def _no_exception(driver) -> None:
    errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")]
    assert not errors, errors


def test_dashboard_pages_under_tympan_up_show_esc50_and_the_served_score(esc50_dir: Path, tmp_path: Path) -> None:
    api, dash = free_port(), free_port()
    log = tmp_path / "up.log"
    env = {**os.environ, "TYMPAN_TORCH_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("TYMPAN_ESC50_DIR", None)  # the folder comes from --data-dir, handed over by `up`
    env.pop("TYMPAN_BUNDLE", None)
    cmd = [sys.executable, "-m", "tympan", "up", "--data-dir", str(esc50_dir), "--api-port", str(api),
           "--dashboard-port", str(dash)]
    shots: dict[str, Path] = {}
    with process(cmd, log, env) as proc:
        example = _wait_line(proc, log, "example ")
        assert example.startswith("example    5-"), example  # a held-out fold-5 ESC-50 clip
        driver = headless_chromium(*OFFLINE_ARGS)
        try:
            wait = WebDriverWait(driver, 120, poll_frequency=0.5)
            base = f"http://127.0.0.1:{dash}/?page="

            # Classify: the examples are ESC-50's, the first pick is an ESC-50 clip, classified
            driver.get(base + "classify")
            wait.until(lambda d: d.find_elements(By.XPATH, "//label[.//p[text()='Example clip']]"))
            driver.find_element(By.XPATH, "//label[.//p[text()='Example clip']]").click()
            wait.until(lambda d: "Prediction" in " ".join(
                m.text for m in d.find_elements(By.CSS_SELECTOR, "[data-testid='stMetric']")))
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg")) >= 2)
            time.sleep(1.5)
            text = _page_text(driver)
            assert f"Examples from ESC-50 folder {esc50_dir.resolve()}" in text and "generated set" not in text, text[:600]
            assert "airplane" in text  # the first class of ESC-50, not a synthetic chirp
            (tmp_path / "classify.txt").write_text(text)
            assert "OOD score (probe)" in text and f"threshold {PROBE_THR}" in text, tmp_path / "classify.txt"
            _no_exception(driver)
            shots["classify"] = tmp_path / "up-classify.png"
            driver.save_screenshot(str(shots["classify"]))

            # Model diagnostics: the served score's name, threshold and figures
            driver.get(base + "diagnostics")
            wait.until(lambda d: "OOD threshold" in _page_text(d))
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".js-plotly-plot .main-svg")) >= 3)
            time.sleep(1.5)
            text = _page_text(driver)
            assert "OOD threshold (outlier probe score)" in text and PROBE_THR in text, text[:1500]
            assert "flags 100.0% of 123 windows" in text
            _no_exception(driver)
            shots["diagnostics"] = tmp_path / "up-diagnostics.png"
            driver.save_screenshot(str(shots["diagnostics"]))

            # Acoustic features: over the ESC-50 folder's 2000 clips
            driver.get(base + "acoustic")
            wait.until(lambda d: "2000" in _page_text(d))
            time.sleep(1.0)
            assert "generated set" not in _page_text(driver)
            _no_exception(driver)
            shots["acoustic"] = tmp_path / "up-acoustic.png"
            driver.save_screenshot(str(shots["acoustic"]))

            # Field drift: "Run diagnose on a folder" starts with the served bundle
            driver.get(base + "drift")
            wait.until(lambda d: d.find_elements(By.XPATH, "//label[.//p[text()='Run diagnose on a folder']]"))
            driver.find_element(By.XPATH, "//label[.//p[text()='Run diagnose on a folder']]").click()
            field = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[aria-label='Model bundle folder']"))
            assert field[0].get_attribute("value") == str(default_bundle_dir().resolve())
            _no_exception(driver)
            shots["drift"] = tmp_path / "up-drift.png"
            driver.save_screenshot(str(shots["drift"]))
        finally:
            driver.quit()
    assert all(p.stat().st_size > 20_000 for p in shots.values())
    print("screenshots: " + ", ".join(map(str, shots.values())))
    if os.environ.get("TYMPAN_SAVE_SCREENSHOT") == "1":
        for name, shot in shots.items():
            if shot.stat().st_size < 300_000:
                shutil.copyfile(shot, REPO / "docs" / "img" / f"up-{name}.png")
