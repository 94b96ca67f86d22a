"""A real out-of-distribution audio set built from Debian packages (nothing downloaded).

None of it belongs to ESC-50's 50 classes: synthesised speech (espeak-ng), music rendered
from generated MIDI with a General MIDI soundfont (fluidsynth), desktop notification sounds
(sound-theme-freedesktop, gnome-audio), and generated noise, tones, sweeps, DTMF and silence.
``scripts/build_ood_set.sh`` installs the packages and rebuilds it; every clip is 5 s of
16 kHz mono FLAC, listed with its source in ``manifest.csv``.
"""

from __future__ import annotations

import csv
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from tympan.audio import fit_length, load_audio
from tympan.errors import AudioError
from tympan.io import atomic_dir

SENTENCES = [
    "The quarterly report is due on Friday afternoon.",
    "Please remember to water the plants while I am away.",
    "Turn left at the second traffic light and continue for two miles.",
    "Our flight has been delayed by approximately forty minutes.",
    "The museum opens at nine and closes at half past five.",
    "Could you send me the slides from this morning's meeting?",
    "Numbers one two three four five six seven eight nine ten.",
    "Weather tomorrow: cloudy with a chance of light showers.",
    "She sells sea shells by the sea shore every summer.",
    "The committee will announce its decision next week.",
]
VOICES = ["en", "en-us", "en+f3", "en+m3", "de", "fr", "es", "it"]
SOUNDFONTS = ["/usr/share/sounds/sf2/TimGM6mb.sf2", "/usr/share/sounds/sf2/FluidR3_GM.sf2",
              "/usr/share/sounds/sf2/default-GM.sf2"]
SOUND_DIRS = ["/usr/share/sounds"]
# General MIDI programs: piano, organ, guitar, strings, trumpet, flute, synth lead, choir
PROGRAMS = [0, 19, 24, 48, 56, 73, 80, 52]


def _write_clip(path: Path, y: np.ndarray, sr: int, seconds: float) -> None:
    sf.write(path, fit_length(np.asarray(y, np.float32), int(seconds * sr)), sr, format="FLAC")


def _midi_file(path: Path, program: int, rng: np.random.Generator, seconds: float) -> None:
    """Write a one-track Standard MIDI File: a random diatonic melody with chords."""

    def vlq(n: int) -> bytes:
        out = [n & 0x7F]
        n >>= 7
        while n:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        return bytes(reversed(out))

    tpq, tempo = 480, 500_000  # 120 bpm
    events = bytearray(vlq(0) + bytes([0xC0, program]))
    scale = [0, 2, 4, 5, 7, 9, 11]
    root = int(rng.integers(48, 60))
    n_notes = int(seconds * 2) + 2
    for _ in range(n_notes):
        pitch = root + 12 * int(rng.integers(0, 2)) + scale[int(rng.integers(0, 7))]
        chord = [pitch, pitch + 4, pitch + 7] if rng.random() < 0.4 else [pitch]
        for i, p in enumerate(chord):
            events += vlq(0) + bytes([0x90, p, int(rng.integers(70, 110))])
        dur = tpq // 2 * int(rng.integers(1, 3))
        for i, p in enumerate(chord):
            events += vlq(dur if i == 0 else 0) + bytes([0x80, p, 0])
    events += vlq(0) + b"\xff\x2f\x00"
    tempo_ev = vlq(0) + b"\xff\x51\x03" + tempo.to_bytes(3, "big")
    track = tempo_ev + bytes(events)
    data = b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq) + b"MTrk" + struct.pack(">I", len(track)) + track
    path.write_bytes(data)


def _speech(dest: Path, sr: int, seconds: float, rng: np.random.Generator, n: int) -> list[dict]:
    exe = shutil.which("espeak-ng")
    if not exe:
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            voice, text = VOICES[i % len(VOICES)], SENTENCES[i % len(SENTENCES)]
            speed = int(rng.integers(130, 190))
            wav = Path(tmp) / "s.wav"
            subprocess.run([exe, "-v", voice, "-s", str(speed), "-w", str(wav), text], check=True,
                           capture_output=True, timeout=60)
            y = load_audio(wav, sr).waveform
            name = f"speech/speech-{i:03d}.flac"
            _write_clip(dest / name, y, sr, seconds)
            rows.append({"file": name, "kind": "speech", "source": f"espeak-ng -v {voice} -s {speed}: {text}"})
    return rows


