"""One recording through every consumer of the prediction path; they must agree.

The HTTP API (a real uvicorn server), ``tympan predict --json``, ``diagnose``'s analysis,
adaptation's field predictions and the robustness sweep all turn window logits into a
recording's answer through :func:`tympan.inference.aggregate`; this checks that they report the
same calibrated probabilities, energy score, OOD flag and label for the same file.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

pytest.importorskip("uvicorn")

from helpers import LiveServer  # noqa: E402 - a real uvicorn server in a thread

from tympan.bundle import Bundle, HeldoutPredictions, load_bundle  # noqa: E402
from tympan.datasets import load_esc50  # noqa: E402
from tympan.features import FrontendConfig  # noqa: E402
from tympan.inference import Predictor, TrustParams, aggregate  # noqa: E402
from tympan.models import build_model  # noqa: E402


@pytest.fixture(scope="module")
def setup(synthetic_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A bundle (T = 1.7, a threshold that flags some windows) whose single held-out clip is the recording."""
    ds = load_esc50(synthetic_dir)
    i = int(np.flatnonzero(ds.folds == 5)[0])
    torch.manual_seed(3)
    model = build_model("cnn", n_classes=len(ds.classes), width=8).eval()
    bundle = Bundle(model=model, arch="cnn", arch_params={"width": 8}, classes=list(ds.classes),
                    frontend=FrontendConfig(clip_seconds=1.0), temperature=1.7, name="one-path",
                    provenance={"heldout_fold": 5})
    pred = Predictor(bundle)
    z = pred.logits(pred.prepare(ds.files[i]).windows)
    energy = aggregate(z, TrustParams()).window_energy
    bundle.ood = {"score": "energy", "temperature": 1.0, "threshold": float(np.median(energy))}
    dest = tmp_path_factory.mktemp("one") / "bundle"
    bundle.save(dest, heldout=HeldoutPredictions(z.mean(axis=0, keepdims=True), ds.labels[[i]], [ds.clip_ids[i]],
                                                 list(ds.classes), weights_sha256=bundle.weights_fingerprint))
    return dest, Path(ds.files[i]), ds.clip_ids[i]


def test_every_consumer_gives_the_same_answer(setup, synthetic_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from tympan.adaptation.field import load_field, predict_field
    from tympan.cli import main
    from tympan.diagnostics.field import analyse_sources, make_predictor
    from tympan.diagnostics.robustness import SweepItem, run_sweep
    from tympan.serving.app import create_app

    bundle_dir, wav, clip_id = setup
    bundle = load_bundle(bundle_dir)
    k = bundle.n_classes

    # the reference: the pure function on the predictor's window logits
    predictor = Predictor(bundle_dir)
    prepared = predictor.prepare(wav)
    z = predictor.logits(prepared.windows)
    assert len(z) == 3  # a 2-s clip in 1-s windows at 50% overlap
    ref = aggregate(z, predictor.params)
    probs, energy = ref.probabilities[0], float(ref.energy[0])
    label = bundle.classes[int(probs.argmax())]

    def same_api_body(body: dict) -> None:
        got = {c["label"]: c["probability"] for c in body["top_k"]}
        assert got == {bundle.classes[j]: round(float(probs[j]), 6) for j in np.argsort(-probs, kind="stable")}
        assert body["top_k"][0]["label"] == label
        assert body["ood"]["score"] == round(energy, 4)
        assert body["ood"]["out_of_distribution"] == bool(ref.out_of_distribution[0])
        assert [w["ood_score"] for w in body["windows"]] == [round(float(e), 4) for e in ref.window_energy]
        assert [w["out_of_distribution"] for w in body["windows"]] == ref.window_out_of_distribution.tolist()

    # 1. the HTTP API, a real server
    with LiveServer(create_app(bundle_dir)) as server:
        r = httpx.post(server.url + "/predict", timeout=30,
                       json={"audio_base64": base64.b64encode(wav.read_bytes()).decode(), "top_k": k})
    assert r.status_code == 200, r.text
    same_api_body(r.json())

    # 2. tympan predict --json
    assert main(["predict", "--bundle", str(bundle_dir), "--json", "--top-k", str(k), str(wav)]) == 0
    same_api_body(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))

    # 3. diagnose's per-recording analysis
    cs = analyse_sources(make_predictor(bundle_dir), [(clip_id, wav)], with_acoustic=False)
    np.testing.assert_array_equal(cs.probabilities[0], probs)
    assert cs.energy[0] == energy and cs.n_windows[0] == 3

    # 4. adaptation's field predictions
    ff = load_field([wav], bundle.frontend)
    fp = predict_field(bundle, ff)
    np.testing.assert_array_equal(fp.probabilities[0], probs)
    assert fp.energy[0] == energy and fp.out_of_distribution[0] == ref.out_of_distribution[0]

    # 5. the robustness sweep, clean row, on the bundle's one held-out clip
    sweep = run_sweep(predictor, bundle_dir, data_dir=synthetic_dir, max_clips=None,
                      items=[SweepItem("clean", None)], progress=False)
    row = sweep["rows"][0]
    assert sweep["n_clips"] == 1
    assert row["mean_confidence"] == pytest.approx(float(probs.max()), abs=1e-12)
    assert row["ood_flagged"] == float(ref.out_of_distribution[0])
