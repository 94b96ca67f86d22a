"""WiSE-FT weight interpolation (tympan.models.interpolate) and the script that writes such a bundle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tympan.bundle import load_bundle, weights_fingerprint
from tympan.models.interpolate import InterpolationError, interpolate_state

REPO = Path(__file__).resolve().parents[1]


def _states() -> tuple[dict, dict]:
    a = {"w": torch.zeros(3), "bn.running_var": torch.ones(2), "bn.num_batches_tracked": torch.tensor(5)}
    b = {"w": torch.full((3,), 2.0), "bn.running_var": torch.full((2,), 3.0), "bn.num_batches_tracked": torch.tensor(9)}
    return a, b


def test_interpolation_is_linear_in_every_float_tensor_and_takes_counters_from_the_tuned_model():
    a, b = _states()
    mid = interpolate_state(a, b, 0.25)
    assert torch.allclose(mid["w"], torch.full((3,), 0.5))
    assert torch.allclose(mid["bn.running_var"], torch.full((2,), 1.5))  # BatchNorm statistics too
    assert int(mid["bn.num_batches_tracked"]) == 9
    assert all(torch.equal(interpolate_state(a, b, 0.0)[k], a[k]) for k in ("w", "bn.running_var"))
    assert all(torch.equal(interpolate_state(a, b, 1.0)[k], b[k]) for k in b)


@pytest.mark.parametrize("change", ["missing", "shape", "alpha"])
def test_models_of_different_shape_or_a_bad_alpha_are_refused(change):
    a, b = _states()
    alpha = 0.5
    if change == "missing":
        del b["w"]
    elif change == "shape":
        b["w"] = torch.zeros(4)
    else:
        alpha = 1.5
    with pytest.raises(InterpolationError):
        interpolate_state(a, b, alpha)


def test_the_script_writes_a_bundle_between_its_parents_and_says_so(fitted_bundle, tmp_path):
    base = load_bundle(fitted_bundle)
    tuned_model = base.model
    with torch.no_grad():
        for p in tuned_model.parameters():
            p.add_(1.0)
    tuned_dir = base.replace(model=tuned_model).save(tmp_path / "tuned")
    out = tmp_path / "wise"
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "interpolate_bundles.py"), "--base", str(fitted_bundle),
                          "--tuned", str(tuned_dir), "--alpha", "0.5", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    wise = load_bundle(out)
    b0, b1 = load_bundle(fitted_bundle).model.state_dict(), load_bundle(tuned_dir).model.state_dict()
    for k, v in wise.model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, (b0[k] + b1[k]) / 2, atol=1e-6), k
    prov = wise.provenance["interpolated"]
    assert prov["alpha"] == 0.5 and prov["base"]["sha256"] == weights_fingerprint(load_bundle(fitted_bundle).model)
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "interpolate_bundles.py"), "--base", str(fitted_bundle),
                          "--tuned", str(tmp_path / "nope"), "--alpha", "0.5", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
