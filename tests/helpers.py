"""Helpers several test modules share: free ports, a live uvicorn server, a tiny fitted bundle,
field folders of generated clips, and diagnose run in-process. Fixtures built on them are in
``conftest.py``."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import torch

from tympan.bundle import Bundle, HeldoutPredictions
from tympan.features import FrontendConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, *, timeout: float, interval: float = 0.05,
               died: Callable[[], str | None] | None = None) -> None:
    """Poll ``url + "/ready"`` until it answers 200; ``died()`` returns why the server is gone, if it is."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if died is not None and (why := died()) is not None:
            raise RuntimeError(why)
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(interval)
    raise RuntimeError(f"{url} did not become ready in {timeout:.0f} s")


class LiveServer:
    """uvicorn.Server in a thread, on a free port; ``url`` once /ready says so."""

    def __init__(self, app) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_ready(self.url, timeout=60)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(15)


def untrained_bundle(dest: Path) -> Path:
    """A width-8 CNN with random weights, 3 classes, 1-s windows, an energy threshold: for tests of the
    batch tables and CLIs, where the answer's value does not matter but its path does."""
    from tympan.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn", n_classes=3, width=8).eval()
    return Bundle(model=model, arch="cnn", arch_params={"width": 8}, classes=["a", "b", "c"],
                  frontend=FrontendConfig(clip_seconds=1.0),
                  ood={"score": "energy", "threshold": -0.5, "temperature": 1.0}).save(dest)


def train_tiny_bundle(data_dir: Path, dest: Path) -> Path:
    """A width-8 CNN trained for a few epochs on synthetic folds 1-4; fold 5's logits as held-out."""
    from tympan.cache import featurize
    from tympan.datasets import load_esc50
    from tympan.models import build_model

    torch.manual_seed(0)
    frontend = FrontendConfig(clip_seconds=2.0)
    ds = load_esc50(data_dir)
    fs = featurize(ds, frontend, dtype="float32", progress=False)
    x = torch.from_numpy(np.array(fs.features, np.float32))
    y = torch.from_numpy(fs.labels)
    train, held = fs.folds != 5, fs.folds == 5
    model = build_model("cnn", n_classes=len(fs.classes), width=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = x[train], y[train]
    g = torch.Generator().manual_seed(0)
    for _ in range(12):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 16):
            idx = perm[i : i + 16]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(x[held]).numpy()
    bundle = Bundle(model=model, arch="cnn", arch_params={"width": 8}, classes=list(fs.classes), frontend=frontend,
                    provenance={"train_folds": [1, 2, 3, 4], "heldout_fold": 5, "data": {"root": str(data_dir)}},
                    name="tiny-test")
    heldout = HeldoutPredictions(logits, fs.labels[held], [c for c, h in zip(fs.clip_ids, held) if h],
                                 list(fs.classes), weights_sha256=bundle.weights_fingerprint, meta={"fold": 5})
    bundle.save(dest, heldout=heldout)
    return dest


def field_folder(dest: Path, *, seed: int, shift: bool, n_per_class: int = 8) -> Path:
    """Fresh synthetic clips (same generator, another seed), optionally -20 dB and low-passed at 1.5 kHz."""
    from scipy import signal

    from tympan.datasets.synthetic import make_synthetic

    src = make_synthetic(dest.parent / f".src-{dest.name}", n_classes=5, clips_per_class=n_per_class,
                         n_folds=n_per_class, seed=seed)
    dest.mkdir(parents=True)
    sos = signal.butter(8, 1500, btype="low", fs=16000, output="sos")
    for i, p in enumerate(sorted((src / "audio").glob("*.wav"))):
        yv, sr = sf.read(p, dtype="float32")
        if shift:
            yv = signal.sosfiltfilt(sos, yv) * 10 ** (-20 / 20)
        sub = dest / ("a" if i % 2 else "b")  # nested folders: the scan is recursive
        sub.mkdir(exist_ok=True)
        sf.write(sub / p.name, np.asarray(yv, np.float32), sr, subtype="PCM_16")
    shutil.rmtree(src)
    return dest


def run_diagnose(*argv: str) -> int:
    from tympan.diagnostics.cli import diagnose_main

    return diagnose_main([*argv, "--quiet"])


CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               "--window-size=1400,1560", "--hide-scrollbars"]
#: a browser with no network beyond this machine: every other host name fails to resolve
OFFLINE_ARGS = ["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1, EXCLUDE localhost"]


def headless_chromium(*extra_args: str):
    """Headless Chromium through the system chromedriver (Selenium; nothing is downloaded)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (*CHROME_ARGS, *extra_args):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    return driver


@contextlib.contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """A child process with its output in ``log``; terminated (then killed) on the way out."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                cwd=cwd or Path(__file__).resolve().parents[1], env=env or dict(os.environ))
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