def _music(dest: Path, sr: int, seconds: float, rng: np.random.Generator, n: int) -> list[dict]:
    exe = shutil.which("fluidsynth")
    fonts = [f for f in SOUNDFONTS if Path(f).is_file()]
    if not exe or not fonts:
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            program = PROGRAMS[i % len(PROGRAMS)]
            font = fonts[i % len(fonts)]
            mid, wav = Path(tmp) / "m.mid", Path(tmp) / "m.wav"
            _midi_file(mid, program, rng, seconds)
            subprocess.run([exe, "-ni", "-q", "-g", "0.8", "-r", str(sr), "-F", str(wav), font, str(mid)],
                           check=True, capture_output=True, timeout=120)
            y = load_audio(wav, sr).waveform
            name = f"music/music-{i:03d}.flac"
            _write_clip(dest / name, y, sr, seconds)
            rows.append({"file": name, "kind": "music", "source": f"fluidsynth {Path(font).name} GM program {program}"})
    return rows


def _ui_sounds(dest: Path, sr: int, seconds: float) -> list[dict]:
    rows = []
    seen = set()
    for base in SOUND_DIRS:
        for p in sorted(Path(base).rglob("*")):
            if p.suffix.lower() not in {".wav", ".oga", ".ogg"} or "sf2" in p.parts or p.name in seen:
                continue
            try:
                y = load_audio(p, sr).waveform
            except (AudioError, OSError):
                continue
            if np.abs(y).max() < 1e-3:
                continue
            seen.add(p.name)
            name = f"notification/{p.stem}.flac"
            _write_clip(dest / name, y, sr, seconds)
            rows.append({"file": name, "kind": "notification", "source": str(p)})
    return rows


def _generated(dest: Path, sr: int, seconds: float, rng: np.random.Generator) -> list[dict]:
    n = int(seconds * sr)
    t = np.arange(n) / sr
    clips: dict[str, np.ndarray] = {}
    for level in (0.01, 0.1, 0.5):
        clips[f"white-noise-{level}"] = rng.standard_normal(n) * level / 3
        white = np.fft.rfft(rng.standard_normal(n))
        pink = np.fft.irfft(white / np.sqrt(np.maximum(np.arange(len(white)), 1)), n)
        clips[f"pink-noise-{level}"] = pink / np.abs(pink).max() * level
    for f in (100, 440, 1000, 3000, 6000):
        clips[f"tone-{f}hz"] = 0.3 * np.sin(2 * np.pi * f * t)
    clips["sweep-up"] = 0.3 * np.sin(2 * np.pi * np.cumsum(np.linspace(50, 7000, n)) / sr)
    clips["sweep-down"] = clips["sweep-up"][::-1].copy()
    dtmf = np.zeros(n)
    for k, (lo, hi) in enumerate([(697, 1209), (770, 1336), (852, 1477), (941, 1209)] * 3):
        s = int(k * 0.4 * sr)
        seg = t[: int(0.25 * sr)]
        dtmf[s : s + len(seg)] = 0.2 * (np.sin(2 * np.pi * lo * seg) + np.sin(2 * np.pi * hi * seg))
    clips["dtmf"] = dtmf
    clips["silence"] = np.zeros(n)
    clips["near-silence"] = rng.standard_normal(n) * 1e-4
    clips["square-200hz"] = 0.2 * np.sign(np.sin(2 * np.pi * 200 * t))
    rows = []
    for key, y in clips.items():
        name = f"generated/{key}.flac"
        _write_clip(dest / name, y, sr, seconds)
        rows.append({"file": name, "kind": "generated", "source": key})
    return rows


def build_ood_set(
    dest: str | Path, *, sample_rate: int = 16_000, seconds: float = 5.0, n_speech: int = 40,
    n_music: int = 40, seed: int = 0,
) -> Path:
    """Write the OOD set to ``dest`` (atomically); categories whose tools are missing are skipped."""
    rng = np.random.default_rng(seed)
    with atomic_dir(dest) as tmp:
        for sub in ("speech", "music", "notification", "generated"):
            (tmp / sub).mkdir()
        rows = (_speech(tmp, sample_rate, seconds, rng, n_speech)
                + _music(tmp, sample_rate, seconds, rng, n_music)
                + _ui_sounds(tmp, sample_rate, seconds)
                + _generated(tmp, sample_rate, seconds, rng))
        with open(tmp / "manifest.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["file", "kind", "source"])
            w.writeheader()
            w.writerows(rows)
    return Path(dest)
