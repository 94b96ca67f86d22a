"""Train-versus-field drift: per-feature tests, embedding MMD, prediction/label shift.

Design goal: a verdict a user can act on, not a p-value that goes to zero
with sample size. Every check therefore needs BOTH

1. statistical evidence: a p-value below ``alpha`` (per-feature KS p-values
   are Benjamini-Hochberg corrected across features), and
2. a practically relevant effect size, judged on a scale that does NOT grow
   with ``n``.

Field samples below ``min_field_samples`` get "insufficient data" instead of a
guess. Verdict strings are the module constants ``DRIFT``, ``NEGLIGIBLE``
(significant but below the practical size), ``NO_DRIFT`` and ``INSUFFICIENT``.

Effect sizes for features (per feature ``j``, reference ``R``, field ``F``):

* Wasserstein-1 distance (``scipy.stats.wasserstein_distance``) divided by the
  reference standard deviation: the average distance, in reference stds, mass
  has to move to turn ``R`` into ``F``. For a pure mean shift it equals
  ``|shift| / std`` (Cohen's d); drift needs ``>= min_effect = 0.1`` std,
  i.e. half of Cohen's "small" effect (0.2) -- smaller shifts do not change
  what a CNN on log-mels sees in any way we could explain to a user.
* PSI, Population Stability Index (Yurdakul 2018, "Statistical properties of
  the population stability index"): ``sum_b (f_b - r_b) * ln(f_b / r_b)`` over
  10 reference-quantile bins, fractions floored at ``psi_epsilon = 1e-4``.
  Credit-scoring convention: < 0.1 stable, 0.1-0.25 moderate, > 0.25 major.
  ``PSI >= min_psi = 0.25`` also counts as practically relevant; it catches
  changes in shape that an outlier-inflated std hides from Wasserstein/std.
  (PSI is biased upward by about ``(bins - 1) / n_field`` on small samples,
  which is why it is never used without the KS gate.)

What the fitted reference keeps (and :meth:`FeatureDriftDetector.to_dict`
stores): per-feature mean/std, the PSI bin edges and reference bin fractions
computed on the FULL reference, and a seeded row subsample of at most
``max_reference_samples = 2000`` reference rows as float32 (base64 in JSON).
KS and Wasserstein run on that subsample: with 2000 reference values the KS
test is limited by the field sample for any realistic field size, and the
quantiles of 2000 values are accurate to ~1-2 percentile points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest, chi2_contingency, false_discovery_control, ks_2samp
from scipy.stats import wasserstein_distance
from sklearn.base import BaseEstimator
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.utils.validation import check_array, check_is_fitted

from tympan.io import decode_array, encode_array, json_float, to_jsonable

__all__ = [
    "DRIFT",
    "INSUFFICIENT",
    "NEGLIGIBLE",
    "NO_DRIFT",
    "EmbeddingDriftDetector",
    "EmbeddingDriftReport",
    "FeatureDrift",
    "FeatureDriftDetector",
    "FeatureDriftReport",
    "confidence_shift",
    "label_shift",
    "mmd2_unbiased",
    "ood_rate_shift",
    "overall_verdict",
    "population_stability_index",
    "prediction_counts",
]

DRIFT = "drift"
NEGLIGIBLE = "negligible"
NO_DRIFT = "no drift"
INSUFFICIENT = "insufficient data"

FORMAT_VERSION = 1


# --------------------------------------------------------------------------- #
# compact, exact array storage for JSON bundles
# --------------------------------------------------------------------------- #
# --------------------------------------------------------------------------- #
# per-feature drift
# --------------------------------------------------------------------------- #
def _psi_edges(x: np.ndarray, n_bins: int) -> np.ndarray:
    """Interior bin edges at reference quantiles (deduplicated for discrete features)."""
    return np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)[1:-1]))


def _bin_fractions(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    # bins (-inf, e1), [e1, e2), ..., [ek, inf): a constant reference c gets
    # bins (-inf, c) and [c, inf), so a field sitting below c is visible.
    idx = np.searchsorted(edges, x, side="right")
    return np.bincount(idx, minlength=len(edges) + 1) / max(len(x), 1)


def population_stability_index(
    reference_fractions: np.ndarray, field_fractions: np.ndarray, epsilon: float = 1e-4
) -> float:
    """``PSI = sum_b (f_b - r_b) ln(f_b / r_b)``, fractions floored at ``epsilon``."""
    r = np.maximum(np.asarray(reference_fractions, dtype=np.float64), epsilon)
    f = np.maximum(np.asarray(field_fractions, dtype=np.float64), epsilon)
    return float(np.sum((f - r) * np.log(f / r)))


@dataclass
class FeatureDrift:
    """Drift statistics of one feature."""

    feature: str
    verdict: str
    ks_statistic: float | None
    p_value: float | None
    p_value_bh: float | None
    wasserstein_std: float | None
    psi: float | None
    mean_shift_std: float | None
    reference_mean: float
    field_mean: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self.__dict__)


@dataclass
class FeatureDriftReport:
    """Result of :meth:`FeatureDriftDetector.test`."""

    verdict: str
    n_reference: int
    n_reference_stored: int
    n_field: int
    features: list[FeatureDrift]
    criteria: dict[str, Any] = field(default_factory=dict)

    @property
    def drifted(self) -> list[str]:
        """Drifted features, largest Wasserstein effect first."""
        hits = [f for f in self.features if f.verdict == DRIFT]
        return [f.feature for f in sorted(hits, key=lambda f: -(f.wasserstein_std or 0.0))]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "check": "feature_drift",
                "verdict": self.verdict,
                "n_reference": self.n_reference,
                "n_reference_stored": self.n_reference_stored,
                "n_field": self.n_field,
                "drifted_features": self.drifted,
                "criteria": self.criteria,
                "features": [f.to_dict() for f in self.features],
            }
        )


def _fmt_p(p: float) -> str:
    return f"{p:.2g}"


class FeatureDriftDetector(BaseEstimator):
    """Per-feature two-sample drift test with an effect-size gate (see module doc).

    Parameters
    ----------
    alpha: false discovery rate for the BH-corrected KS p-values.
    min_effect: Wasserstein distance, in reference stds, that counts as practical.
    min_psi: PSI that counts as practical on its own.
    min_field_samples: below this many field clips the verdict is "insufficient data".
    max_reference_samples: reference rows kept (seeded subsample) for KS/Wasserstein.
    n_psi_bins: reference-quantile bins for PSI.
    psi_epsilon: floor on bin fractions inside the PSI logarithm.
    random_state: seed of the reference subsample.
    """

    def __init__(
        self,
        alpha: float = 0.05,
        min_effect: float = 0.1,
        min_psi: float = 0.25,
        min_field_samples: int = 20,
        max_reference_samples: int = 2000,
        n_psi_bins: int = 10,
        psi_epsilon: float = 1e-4,
        random_state: int = 0,
    ) -> None:
        self.alpha = alpha
        self.min_effect = min_effect
        self.min_psi = min_psi
        self.min_field_samples = min_field_samples
        self.max_reference_samples = max_reference_samples
        self.n_psi_bins = n_psi_bins
        self.psi_epsilon = psi_epsilon
        self.random_state = random_state

    def fit(
        self, reference_features: Any, feature_names: Sequence[str] | None = None
    ) -> FeatureDriftDetector:
        """Summarise the training-side features ``(n, d)``; names default to DataFrame columns."""
        if feature_names is None and hasattr(reference_features, "columns"):
            feature_names = [str(c) for c in reference_features.columns]
        x = check_array(reference_features, dtype=np.float64, ensure_min_samples=2)
        n, d = x.shape
        names = [f"x{j}" for j in range(d)] if feature_names is None else [str(s) for s in feature_names]
        if len(names) != d:
            raise ValueError(f"{len(names)} feature names for {d} columns")
        self.feature_names_in_ = np.asarray(names, dtype=object)
        self.n_features_in_ = d
        self.n_reference_ = n
        self.mean_ = x.mean(axis=0)
        self.std_ = x.std(axis=0, ddof=1)
        # A constant reference feature has std 0: any change is then real, so
        # use a tiny floor (relative to its magnitude) instead of dividing by 0.
        self.scale_ = np.maximum(self.std_, 1e-6 * np.maximum(np.abs(self.mean_), 1.0))
        self.psi_edges_ = [_psi_edges(x[:, j], self.n_psi_bins) for j in range(d)]
        self.psi_reference_fractions_ = [
            _bin_fractions(x[:, j], e) for j, e in enumerate(self.psi_edges_)
        ]
        rng = np.random.default_rng(self.random_state)
        keep = n if n <= self.max_reference_samples else self.max_reference_samples
        rows = np.sort(rng.choice(n, size=keep, replace=False)) if keep < n else np.arange(n)
        self.reference_ = x[rows].astype(np.float32)
        return self

    def test(self, field_features: Any) -> FeatureDriftReport:
        """Compare a field sample ``(m, d)`` with the reference, feature by feature."""
        check_is_fitted(self, "reference_")
        f = check_array(field_features, dtype=np.float64, ensure_min_samples=1)
        if f.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_} features, got {f.shape[1]}")
        f = f.astype(np.float32).astype(np.float64)  # same precision as the stored reference
        ref = self.reference_.astype(np.float64)
        m = f.shape[0]
        criteria = {
            "alpha": self.alpha,
            "p_value_correction": "benjamini-hochberg across features",
            "test": "two-sample Kolmogorov-Smirnov (scipy.stats.ks_2samp)",
            "min_effect_wasserstein_std": self.min_effect,
            "min_psi": self.min_psi,
            "min_field_samples": self.min_field_samples,
            "rule": "drift if p_bh < alpha and (wasserstein_std >= min_effect or psi >= min_psi)",
        }
        names = [str(s) for s in self.feature_names_in_]
        if m < self.min_field_samples:
            feats = [
                FeatureDrift(
                    name, INSUFFICIENT, None, None, None, None, None, None,
                    float(self.mean_[j]), float(f[:, j].mean()),
                    f"{name}: only {m} field clips (< {self.min_field_samples}); not tested",
                )
                for j, name in enumerate(names)
            ]
            return FeatureDriftReport(INSUFFICIENT, self.n_reference_, len(ref), m, feats, criteria)

        ks = [ks_2samp(ref[:, j], f[:, j]) for j in range(self.n_features_in_)]
        p_raw = np.array([float(r.pvalue) for r in ks])
        p_bh = false_discovery_control(p_raw, method="bh")
        feats = []
        for j, name in enumerate(names):
            w = wasserstein_distance(ref[:, j], f[:, j]) / self.scale_[j]
            psi = population_stability_index(
                self.psi_reference_fractions_[j],
                _bin_fractions(f[:, j], self.psi_edges_[j]),
                self.psi_epsilon,
            )
            shift = (f[:, j].mean() - self.mean_[j]) / self.scale_[j]
            significant = p_bh[j] < self.alpha
            practical = w >= self.min_effect or psi >= self.min_psi
            verdict = DRIFT if significant and practical else NEGLIGIBLE if significant else NO_DRIFT
            direction = "higher" if shift > 0 else "lower"
            detail = f"KS p_bh={_fmt_p(p_bh[j])}, Wasserstein={w:.3g} std, PSI={psi:.3g}"
            if verdict == DRIFT:
                msg = f"{name}: field differs from training (mean {abs(shift):.2g} std {direction}; {detail})"
            elif verdict == NEGLIGIBLE:
                msg = f"{name}: statistically detectable but too small to matter ({detail})"
            else:
                msg = f"{name}: no evidence of a difference ({detail})"
            feats.append(
                FeatureDrift(
                    name, verdict, float(ks[j].statistic), float(p_raw[j]), float(p_bh[j]),
                    float(w), float(psi), float(shift), float(self.mean_[j]),
                    float(f[:, j].mean()), msg,
                )
            )
        verdict = DRIFT if any(x.verdict == DRIFT for x in feats) else NO_DRIFT
        return FeatureDriftReport(verdict, self.n_reference_, len(ref), m, feats, criteria)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (reference rows as base64 float32)."""
        check_is_fitted(self, "reference_")
        return {
            "type": "FeatureDriftDetector",
            "format_version": FORMAT_VERSION,
            "params": to_jsonable(self.get_params()),
            "feature_names": [str(s) for s in self.feature_names_in_],
            "n_reference": int(self.n_reference_),
            "mean": [float(v) for v in self.mean_],
            "std": [float(v) for v in self.std_],
            "scale": [float(v) for v in self.scale_],
            "psi_edges": [[float(v) for v in e] for e in self.psi_edges_],
            "psi_reference_fractions": [[float(v) for v in r] for r in self.psi_reference_fractions_],
            "reference": encode_array(self.reference_, "float32"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureDriftDetector:
        if data.get("type") != "FeatureDriftDetector":
            raise ValueError("not a FeatureDriftDetector state")
        obj = cls(**data["params"])
        obj.feature_names_in_ = np.asarray(data["feature_names"], dtype=object)
        obj.n_features_in_ = len(data["feature_names"])
        obj.n_reference_ = int(data["n_reference"])
        obj.mean_ = np.asarray(data["mean"], dtype=np.float64)
        obj.std_ = np.asarray(data["std"], dtype=np.float64)
        obj.scale_ = np.asarray(data["scale"], dtype=np.float64)
        obj.psi_edges_ = [np.asarray(e, dtype=np.float64) for e in data["psi_edges"]]
        obj.psi_reference_fractions_ = [
            np.asarray(r, dtype=np.float64) for r in data["psi_reference_fractions"]
        ]
        obj.reference_ = decode_array(data["reference"]).astype(np.float32)
        return obj


# --------------------------------------------------------------------------- #
# embedding drift: kernel two-sample test
# --------------------------------------------------------------------------- #
def _median_gamma(z: np.ndarray) -> tuple[float, float]:
    """RBF ``gamma = 1 / (2 sigma^2)`` with sigma = median pairwise distance (Gretton et al. 2012)."""
    d2 = euclidean_distances(z, z, squared=True)
    off = d2[np.triu_indices_from(d2, k=1)]
    med = float(np.median(off)) if off.size else 0.0
    if med <= 0:
        med = 1.0
    return 1.0 / (2.0 * med), float(np.sqrt(med))


def _mmd2_from_kernel(k0: np.ndarray, row_sums: np.ndarray, ix: np.ndarray, n: int, m: int) -> np.ndarray:
    """Unbiased MMD^2 for each column of the 0/1 membership matrix ``ix`` (X members).

    ``k0`` is the pooled kernel matrix with zero diagonal, so ``ix' k0 ix``
    sums ``k(x_i, x_j)`` over ``i != j``; one GEMM serves all permutations.
    """
    a = k0 @ ix
    iy = 1.0 - ix
    b = row_sums[:, None] - a  # k0 @ iy
    sxx = np.einsum("ij,ij->j", ix, a)
    syy = np.einsum("ij,ij->j", iy, b)
    sxy = np.einsum("ij,ij->j", ix, b)
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (n * m)


def mmd2_unbiased(
    x: np.ndarray,
    y: np.ndarray,
    *,
    n_permutations: int = 500,
    random_state: int = 0,
    gamma: float | None = None,
) -> dict[str, float]:
    """Unbiased MMD^2 with an RBF kernel and a permutation p-value (Gretton et al., JMLR 2012).

    ``MMD^2_u = mean_{i!=j} k(x_i,x_j) + mean_{i!=j} k(y_i,y_j) - 2 mean k(x_i,y_j)``;
    the bandwidth is the median pairwise distance of the pooled sample (a
    permutation-invariant choice, so the test stays exact). ``p = (1 + #{perm
    >= observed}) / (1 + n_permutations)``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError("need at least two samples on each side")
    z = np.vstack([x, y])
    if gamma is None:
        gamma, sigma = _median_gamma(z)
    else:
        sigma = float(np.sqrt(1.0 / (2.0 * gamma)))
    k0 = np.exp(-gamma * euclidean_distances(z, z, squared=True))
    np.fill_diagonal(k0, 0.0)
    row_sums = k0.sum(axis=1)
    observed = np.zeros((n + m, 1))
    observed[:n] = 1.0
    stat = float(_mmd2_from_kernel(k0, row_sums, observed, n, m)[0])
    rng = np.random.default_rng(random_state)
    exceed = 0
    for start in range(0, n_permutations, 256):
        p = min(256, n_permutations - start)
        ix = np.zeros((n + m, p))
        for c in range(p):
            ix[rng.permutation(n + m)[:n], c] = 1.0
        exceed += int(np.sum(_mmd2_from_kernel(k0, row_sums, ix, n, m) >= stat - 1e-12))
    return {
        "mmd2": stat,
        "p_value": (1.0 + exceed) / (1.0 + n_permutations),
        "bandwidth": sigma,
        "gamma": float(gamma),
        "n_permutations": int(n_permutations),
    }


@dataclass
class EmbeddingDriftReport:
    """Result of :meth:`EmbeddingDriftDetector.test`."""

    verdict: str
    mmd2: float | None
    p_value: float | None
    bandwidth: float | None
    n_reference_used: int
    n_field: int
    n_field_used: int
    n_permutations: int
    message: str
    criteria: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = to_jsonable(self.__dict__)
        out["check"] = "embedding_drift"
        return out


class EmbeddingDriftDetector(BaseEstimator):
    """MMD^2 permutation test between reference and field embeddings.

    Both sides are subsampled (seeded) to at most ``max_reference_samples`` /
    ``max_field_samples`` rows. Besides bounding cost (a (n+m)^2 kernel) this
    caps the test's power, so a huge field set does not turn a negligible
    difference into a "drift" (the sample-size awareness of this check);
    ``min_mmd2`` adds an explicit effect-size floor if wanted (default 0).
    The stored reference is rounded to float16 at fit time, so a detector
    restored from JSON gives bit-identical results.
    """

    def __init__(
        self,
        alpha: float = 0.05,
        n_permutations: int = 500,
        max_reference_samples: int = 500,
        max_field_samples: int = 1000,
        min_field_samples: int = 20,
        min_mmd2: float = 0.0,
        random_state: int = 0,
    ) -> None:
        self.alpha = alpha
        self.n_permutations = n_permutations
        self.max_reference_samples = max_reference_samples
        self.max_field_samples = max_field_samples
        self.min_field_samples = min_field_samples
        self.min_mmd2 = min_mmd2
        self.random_state = random_state

    def fit(self, reference_embeddings: Any, y: Any = None) -> EmbeddingDriftDetector:
        e = check_array(reference_embeddings, dtype=np.float64, ensure_min_samples=2)
        self.n_reference_ = int(e.shape[0])
        self.n_features_in_ = int(e.shape[1])
        rng = np.random.default_rng(self.random_state)
        if e.shape[0] > self.max_reference_samples:
            e = e[np.sort(rng.choice(e.shape[0], self.max_reference_samples, replace=False))]
        self.reference_ = e.astype(np.float16).astype(np.float32)
        return self

    def test(self, field_embeddings: Any) -> EmbeddingDriftReport:
        check_is_fitted(self, "reference_")
        f = check_array(field_embeddings, dtype=np.float64, ensure_min_samples=1)
        if f.shape[1] != self.n_features_in_:
            raise ValueError(f"expected {self.n_features_in_}-d embeddings, got {f.shape[1]}")
        m = f.shape[0]
        criteria = {
            "alpha": self.alpha,
            "test": "unbiased MMD^2, RBF kernel, median-heuristic bandwidth, permutation p-value",
            "min_mmd2": self.min_mmd2,
            "min_field_samples": self.min_field_samples,
            "max_reference_samples": self.max_reference_samples,
            "max_field_samples": self.max_field_samples,
        }
        n_ref = len(self.reference_)
        if m < self.min_field_samples:
            return EmbeddingDriftReport(
                INSUFFICIENT, None, None, None, n_ref, m, m, 0,
                f"only {m} field clips (< {self.min_field_samples}); not tested", criteria,
            )
        rng = np.random.default_rng(self.random_state + 1)
        if m > self.max_field_samples:
            f = f[np.sort(rng.choice(m, self.max_field_samples, replace=False))]
        res = mmd2_unbiased(
            self.reference_, f, n_permutations=self.n_permutations, random_state=self.random_state
        )
        significant = res["p_value"] < self.alpha
        verdict = (
            DRIFT if significant and res["mmd2"] >= self.min_mmd2 else NEGLIGIBLE if significant else NO_DRIFT
        )
        msg = {
            DRIFT: "field embeddings differ from the training embeddings",
            NEGLIGIBLE: "embedding difference detectable but below min_mmd2",
            NO_DRIFT: "no evidence that field embeddings differ from training",
        }[verdict]
        return EmbeddingDriftReport(
            verdict, res["mmd2"], res["p_value"], res["bandwidth"], n_ref, m, len(f),
            res["n_permutations"], f"{msg} (MMD^2={res['mmd2']:.3g}, p={_fmt_p(res['p_value'])})",
            criteria,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state (reference subsample as base64 float16)."""
        check_is_fitted(self, "reference_")
        return {
            "type": "EmbeddingDriftDetector",
            "format_version": FORMAT_VERSION,
            "params": to_jsonable(self.get_params()),
            "n_reference": self.n_reference_,
            "n_features": self.n_features_in_,
            "reference": encode_array(self.reference_, "float16"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmbeddingDriftDetector:
        if data.get("type") != "EmbeddingDriftDetector":
            raise ValueError("not an EmbeddingDriftDetector state")
        obj = cls(**data["params"])
        obj.n_reference_ = int(data["n_reference"])
        obj.n_features_in_ = int(data["n_features"])
        obj.reference_ = decode_array(data["reference"]).astype(np.float32)
        return obj


# --------------------------------------------------------------------------- #
# prediction / confidence / OOD-rate shift
# --------------------------------------------------------------------------- #
def prediction_counts(predictions: Any, n_classes: int) -> np.ndarray:
    """Counts of predicted class indices, length ``n_classes``."""
    return np.bincount(np.asarray(predictions, dtype=int), minlength=n_classes)[:n_classes]


def label_shift(
    reference_pred_counts: Any,
    field_pred_counts: Any,
    *,
    class_names: Sequence[str] | None = None,
    alpha: float = 0.05,
    min_tvd: float = 0.1,
    min_field_samples: int = 20,
    top_k: int = 5,
) -> dict[str, Any]:
    """Has the mix of PREDICTED classes changed? Chi-square test + total variation distance.

    ``TVD = 0.5 * sum_c |f_c - r_c|`` is the share of field predictions that
    would have to change class to match the reference mix; ``min_tvd = 0.1``
    (10 % of clips) is the practical floor. The chi-square test of
    homogeneity (``scipy.stats.chi2_contingency`` on the 2 x K table, classes
    absent on both sides dropped) supplies the evidence; it is approximate
    when expected counts are < 5. TVD is biased upward for small field sets
    (tens of classes, hundreds of clips), hence the test gate.
    """
    r = np.asarray(reference_pred_counts, dtype=np.float64)
    f = np.asarray(field_pred_counts, dtype=np.float64)
    if r.shape != f.shape or r.ndim != 1:
        raise ValueError("count vectors must be 1-D and of equal length")
    names = [str(i) for i in range(len(r))] if class_names is None else [str(c) for c in class_names]
    n_f, n_r = int(f.sum()), int(r.sum())
    base = {
        "check": "label_shift",
        "n_reference": n_r,
        "n_field": n_f,
        "criteria": {"alpha": alpha, "min_tvd": min_tvd, "min_field_samples": min_field_samples,
                     "rule": "shift if chi-square p < alpha and tvd >= min_tvd"},
    }
    if n_f < min_field_samples or n_r == 0:
        return {**base, "verdict": INSUFFICIENT, "tvd": None, "chi2": None, "dof": None,
                "p_value": None, "largest_changes": [],
                "message": f"only {n_f} field predictions (< {min_field_samples}); not tested"}
    rp, fp = r / n_r, f / n_f
    tvd = 0.5 * float(np.abs(fp - rp).sum())
    keep = (r + f) > 0
    if keep.sum() >= 2:
        chi2, p, dof, _ = chi2_contingency(np.vstack([r[keep], f[keep]]))
    else:
        chi2, p, dof = 0.0, 1.0, 0
    order = np.argsort(-np.abs(fp - rp), kind="stable")[:top_k]
    changes = [
        {"class": names[i], "reference_share": float(rp[i]), "field_share": float(fp[i])}
        for i in order if fp[i] != rp[i]
    ]
    significant = p < alpha
    verdict = DRIFT if significant and tvd >= min_tvd else NEGLIGIBLE if significant else NO_DRIFT
    return {**base, "verdict": verdict, "tvd": tvd, "chi2": float(chi2), "dof": int(dof),
            "p_value": float(p), "largest_changes": changes,
            "message": f"predicted-class mix: TVD={tvd:.3g}, chi-square p={_fmt_p(float(p))}"}


def confidence_shift(
    reference_confidence: Any,
    field_confidence: Any,
    *,
    name: str = "confidence",
    **detector_params: Any,
) -> dict[str, Any]:
    """Compare a 1-D per-clip quantity (max softmax, energy score, ...) train vs field.

    Same rule as :class:`FeatureDriftDetector` on a single feature (KS +
    Wasserstein/std >= 0.1 or PSI >= 0.25); ``mean_shift_std`` < 0 for max
    softmax means the model is less sure of itself in the field.
    """
    ref = np.asarray(reference_confidence, dtype=np.float64).reshape(-1, 1)
    fld = np.asarray(field_confidence, dtype=np.float64).reshape(-1, 1)
    det = FeatureDriftDetector(**detector_params).fit(ref, feature_names=[name])
    rep = det.test(fld)
    out = rep.features[0].to_dict()
    out.update({"check": f"{name}_shift", "n_reference": rep.n_reference, "n_field": rep.n_field,
                "criteria": to_jsonable(rep.criteria)})
    return out


def ood_rate_shift(
    n_flagged: int,
    n_field: int,
    *,
    expected_rate: float = 0.05,
    alpha: float = 0.05,
    min_excess: float = 0.05,
    min_field_samples: int = 20,
) -> dict[str, Any]:
    """Are more field clips flagged OOD than the detector's built-in false-alarm rate?

    A detector fitted at TPR 95% flags ~5% of in-distribution clips
    (``expected_rate = 1 - tpr``). One-sided exact binomial test
    (``scipy.stats.binomtest``) plus a practical floor: the observed rate must
    exceed the expected one by ``min_excess = 0.05`` (i.e. at least double at
    TPR 95%). The 95% Wilson interval of the observed rate is reported.
    """
    base = {
        "check": "ood_rate",
        "n_field": int(n_field),
        "n_flagged": int(n_flagged),
        "expected_rate": float(expected_rate),
        "criteria": {"alpha": alpha, "min_excess": min_excess, "min_field_samples": min_field_samples,
                     "rule": "shift if binomial p < alpha and rate - expected >= min_excess"},
    }
    if n_field < min_field_samples:
        rate_small = json_float(n_flagged / n_field) if n_field else None
        return {**base, "verdict": INSUFFICIENT, "observed_rate": rate_small, "p_value": None, "ci95": None,
                "message": f"only {n_field} field clips (< {min_field_samples}); not tested"}
    res = binomtest(int(n_flagged), int(n_field), float(expected_rate), alternative="greater")
    # two-sided Wilson interval (the one-sided test's own interval is [low, 1])
    ci = binomtest(int(n_flagged), int(n_field)).proportion_ci(confidence_level=0.95, method="wilson")
    rate = n_flagged / n_field
    significant = res.pvalue < alpha
    practical = rate - expected_rate >= min_excess
    verdict = DRIFT if significant and practical else NEGLIGIBLE if significant else NO_DRIFT
    return {**base, "verdict": verdict, "observed_rate": float(rate), "p_value": float(res.pvalue),
            "ci95": [float(ci.low), float(ci.high)],
            "message": f"{rate:.1%} of field clips flagged OOD (expected {expected_rate:.1%}, "
                       f"binomial p={_fmt_p(float(res.pvalue))})"}


def overall_verdict(components: Mapping[str, Any]) -> dict[str, Any]:
    """Combine named check results (dicts or objects with ``to_dict``) into one verdict.

    "drift" if any check says drift; "insufficient data" if every check does;
    otherwise "no drift". Checks reporting "negligible" are listed but do not
    raise the alarm. ``reasons`` holds the messages of the drifting checks.
    """
    parts = {
        name: (c.to_dict() if hasattr(c, "to_dict") else dict(c)) for name, c in components.items()
    }
    if not parts:
        raise ValueError("no components to combine")
    verdicts = {name: str(p.get("verdict")) for name, p in parts.items()}
    drifting = [n for n, v in verdicts.items() if v == DRIFT]
    if drifting:
        verdict = DRIFT
    elif all(v == INSUFFICIENT for v in verdicts.values()):
        verdict = INSUFFICIENT
    else:
        verdict = NO_DRIFT
    reasons = []
    for n in drifting:
        p = parts[n]
        if "drifted_features" in p:
            reasons.append(f"{n}: drift in {', '.join(p['drifted_features'][:5])}"
                           + (" ..." if len(p["drifted_features"]) > 5 else ""))
        else:
            reasons.append(f"{n}: {p.get('message', 'drift')}")
    return {
        "verdict": verdict,
        "components": verdicts,
        "drifting_checks": drifting,
        "negligible_checks": [n for n, v in verdicts.items() if v == NEGLIGIBLE],
        "insufficient_checks": [n for n, v in verdicts.items() if v == INSUFFICIENT],
        "reasons": reasons,
    }
