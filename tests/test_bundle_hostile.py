"""Malicious bundles (issue #24, item 9): a clear refusal in bounded memory and time, never a traceback,
never a silently wrong answer, never code execution."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from tympan.cli import main

SR = 16_000


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from helpers import untrained_bundle

    return untrained_bundle(tmp_path_factory.mktemp("b") / "bundle")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("clip") / "c.wav"
    t = np.arange(SR) / SR
    sf.write(p, (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), SR)
    return p


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch /tmp/tympan-pickle-ran",))


def _meta(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(b: Path) -> None:
        m = json.loads((b / "bundle.json").read_text())
        edit(m)
        (b / "bundle.json").write_text(json.dumps(m))
    return apply


def _raw_meta(old: str, new: str) -> Callable[[Path], None]:
    def apply(b: Path) -> None:
        text = (b / "bundle.json").read_text()
        assert old in text
        (b / "bundle.json").write_text(text.replace(old, new, 1))
    return apply


def _tensors(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(b: Path) -> None:
        state = load_file(str(b / "model.safetensors"))
        edit(state)
        save_file(state, str(b / "model.safetensors"))
    return apply


def _first(state: dict) -> str:
    return next(k for k, v in state.items() if v.is_floating_point() and v.ndim > 1)


def _huge_json(b: Path) -> None:
    with open(b / "bundle.json", "r+b") as f:  # 1 GB (sparse): refused before it is read
        f.truncate(1 << 30)


def _pickle_weights(b: Path) -> None:
    (b / "model.safetensors").write_bytes(pickle.dumps(_Boom()))


def _link_out(b: Path) -> None:
    outside = b.parent / "elsewhere.safetensors"
    shutil.move(b / "model.safetensors", outside)
    (b / "model.safetensors").symlink_to(os.path.relpath(outside, b))


CASES: dict[str, Callable[[Path], None]] = {
    "temperature -1": _meta(lambda m: m.update(temperature=-1)),
    "temperature NaN": _raw_meta('"temperature": 1.0', '"temperature": NaN'),
    "temperature 1e999": _raw_meta('"temperature": 1.0', '"temperature": 1e999'),
    "ood temperature 0": _meta(lambda m: m["ood"].update(temperature=0)),
    "threshold Infinity": _raw_meta('"threshold": -0.5', '"threshold": Infinity'),
    "hop_length 1": _meta(lambda m: m["frontend"].update(hop_length=1)),
    "n_fft 1e9": _meta(lambda m: m["frontend"].update(n_fft=10**9, win_length=10**9)),
    "sample_rate 1e12": _meta(lambda m: m["frontend"].update(sample_rate=10**12)),
    "sample_rate string": _meta(lambda m: m["frontend"].update(sample_rate="16000; rm -rf /")),
    "width 1e9": _meta(lambda m: m["architecture"]["params"].update(width=10**9)),
    "width -5": _meta(lambda m: m["architecture"]["params"].update(width=-5)),
    "huge integer": _raw_meta('"temperature": 1.0', '"temperature": 1' + "0" * 5000),
    "duplicate classes": _meta(lambda m: m.update(classes=["a", "a", "b"])),
    "no classes": _meta(lambda m: m.update(classes=[])),
    "classes not strings": _meta(lambda m: m.update(classes=[1, 2, 3])),
    "json list": lambda b: (b / "bundle.json").write_text("[1, 2]"),
    "deep nesting": lambda b: (b / "bundle.json").write_text("[" * 100_000 + "]" * 100_000),
    "1 GB bundle.json": _huge_json,
    "wrong shape": _tensors(lambda s: s.update({_first(s): torch.zeros(3, 3)})),
    "int weights": _tensors(lambda s: s.update({_first(s): s[_first(s)].to(torch.int32)})),
    "NaN weights": _tensors(lambda s: s[_first(s)].view(-1).__setitem__(0, float("nan"))),
    "missing tensor": _tensors(lambda s: s.pop(_first(s))),
    "pickle as weights": _pickle_weights,
    "weights link outside": _link_out,
}


@pytest.mark.parametrize("case", list(CASES))
def test_malicious_bundle_is_refused_with_one_line(case: str, good: Path, clip: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bundle"
    shutil.copytree(good, bad)
    CASES[case](bad)
    Path("/tmp/tympan-pickle-ran").unlink(missing_ok=True)
    capsys.readouterr()
    tracemalloc.start()
    t0 = time.perf_counter()
    code = main(["predict", str(clip), "--bundle", str(bad)])
    wall = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out, err = capsys.readouterr()
    assert code == 2, (case, out, err)
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("tympan: error:"), err
    assert "Traceback" not in err
    assert wall < 30 and peak < 200 << 20, (wall, peak)  # bounded time and memory
    assert not Path("/tmp/tympan-pickle-ran").exists()


def test_the_good_bundle_still_loads(good: Path, clip: Path) -> None:
    assert main(["predict", str(clip), "--bundle", str(good)]) == 0
