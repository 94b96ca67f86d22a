"""The OOD score a bundle serves, read from its ``ood`` block (``bundle.json``, ``GET /model``).

A calibrated bundle's ``ood`` block holds two thresholds: the top-level one is the energy
score's, and ``ood.embedding`` (the outlier probe or energy + k-NN) holds the one that decides
when it is present (:class:`tympan.inference.TrustParams`). Every screen that names the OOD score
(report.html, the dashboard, ``diagnose --bundle``) reads it through :func:`served_ood`, so none
shows the energy threshold under the probe's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["SCORE_LABELS", "ServedOOD", "served_ood"]

#: how each score is named on screens
SCORE_LABELS = {"probe": "outlier probe", "energy+knn": "energy + k-NN", "energy": "energy"}


class ServedOOD(BaseModel):
    """The deciding OOD score, its threshold and what it was measured to do."""

    score_name: str = Field(description="`probe`, `energy+knn` or `energy` (as in `/predict`'s `ood.score_name`)")
    label: str = Field(description="the score's name for people, e.g. 'outlier probe'")
    threshold: float | None = Field(description="the served threshold of this score; null when none was fitted")
    tpr: float | None = Field(None, description="share of held-out in-distribution windows the threshold keeps")
    fitted_on: str | None = None
    unseen_flagged: float | None = Field(None, description="share of the OOD set's unseen evaluation windows flagged")
    unseen_windows: int | None = None
    unseen_by_kind: dict[str, float] = Field(default_factory=dict)
    unseen_auroc: float | None = Field(None, description="AUROC of held-out vs unseen OOD windows (OOD positive)")
    heldout_flagged: float | None = Field(None, description="share of held-out in-distribution windows flagged")
    energy_threshold: float | None = Field(None, description="the energy score's threshold (not served when "
                                                             "another score decides)")

    @property
    def decides_by_energy(self) -> bool:
        return self.score_name == "energy"

    def headline(self) -> str:
        """``outlier probe score (probe), threshold -3.160``: the served score and its threshold."""
        thr = "no threshold fitted" if self.threshold is None else f"threshold {self.threshold:.3f}"
        name = f"{self.label} score" + ("" if self.label == self.score_name else f" ({self.score_name})")
        return f"{name}, {thr}"

    def figures_text(self) -> str:
        """What the served score was measured to do, in one sentence (empty when nothing is stored)."""
        parts = []
        if self.tpr is not None:
            parts.append(f"the threshold keeps {self.tpr:.0%} of held-out in-distribution windows")
        if self.heldout_flagged is not None:
            parts.append(f"flags {self.heldout_flagged:.1%} of held-out windows")
        if self.unseen_flagged is not None:
            kinds = ", ".join(f"{k} {v:.0%}" for k, v in self.unseen_by_kind.items())
            parts.append(f"flags {self.unseen_flagged:.1%} of {self.unseen_windows or '?'} windows of the OOD set's "
                         f"unseen evaluation sources" + (f" ({kinds})" if kinds else ""))
        if self.unseen_auroc is not None:
            parts.append(f"AUROC {self.unseen_auroc:.3f} (held-out vs unseen OOD windows)")
        return "; ".join(parts)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def served_ood(ood: Mapping[str, Any] | None) -> ServedOOD:
    """The score that decides OOD for a bundle whose ``ood`` block is ``ood``."""
    ood = ood or {}
    emb = ood.get("embedding") if isinstance(ood.get("embedding"), Mapping) else None
    energy_thr = _num(ood.get("threshold"))
    if emb and emb.get("score") in ("probe", "energy+knn"):
        name = str(emb["score"])
        ev = emb.get("evaluated_on_unseen_sources") if isinstance(emb.get("evaluated_on_unseen_sources"),
                                                                  Mapping) else {}
        by_kind = ev.get("by_kind") if isinstance(ev.get("by_kind"), Mapping) else {}
        return ServedOOD(score_name=name, label=SCORE_LABELS[name], threshold=_num(emb.get("threshold")),
                         tpr=_num(emb.get("tpr")), fitted_on=emb.get("fitted_on"),
                         unseen_flagged=_num(ev.get("flagged")), unseen_windows=ev.get("n_windows"),
                         unseen_by_kind={str(k): float(v) for k, v in by_kind.items() if _num(v) is not None},
                         unseen_auroc=_num(ev.get("auroc")), heldout_flagged=_num(ev.get("heldout_flagged")),
                         energy_threshold=energy_thr)
    return ServedOOD(score_name="energy", label="energy", threshold=energy_thr, tpr=_num(ood.get("tpr")),
                     fitted_on=ood.get("fitted_on"), energy_threshold=energy_thr)
