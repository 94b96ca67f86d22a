"""A bundle's lifecycle: atomic saves under injected kills, file modes, stale temporaries, and
held-out predictions that must come from the bundle's own weights."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tympan.bundle import (
    Bundle,
    HeldoutPredictions,
    StaleHeldoutError,
    check_heldout,
    load_bundle,
    read_heldout,
    save_bundle,
    weights_fingerprint,
)
from tympan.features import FrontendConfig
from tympan.models import build_model

FRONTEND = FrontendConfig(clip_seconds=2.0)
CLASSES = ["a", "b", "c", "d", "e"]


def tiny_bundle(name: str, seed: int = 0, classes: list[str] = CLASSES) -> Bundle:
    torch.manual_seed(seed)
    model = build_model("cnn", n_classes=len(classes), width=4).eval()
    return Bundle(model=model, arch="cnn", arch_params={"width": 4}, classes=list(classes), frontend=FRONTEND,
                  name=name)


def heldout_for(bundle: Bundle, n: int = 6) -> HeldoutPredictions:
    rng = np.random.default_rng(0)
    return HeldoutPredictions(rng.normal(size=(n, len(CLASSES))).astype(np.float32), np.arange(n) % len(CLASSES),
                              [f"clip{i}" for i in range(n)], list(CLASSES),
                              weights_sha256=bundle.weights_fingerprint, meta={"fold": 5})


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- kill windows
KILLER = textwrap.dedent('''
    import os, signal, sys
    import tympan.bundle as tb
    import tympan.io as tio
    from tympan.bundle import load_bundle
    path, where, fallback = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    def die(*_a, **_k):
        os.kill(os.getpid(), signal.SIGKILL)
    if fallback:
        tio._exchange = lambda a, b: False  # a file system without renameat2
    if where == "writing":  # half-way through writing the new folder
        tb.save_file = die
    elif where.startswith("rename"):  # at the n-th rename of the switch
        n, real = int(where[6:]), os.rename
        count = [0]
        def rename(a, b):
            count[0] += 1
            if count[0] == n:
                die()
            return real(a, b)
        tio.os.rename = rename
    elif where == "exchange":  # right after the atomic exchange, before the old folder is removed
        real_x = tio._exchange
        tio._exchange = lambda a, b: real_x(a, b) and die()
    b = load_bundle(path)
    b.name = "new"
    torch_state = b.model.state_dict()
    for v in torch_state.values():
        if v.is_floating_point():
            v.add_(1.0)
    b.save(path, keep_files=True)
    print("finished")
''')


#: every point a save can be killed at: while writing, and at each step of either switch
KILL_POINTS = [("writing", False), ("exchange", False),  # renameat2(RENAME_EXCHANGE)
               ("writing", True), ("rename1", True), ("rename2", True)]  # rename aside, rename in


@pytest.mark.parametrize(("where", "fallback"), KILL_POINTS,
                         ids=[f"{w}-{'rename-aside' if f else 'exchange'}" for w, f in KILL_POINTS])
def test_a_kill_at_any_point_of_a_save_leaves_a_complete_bundle(tmp_path: Path, where: str, fallback: bool) -> None:
    path = tmp_path / "bundle"
    old = tiny_bundle("old")
    old.save(path, heldout=heldout_for(old))
    (path / "notes.txt").write_text("kept")
    proc = subprocess.run([sys.executable, "-c", KILLER, str(path), where, "1" if fallback else "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr  # the fault fired
    loaded = load_bundle(path)  # recovers a folder left aside by the kill
    assert loaded.name in ("old", "new") and (path / "notes.txt").read_text() == "kept"
    if loaded.name == "old":
        assert weights_fingerprint(loaded.model) == old.weights_fingerprint
    assert read_heldout(path).weights_sha256 == old.weights_fingerprint  # heldout.* kept with the old weights
    # whatever the writer left behind is gone after the next save
    save_bundle(loaded, path, keep_files=True)
    assert leftovers(tmp_path) == []


def test_a_kill_between_the_renames_is_recovered_without_any_load(tmp_path: Path) -> None:
    """The rename-aside path: after the kill the path is missing, the old folder waits beside it."""
    path = tmp_path / "bundle"
    tiny_bundle("old").save(path)
    proc = subprocess.run([sys.executable, "-c", KILLER, str(path), "rename2", "1"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not path.exists() and any(n.endswith(".old") for n in leftovers(tmp_path))
    from tympan.io import recover_dir

    assert recover_dir(path) and load_bundle(path).name == "old" and leftovers(tmp_path) == []


def test_saves_give_normal_modes_also_in_place(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        path = tmp_path / "bundle"
        b = tiny_bundle("m")
        b.save(path, heldout=heldout_for(b))
        save_bundle(b, path, keep_files=True)  # as calibrate does, in place
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}
        assert modes == {n: 0o644 for n in ("bundle.json", "model.safetensors", "heldout.json",
                                            "heldout.safetensors")}
        assert stat.S_IMODE(path.stat().st_mode) == 0o755
    finally:
        os.umask(old_umask)


def test_temporaries_of_live_writers_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "bundle"
    tiny_bundle("x").save(path)
    live = tmp_path / f".bundle.{os.getpid()}.abcd1234.tmp"  # this process: alive
    dead = tmp_path / ".bundle.999999999.abcd1234.tmp"  # no such process
    live.mkdir()
    dead.mkdir()
    load_bundle(path)
    assert live.exists() and not dead.exists()


# --------------------------------------------------------------------------- held-out predictions
def test_fingerprint_follows_the_weights_not_the_file() -> None:
    a, b = tiny_bundle("a", seed=0), tiny_bundle("b", seed=0)
    assert a.weights_fingerprint == b.weights_fingerprint
    with torch.no_grad():
        next(b.model.parameters()).add_(1e-6)
    assert a.weights_fingerprint != b.weights_fingerprint


def test_heldout_of_other_weights_is_refused(tmp_path: Path) -> None:
    a, other = tiny_bundle("a", seed=0), tiny_bundle("b", seed=1)
    with pytest.raises(StaleHeldoutError, match="other weights"):
        check_heldout(heldout_for(other), a)
    with pytest.raises(StaleHeldoutError, match="other weights"):
        a.save(tmp_path / "x", heldout=heldout_for(other))
    assert not (tmp_path / "x").exists()  # refused before touching the disk
    legacy = heldout_for(a)
    legacy.weights_sha256 = None
    with pytest.raises(StaleHeldoutError, match="do not say which weights"):
        check_heldout(legacy, a)


def test_calibrate_on_an_adapted_bundle_never_reports_the_old_models_heldout(
        synthetic_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tympan calibrate --heldout <original>` on an adapted bundle: refused without data, recomputed
    with it, and every reported held-out figure is the adapted model's."""
    from tympan.adaptation import adapt_bundle
    from tympan.datasets import load_esc50
    from tympan.diagnostics.calibrate import fit_bundle
    from tympan.inference import Predictor

    ds = load_esc50(synthetic_dir)
    original = tiny_bundle("original", classes=list(ds.classes))
    original.provenance = {"heldout_fold": 5, "train_folds": [1, 2, 3, 4]}
    held = ds.folds == 5
    files = [f for f, h in zip(ds.files, held) if h]
    ids = [c for c, h in zip(ds.clip_ids, held) if h]
    pred = Predictor(original)
    z = np.stack([pred.logits(pred.prepare(f).windows).mean(axis=0) for f in files])
    orig_dir = tmp_path / "original"
    original.save(orig_dir, heldout=HeldoutPredictions(z, ds.labels[held], ids, list(ds.classes),
                                                        weights_sha256=original.weights_fingerprint,
                                                        meta={"fold": 5}))
    field = tmp_path / "field"
    field.mkdir()
    for f in ds.files[:20]:  # louder copies: the BatchNorm statistics move
        import soundfile as sf

        y, sr = sf.read(f, dtype="float32")
        sf.write(field / Path(f).name, np.clip(y * 8, -1, 1), sr)
    adapted, _ = adapt_bundle(load_bundle(orig_dir), field)
    adapted_dir = tmp_path / "adapted"
    adapted.save(adapted_dir)

    quiet = {"progress": False, "log": lambda *a: None}
    monkeypatch.delenv("TYMPAN_ESC50_DIR", raising=False)
    with pytest.raises(StaleHeldoutError, match="other weights.*--data-dir"):  # nothing to recompute from
        fit_bundle(adapted_dir, heldout=orig_dir, **quiet)
    summary = fit_bundle(adapted_dir, heldout=orig_dir, data_dir=synthetic_dir, train_folds=[1], **quiet)
    fitted = load_bundle(adapted_dir)
    ho = read_heldout(adapted_dir)
    assert ho.weights_sha256 == fitted.weights_fingerprint == summary["heldout_weights_sha256"]
    ap = Predictor(fitted)
    want = np.stack([ap.logits(ap.prepare(f).windows).mean(axis=0) for f in files])
    np.testing.assert_allclose(ho.logits, want, atol=1e-5)
    assert not np.allclose(ho.logits, z, atol=1e-3)  # not the original model's logits
    acc = float((want.argmax(1) == ds.labels[held]).mean())
    assert fitted.extra["diagnostics"]["accuracy"] == pytest.approx(acc)
