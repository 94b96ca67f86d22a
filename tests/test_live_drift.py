"""The listener's sliding-window drift check: a generated stream of in-distribution clips that
turns to noise raises one "model affected" alert through a real command sink (from the alert
file's ``[drift]`` table), after the turn and not before."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tympan.errors import DataError
from tympan.inference import Predictor
from tympan.live.alerts import load_alerts
from tympan.live.drift import DriftMonitor
from tympan.live.listener import Listener


def _stream(synthetic_dir: Path, sr: int) -> tuple[np.ndarray, float]:
    clips = sorted(synthetic_dir.rglob("*.wav"))[:80]
    clean = np.concatenate([sf.read(c, dtype="float32")[0] for c in clips])
    rng = np.random.default_rng(3)
    noise = (0.3 * rng.standard_normal(len(clean))).astype(np.float32)
    return np.concatenate([clean, noise]), len(clean) / sr


def test_a_stream_that_turns_to_noise_raises_model_affected_once(fitted_bundle: Path, synthetic_dir: Path,
                                                                 tmp_path: Path) -> None:
    predictor = Predictor(fitted_bundle)
    sr = int(predictor.config.sample_rate)
    x, turn_s = _stream(synthetic_dir, sr)
    got = tmp_path / "alerts.jsonl"
    cfg = tmp_path / "alerts.toml"
    argv = [sys.executable, "-c", f"import sys; open({str(got)!r}, 'a').write(sys.stdin.read().strip() + '\\n')"]
    cfg.write_text(f'[sinks.cmd]\ntype = "command"\nargv = {json.dumps(argv)}\n\n'
                   '[drift]\nwindow_s = 60\ncheck_every_s = 5\nmin_windows = 20\nsinks = ["cmd"]\n')
    alerts = load_alerts(cfg, predictor.classes)
    # hop = the clips' length: each window holds one clip (windows across two clips of different
    # classes are mixtures: out of distribution for this tiny model)
    lis = Listener(predictor, hop_s=2.0, alerts=alerts, drift=None, on_drift=None)
    statuses = []
    lis.drift = DriftMonitor(predictor.bundle, hop_s=2.0, clip_s=lis.n / sr, min_windows=20,
                             **{k: v for k, v in alerts.drift.items() if k != "min_windows"})
    lis.on_drift = statuses.append
    lis.begin()
    for i in range(0, len(x), sr // 2):
        lis.feed(i, x[i : i + sr // 2])
    lis.end()
    alerts.close()
    assert lis.drift.last is not None
    assert statuses and statuses[0].affected and statuses[0].end_s > turn_s  # nothing before the turn
    assert len([s for s in statuses if s.affected]) == 1  # one alert per episode
    sent = [json.loads(line) for line in got.read_text().splitlines()]
    assert len(sent) == 1 and sent[0]["kind"] == "model_affected" and sent[0]["event"] is None
    assert sent[0]["drift"]["affected"] and sent[0]["drift"]["reasons"]
    print(statuses[0].model_dump())


def test_monitor_needs_enough_windows_and_drift_table_keys_are_checked(fitted_bundle: Path, tmp_path: Path) -> None:
    predictor = Predictor(fitted_bundle)
    mon = DriftMonitor(predictor.bundle, window_s=60, check_every_s=1, min_windows=50, hop_s=1.0, clip_s=2.0)
    k = len(predictor.classes)
    for t in range(60):  # 30 non-overlapping windows (stride 2): never enough to conclude
        assert mon.add(float(t), np.full(k, 1 / k), True, True) is None
    assert mon.check() is None
    f = tmp_path / "a.toml"
    f.write_text("[drift]\nwindow = 5\n")
    with pytest.raises(DataError, match="unknown keys window"):
        load_alerts(f, predictor.classes)


@pytest.mark.skipif(__import__("shutil").which("ffmpeg") is None, reason="ffmpeg not installed")
def test_tympan_listen_runs_the_drift_check_from_the_alert_file(fitted_bundle: Path, synthetic_dir: Path,
                                                                tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tympan.cli import main

    sr = int(Predictor(fitted_bundle).config.sample_rate)
    x, _ = _stream(synthetic_dir, sr)
    wav = tmp_path / "turns.wav"
    sf.write(wav, x, sr, subtype="FLOAT")
    got = tmp_path / "alerts.jsonl"
    argv = [sys.executable, "-c", f"import sys; open({str(got)!r}, 'a').write(sys.stdin.read().strip() + '\\n')"]
    cfg = tmp_path / "alerts.toml"
    cfg.write_text(f'[sinks.cmd]\ntype = "command"\nargv = {json.dumps(argv)}\n\n'
                   '[drift]\nwindow_s = 60\ncheck_every_s = 5\nmin_windows = 20\n')
    assert main(["listen", str(wav), "--bundle", str(fitted_bundle), "--alerts", str(cfg), "--hop", "2"]) == 0
    assert "the model is affected" in capsys.readouterr().err
    sent = [json.loads(line) for line in got.read_text().splitlines()]
    assert [a["kind"] for a in sent] == ["model_affected"]
