"""OOD evaluation: energy vs max-softmax on an open-set split of ESC-50 and on a real OOD set.

Scores follow tympan's one orientation (higher = more out-of-distribution); AUROC and AUPR
treat OOD as the POSITIVE class (``aupr_in`` is also given, in-distribution positive); FPR at
95% TPR is the share of OOD clips accepted when 95% of in-distribution clips are accepted.

(a) Open-set protocol (:func:`open_set_eval`): frozen 384-d embeddings of the AudioSet-trained
    EfficientAT ``mn04_as`` (no ESC-50 fine-tuning) of every ESC-50 clip; a seeded choice of
    10 of the 50 classes is held out of training; a multinomial logistic regression (sklearn,
    standardised embeddings) is trained on the 40 known classes of folds 1-4; on fold 5 the
    known-class clips (8 per class, 320) are in-distribution and the 80 clips of the 10 unseen
    classes are OOD; energy and max-softmax are computed from the regression's logits
    (``decision_function``).
(b) Real OOD set (:func:`real_ood_eval`): the shipped bundle's logits on the held-out ESC-50
    fold (in-distribution) vs on the ``tympan data ood`` set (speech, music, notification
    sounds, generated signals), per kind and pooled.
(c) AudioSet tags (:func:`audioset_tag_eval`, issue #7): does the original ``mn04_as`` head's
    ``max(sigmoid(Speech), sigmoid(Music))`` add anything to energy? Compared: energy alone,
    tag alone, a label-free combination (sum of the two scores, each standardised on the
    in-distribution held-out clips) and, as an optimistic upper bound, a logistic regression
    on both scores cross-validated over clips (it sees OOD labels, which a deployment never has).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tympan.io import to_jsonable
from tympan.stats.ood import EnergyOOD, MaxSoftmaxOOD, ood_metrics

__all__ = ["knn_score", "AUDIOSET_MUSIC", "AUDIOSET_SPEECH", "audioset_outputs", "audioset_tag_eval", "compare_scores",
           "open_set_eval", "real_ood_eval"]

AUDIOSET_SPEECH = 0  # /m/09x0r "Speech" in class_labels_indices.csv
AUDIOSET_MUSIC = 137  # /m/04rlf "Music"


def metrics_of(s_in: np.ndarray, s_out: np.ndarray) -> dict[str, Any]:
    m = ood_metrics(s_in, s_out)
    return {k: m[k] for k in ("auroc", "aupr_out", "aupr_in", "fpr_at_95_tpr", "n_in", "n_out")}


def compare_scores(logits_in: np.ndarray, logits_out: np.ndarray, temperature: float = 1.0) -> dict[str, Any]:
    """Energy (T_E = 1) vs max-softmax (at ``temperature``) on the same in/out logits."""
    return {
        "energy": metrics_of(EnergyOOD.score(logits_in, 1.0), EnergyOOD.score(logits_out, 1.0)),
        "max_softmax": metrics_of(MaxSoftmaxOOD.score(logits_in, temperature), MaxSoftmaxOOD.score(logits_out, temperature)),
        "positive": "out-of-distribution",
        "score_orientation": "higher = more out-of-distribution",
    }


def knn_score(reference_embeddings: np.ndarray, embeddings: np.ndarray, k: int = 10) -> np.ndarray:
    """Deep nearest-neighbour OOD score (Sun et al., ICML 2022): cosine distance to the k-th nearest
    training embedding (L2-normalised penultimate features). Higher = more OOD."""
    def unit(e: np.ndarray) -> np.ndarray:
        e = np.asarray(e, np.float64)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)

    d = 1.0 - unit(embeddings) @ unit(reference_embeddings).T
    return np.partition(d, k - 1, axis=1)[:, k - 1]


# --------------------------------------------------------------------------- AudioSet mn04
def audioset_model(weights: str | Path) -> Any:
    """The original EfficientAT ``mn04_as`` (527 AudioSet outputs) in eval mode."""
    from tympan.models import build_model
    from tympan.models.convert import load_pretrained, resolve_init

    path = resolve_init(weights, progress=False)
    model = build_model("mn04", n_classes=527)
    return load_pretrained(model, path).eval()


def audioset_outputs(files: Sequence[Path], weights: str | Path, *, progress: bool = True,
                     cache: bool = True) -> dict[str, np.ndarray]:
    """``{"embeddings" (n, 384), "logits" (n, 527)}`` of ``mn04_as`` on 5-s clips, EfficientAT front end.

    Each file is decoded at 32 kHz by the one decoder, padded/cropped to 5 s; cached by the
    files' bytes (``$TYMPAN_CACHE_DIR/diagnostics``).
    """
    import torch
    from tqdm import tqdm

    from tympan.audio import fit_length, load_audio
    from tympan.features import FrontendConfig, LogMel

    cfg = FrontendConfig.efficientat()
    h = hashlib.sha256(f"audioset-v1|{Path(weights).name}|{cfg.fingerprint()}".encode())
    for f in files:
        h.update(str(Path(f).name).encode())
        h.update(Path(f).read_bytes())
    from tympan.cache import diagnostics_cache_dir
    from tympan.io import save_npz_atomic

    path = diagnostics_cache_dir() / f"audioset-{h.hexdigest()[:20]}.npz"
    if cache and path.is_file():
        with np.load(path) as d:
            return {"embeddings": d["embeddings"], "logits": d["logits"]}
    model = audioset_model(weights)
    frontend = LogMel(cfg)
    embs, logits = [], []
    batch: list[np.ndarray] = []

    def flush() -> None:
        with torch.inference_mode():
            e = model.embed(frontend(torch.from_numpy(np.stack(batch))))
            embs.append(e.numpy())
            logits.append(model.classify(e).numpy())
        batch.clear()

    for f in tqdm(files, desc="mn04_as", unit="clip", disable=not progress):
        batch.append(fit_length(load_audio(f, cfg.sample_rate, max_seconds=None).waveform, cfg.clip_samples))
        if len(batch) == 32:
            flush()
    if batch:
        flush()
    out = {"embeddings": np.concatenate(embs).astype(np.float32), "logits": np.concatenate(logits).astype(np.float32)}
    if cache:
        save_npz_atomic(path, **out)
    return out


# --------------------------------------------------------------------------- (a) open set
def open_set_eval(embeddings: np.ndarray, labels: np.ndarray, folds: np.ndarray, *, n_unseen: int = 10,
                  test_fold: int = 5, seed: int = 0, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Train on ``50 - n_unseen`` classes (all folds but ``test_fold``); unseen classes of ``test_fold`` = OOD."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(labels)
    unseen = np.sort(np.random.default_rng(seed).choice(classes, size=n_unseen, replace=False))
    known = np.setdiff1d(classes, unseen)
    train = (folds != test_fold) & np.isin(labels, known)
    test_in = (folds == test_fold) & np.isin(labels, known)
    test_out = (folds == test_fold) & np.isin(labels, unseen)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    clf.fit(embeddings[train], labels[train])
    z_in, z_out = clf.decision_function(embeddings[test_in]), clf.decision_function(embeddings[test_out])
    acc = float(np.mean(clf.predict(embeddings[test_in]) == labels[test_in]))
    names = (lambda idx: [str(class_names[i]) for i in idx]) if class_names is not None else (lambda idx: idx.tolist())
    return to_jsonable({
        "protocol": (f"frozen AudioSet mn04_as embeddings (384-d, no ESC-50 fine-tuning); {len(known)} known classes "
                     f"trained on folds != {test_fold} ({int(train.sum())} clips) with a standardised multinomial "
                     f"logistic regression (C=0.1); fold {test_fold}: {int(test_in.sum())} known-class clips = "
                     f"in-distribution, {int(test_out.sum())} clips of {n_unseen} unseen classes = OOD; "
                     f"unseen classes drawn with seed {seed}"),
        "unseen_classes": names(unseen),
        "closed_set_accuracy": acc,
        **compare_scores(z_in, z_out, 1.0),
    })


# --------------------------------------------------------------------------- (b) real OOD set
def real_ood_eval(logits_in: np.ndarray, logits_out: np.ndarray, kinds: Sequence[str], *,
                  temperature: float = 1.0) -> dict[str, Any]:
    """Energy vs max-softmax, pooled and per OOD kind."""
    kinds = np.asarray(kinds)
    out = {"pooled": compare_scores(logits_in, logits_out, temperature), "per_kind": {}}
    for k in sorted(set(kinds.tolist())):
        out["per_kind"][k] = compare_scores(logits_in, logits_out[kinds == k], temperature)
    return to_jsonable(out)


# --------------------------------------------------------------------------- (c) AudioSet tags
def audioset_tag_eval(energy_in: np.ndarray, energy_out: np.ndarray, as_logits_in: np.ndarray,
                      as_logits_out: np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """Does ``max(sigmoid(Speech), sigmoid(Music))`` of the AudioSet head help energy?"""
    from scipy.special import expit
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    def tag(z: np.ndarray) -> np.ndarray:
        p = expit(np.asarray(z, np.float64))
        return np.maximum(p[:, AUDIOSET_SPEECH], p[:, AUDIOSET_MUSIC])

    t_in, t_out = tag(as_logits_in), tag(as_logits_out)
    mu_e, sd_e = energy_in.mean(), energy_in.std() + 1e-12
    mu_t, sd_t = t_in.mean(), t_in.std() + 1e-12
    comb_in = (energy_in - mu_e) / sd_e + (t_in - mu_t) / sd_t
    comb_out = (energy_out - mu_e) / sd_e + (t_out - mu_t) / sd_t
    x = np.c_[np.r_[energy_in, energy_out], np.r_[t_in, t_out]]
    y = np.r_[np.zeros(len(energy_in)), np.ones(len(energy_out))]
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    lr = cross_val_predict(LogisticRegression(max_iter=1000), (x - x.mean(0)) / x.std(0), y, cv=cv,
                           method="decision_function")
    return to_jsonable({
        "tag_score": "max(sigmoid(Speech), sigmoid(Music)) of the original mn04_as AudioSet head",
        "energy": metrics_of(energy_in, energy_out),
        "tag": metrics_of(t_in, t_out),
        "energy_plus_tag_label_free": {**metrics_of(comb_in, comb_out),
                                       "how": "z(energy) + z(tag), both standardised on in-distribution clips only"},
        "logistic_cv_upper_bound": {**metrics_of(lr[y == 0], lr[y == 1]),
                                    "how": "5-fold cross-validated logistic regression on (energy, tag); uses OOD "
                                           "labels, so optimistic"},
        "tag_in_distribution_quantiles": {q: float(np.quantile(t_in, float(q))) for q in ("0.5", "0.95", "0.99")},
    })
