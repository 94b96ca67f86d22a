"""Confusion matrix, per-class metrics and the most-confused class pairs.

Arithmetic comes from scikit-learn (``confusion_matrix``,
``precision_recall_fscore_support``); this module only adds the pairing of
confusions in both directions with the clip ids behind them, which is what a
user needs to go and listen to the failures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from tympan.io import to_jsonable

__all__ = [
    "ConfusedPair",
    "ConfusionReport",
    "confusion_report",
    "most_confused_pairs",
]


@dataclass
class ConfusedPair:
    """Two classes the model mixes up; counts are given per direction and in total."""

    class_a: str
    class_b: str
    a_as_b: int  # true a predicted as b
    b_as_a: int  # true b predicted as a
    clip_ids_a_as_b: list[str] = field(default_factory=list)
    clip_ids_b_as_a: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.a_as_b + self.b_as_a

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_a": self.class_a,
            "class_b": self.class_b,
            "a_as_b": int(self.a_as_b),
            "b_as_a": int(self.b_as_a),
            "total": int(self.total),
            "clip_ids_a_as_b": list(self.clip_ids_a_as_b),
            "clip_ids_b_as_a": list(self.clip_ids_b_as_a),
        }


@dataclass
class ConfusionReport:
    """Confusion matrix (rows = true class, columns = predicted) plus per-class scores."""

    class_names: list[str]
    matrix: np.ndarray
    per_class: list[dict[str, Any]]
    accuracy: float
    macro_f1: float
    confused_pairs: list[ConfusedPair]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "class_names": list(self.class_names),
                "matrix": self.matrix,
                "matrix_orientation": "rows = true class, columns = predicted class",
                "per_class": self.per_class,
                "accuracy": self.accuracy,
                "macro_f1": self.macro_f1,
                "confused_pairs": [p.to_dict() for p in self.confused_pairs],
            }
        )


def _resolve_predictions(y_pred: Any, logits: Any) -> np.ndarray:
    if (y_pred is None) == (logits is None):
        raise ValueError("pass exactly one of y_pred or logits")
    if logits is not None:
        z = np.asarray(logits)
        if z.ndim != 2:
            raise ValueError(f"logits must be (n_samples, n_classes), got {z.shape}")
        return z.argmax(axis=1)
    return np.asarray(y_pred).astype(int)


def most_confused_pairs(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    clip_ids: Sequence[Any] | None = None,
    top_k: int | None = 10,
) -> list[ConfusedPair]:
    """Unordered class pairs ranked by confusions counted in BOTH directions.

    ``a -> b`` and ``b -> a`` are pooled because for "should I trust this
    prediction" a symmetric mix-up (e.g. rain vs. crackling fire) is one
    problem. Ties are broken by class index, so the order is deterministic.
    """
    y_true = np.asarray(y_true).astype(int)
    y_pred = np.asarray(y_pred).astype(int)
    k = len(class_names)
    ids = (
        [str(i) for i in range(len(y_true))]
        if clip_ids is None
        else [str(c) for c in clip_ids]
    )
    if len(ids) != len(y_true) or len(y_pred) != len(y_true):
        raise ValueError("y_true, y_pred and clip_ids must have the same length")
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(k))
    sym = np.triu(cm + cm.T, k=1)
    a_idx, b_idx = np.nonzero(sym)
    order = sorted(zip(a_idx, b_idx), key=lambda ab: (-sym[ab], ab[0], ab[1]))
    if top_k is not None:
        order = order[:top_k]
    pairs = []
    for a, b in order:
        pairs.append(
            ConfusedPair(
                class_a=str(class_names[a]),
                class_b=str(class_names[b]),
                a_as_b=int(cm[a, b]),
                b_as_a=int(cm[b, a]),
                clip_ids_a_as_b=[ids[i] for i in np.flatnonzero((y_true == a) & (y_pred == b))],
                clip_ids_b_as_a=[ids[i] for i in np.flatnonzero((y_true == b) & (y_pred == a))],
            )
        )
    return pairs


def confusion_report(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray | None = None,
    *,
    logits: np.ndarray | None = None,
    class_names: Sequence[str],
    clip_ids: Sequence[Any] | None = None,
    top_k: int | None = 10,
) -> ConfusionReport:
    """Confusion matrix, per-class precision/recall/F1/support and top confused pairs.

    Give either integer predictions ``y_pred`` or ``logits`` (argmax is taken).
    Classes with no predictions get precision 0 (sklearn ``zero_division=0``).
    """
    y_true = np.asarray(y_true).astype(int)
    y_pred = _resolve_predictions(y_pred, logits)
    labels = np.arange(len(class_names))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    per_class = [
        {
            "class": str(name),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
    present = support > 0
    return ConfusionReport(
        class_names=[str(c) for c in class_names],
        matrix=cm,
        per_class=per_class,
        accuracy=float(np.trace(cm) / max(cm.sum(), 1)),
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        confused_pairs=most_confused_pairs(y_true, y_pred, class_names, clip_ids, top_k),
    )

