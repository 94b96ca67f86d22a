"""Keep the original model's OOD and background judgement for an adapted bundle, without labels.

The outlier probe, the k-NN bank, the energy statistics and the background detector were
fitted on the *unadapted* model's embeddings and logits. Adaptation moves both, so those
judges, applied as they are, read every adapted window as shifted: on 150 low-passed field
clips the OOD rate rose 0.03 -> 0.08 while accuracy rose.

What the bundle carries is enough to carry them over: the field windows the adaptation used
are run through both models, and each judge's input is mapped from the new model's space to
the old one by per-dimension moment matching on those windows,
``T(e) = (e - mu_new) / sd_new * sd_old + mu_old``. Folded into a judge's own standardisation
(``(T(e) - mean) / scale`` is ``(e - mean') / scale'``), the probe and the background detector
keep their coefficients and thresholds. Scores that are not linear in the embedding (the cosine
k-NN distance) and the energy are matched on the score itself: their locations and scales (and
the energy threshold) follow the affine map between the two models' scores on those windows. On the adaptation audio
the adapted bundle therefore judges as the original one did; on other audio the map is the one
the adaptation implies, and it is recorded in ``extra["adaptation"]["refitted"]``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from tympan.bundle import Bundle
from tympan.io import decode_array, encode_array
from tympan.stats.ood import EnergyOOD

__all__ = ["match_decisions", "transport_trust"]

_EPS = 1e-6


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, np.float64)
    return x.mean(axis=0), x.std(axis=0) + _EPS


def _restandardise(block: dict[str, Any], mu_o: np.ndarray, sd_o: np.ndarray, mu_n: np.ndarray,
                   sd_n: np.ndarray) -> dict[str, Any]:
    """A LinearProbe block whose first ``D`` inputs are embeddings, moved to the new model's space."""
    mean = decode_array(block["mean"]).astype(np.float64)
    scale = decode_array(block["scale"]).astype(np.float64)
    d = len(mu_o)
    ratio = sd_n / sd_o
    mean[:d] = mu_n + (mean[:d] - mu_o) * ratio
    scale[:d] = scale[:d] * ratio
    return {**block, "mean": encode_array(mean, "float32"), "scale": encode_array(scale, "float32")}


def _affine(x: float, mu_o: float, sd_o: float, mu_n: float, sd_n: float) -> float:
    return float(mu_n + (x - mu_o) * sd_n / sd_o)


def transport_trust(adapted: Bundle, e_old: np.ndarray, z_old: np.ndarray, e_new: np.ndarray,
                    z_new: np.ndarray) -> list[str]:
    """Carry ``adapted``'s OOD / background judges over to its new weights (in place).

    ``e_*``/``z_*``: embeddings and logits of the same field windows under the original and the
    adapted model. Returns the names of what was carried over.
    """
    done: list[str] = []
    mu_o, sd_o = _moments(e_old)
    mu_n, sd_n = _moments(e_new)
    ood = copy.deepcopy(adapted.ood or {})
    t_ood = float(ood.get("temperature") or 1.0)
    en_o, en_n = EnergyOOD.score(z_old, t_ood), EnergyOOD.score(z_new, t_ood)
    eo = (float(en_o.mean()), float(en_o.std() + _EPS))
    ez = (float(en_n.mean()), float(en_n.std() + _EPS))
    if ood.get("threshold") is not None:
        ood["threshold"] = _affine(float(ood["threshold"]), *eo, *ez)
        done.append("ood_threshold")
    block = dict(ood.get("embedding") or {})
    if block.get("score") == "probe" and "mean" in block:
        ood["embedding"] = _restandardise(block, mu_o, sd_o, mu_n, sd_n)
        done.append("ood.embedding (outlier probe)")
    elif block.get("score") == "energy+knn" and "ood_bank" in (adapted.arrays or {}):
        # cosine k-NN distances are not affine in the embedding: match the two components' scores
        # on the adaptation windows instead (the bank of training embeddings stays as it is)
        from tympan.stats.ood import CombinedOOD

        knn = CombinedOOD.from_dict(block, np.asarray(adapted.arrays["ood_bank"], np.float32)).knn_
        d_o, d_n = knn.decision_function(e_old), knn.decision_function(e_new)
        ko, kn = (float(d_o.mean()), float(d_o.std() + _EPS)), (float(d_n.mean()), float(d_n.std() + _EPS))
        block["energy_loc"] = _affine(float(block["energy_loc"]), *eo, *ez)
        block["energy_scale"] = float(block["energy_scale"]) * ez[1] / eo[1]
        block["knn_loc"] = _affine(float(block["knn_loc"]), *ko, *kn)
        block["knn_scale"] = float(block["knn_scale"]) * kn[1] / ko[1]
        ood["embedding"] = block
        done.append("ood.embedding (energy + k-NN)")
    adapted.ood = ood
    bg = adapted.background or {}
    if bg.get("coef") and "mean" in bg:
        adapted.background = _restandardise(dict(bg), mu_o, sd_o, mu_n, sd_n)
        done.append("background")
    return done


def _threshold_for(scores: np.ndarray, n_above: int, current: float) -> float:
    """``current`` if exactly ``n_above`` of ``scores`` lie above it, else the threshold midway between
    the neighbours that leaves exactly ``n_above`` above (the smallest move that keeps the decisions)."""
    if int(np.sum(np.asarray(scores) > current)) == n_above:
        return float(current)
    s = np.sort(np.asarray(scores, np.float64))[::-1]
    if n_above <= 0:
        return float(s[0] + abs(s[0]) * 1e-6 + 1e-9)
    if n_above >= len(s):
        return float(s[-1] - abs(s[-1]) * 1e-6 - 1e-9)
    return float((s[n_above - 1] + s[n_above]) / 2)


def match_decisions(original: Any, adapted: Any, before: Any, after: Any) -> list[str]:
    """Set the deciding thresholds of ``adapted`` so it flags as many adaptation files (OOD) and
    windows (background) as ``original`` did; ``before``/``after``: their ``RecordingScores``.

    Moment matching carries the scores' scale; this keeps the decisions themselves: on the audio
    it was adapted on, the adapted bundle flags the share the original model flagged.
    """
    done: list[str] = []
    thr_o = before.threshold
    block = dict((adapted.ood or {}).get("embedding") or {})
    # RecordingScores.ood_score falls back to the energy, so which threshold decides is read from
    # the bundle: the embedding judge's when it has one, else the energy threshold
    if thr_o is not None and "threshold" in block:
        k = int(np.sum(before.ood_score > thr_o))
        block["threshold"] = _threshold_for(after.ood_score, k, float(block["threshold"]))
        adapted.ood = {**adapted.ood, "embedding": block}
        done.append("ood.embedding threshold")
    elif thr_o is not None and (adapted.ood or {}).get("threshold") is not None:
        k = int(np.sum(before.energy > thr_o))
        adapted.ood = {**adapted.ood, "threshold": _threshold_for(after.energy, k, float(adapted.ood["threshold"]))}
        done.append("ood_threshold")
    bg = dict(adapted.background or {})
    if (before.window_background_score is not None and after.window_background_score is not None
            and bg.get("threshold") is not None):
        k = int(np.sum(before.window_background))
        bg["threshold"] = _threshold_for(after.window_background_score, k, float(bg["threshold"]))
        adapted.background = bg
        done.append("background threshold")
    return done
