"""The model bundle and its whole lifecycle: a folder with ``model.safetensors`` and ``bundle.json``.

It carries everything that must travel with the weights so that every consumer (training,
serving, diagnostics, dashboard) agrees: classes, front-end config, fitted temperature, OOD
score and threshold, drift reference statistics, metrics and provenance. Loading never
unpickles anything: safetensors for tensors, JSON for the rest.

This module owns every step of a bundle's life, so no other package writes bundle files:

- locating one (:func:`resolve_bundle_dir`: ``--bundle``, ``$TYMPAN_BUNDLE``, the shipped one);
- saving atomically (:func:`save_bundle`; the folder at the path is always a complete bundle,
  old or new, see :func:`tympan.io.replace_dir`), optionally keeping the folder's other files
  and writing held-out predictions inside the same switch;
- held-out predictions (``heldout.safetensors`` + ``heldout.json``): the logits of a fold the
  model never trained on, stamped with the :func:`weights_fingerprint` of the weights that
  produced them, so calibration can refuse logits of other weights (:func:`check_heldout`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from safetensors.torch import load_file, save_file
from torch import nn

from tympan.errors import BundleError
from tympan.features import FrontendConfig, LogMel
from tympan.io import atomic_dir, recover_dir
from tympan.models import UnknownArchitectureError, build_model

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "bundle.json"
HELDOUT_TENSORS = "heldout.safetensors"
HELDOUT_META = "heldout.json"
ARRAYS_FILE = "trust.safetensors"
BUNDLE_ENV = "TYMPAN_BUNDLE"


class StaleHeldoutError(BundleError):
    """Held-out predictions that other weights produced (or of unknown origin)."""


@dataclass
class Bundle:
    """A trained model and everything needed to use and to distrust it."""

    model: nn.Module
    arch: str
    arch_params: dict[str, Any]
    classes: list[str]
    frontend: FrontendConfig
    temperature: float = 1.0
    #: ``{"score": "energy", "temperature": 1.0, "threshold": float | None, "fitted_on": str}``
    ood: dict[str, Any] = field(default_factory=lambda: {"score": "energy", "temperature": 1.0, "threshold": None})
    #: drift reference statistics (acoustic features and embeddings), see ``tympan.diagnostics``
    reference: dict[str, Any] = field(default_factory=dict)
    #: background detector (``tympan.stats.background.BackgroundDetector.to_dict``), or empty
    background: dict[str, Any] = field(default_factory=dict)
    #: fitted arrays too big for JSON (e.g. ``ood_bank``: training embeddings for the k-NN OOD
    #: score), stored in ``trust.safetensors``
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    #: free-form extras (calibration details, held-out predictions summary, ...)
    extra: dict[str, Any] = field(default_factory=dict)
    name: str = "tympan-model"

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def frontend_module(self) -> LogMel:
        """The exact front end this model was trained with."""
        return LogMel(self.frontend)

    def metadata(self) -> dict[str, Any]:
        """The JSON half of the bundle."""
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "architecture": {"name": self.arch, "params": self.arch_params},
            "classes": list(self.classes),
            "frontend": self.frontend.to_dict(),
            "temperature": float(self.temperature),
            "ood": self.ood,
            "background": self.background,
            "reference": self.reference,
            "metrics": self.metrics,
            "provenance": self.provenance,
            "extra": self.extra,
        }

    def save(self, directory: str | Path, *, keep_files: bool = False,
             heldout: HeldoutPredictions | None = None) -> Path:
        """Write the bundle atomically; see :func:`save_bundle`."""
        return save_bundle(self, directory, keep_files=keep_files, heldout=heldout)

    @property
    def weights_fingerprint(self) -> str:
        return weights_fingerprint(self.model)

    def replace(self, **changes: Any) -> Bundle:
        """A copy with some fields changed (the model is deep-copied only if not given)."""
        fields = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k not in changes}
        fields.update(changes)
        return Bundle(**fields)


def weights_fingerprint(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 (first 20 hex digits) of every tensor's name, dtype, shape and bytes, in name order.

    Independent of file layout and safetensors metadata: the same weights give the same print
    however they were saved.
    """
    state = model.state_dict() if isinstance(model, nn.Module) else model
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:20]


def save_bundle(bundle: Bundle, directory: str | Path, *, keep_files: bool = False,
                heldout: HeldoutPredictions | None = None) -> Path:
    """Write ``bundle`` to ``directory`` in one atomic switch.

    The new folder is assembled beside the old one and swapped in (:func:`tympan.io.atomic_dir`):
    a crash at any point leaves the complete previous bundle (or none, on a first save).
    ``keep_files`` copies the existing folder's other files (e.g. ``heldout.*``) into the new
    one; ``heldout`` writes held-out predictions into it (they must come from these weights).
    """
    directory = Path(directory)
    meta = bundle.metadata()
    text = json.dumps(meta, indent=2, allow_nan=False)  # fail before touching the disk
    state = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    if heldout is not None:
        check_heldout(heldout, bundle)
    with atomic_dir(directory) as tmp:
        if keep_files and directory.is_dir():
            for item in directory.iterdir():
                if item.name in (META_FILE, WEIGHTS_FILE, ARRAYS_FILE) or item.name.startswith("."):
                    continue
                if heldout is not None and item.name in (HELDOUT_TENSORS, HELDOUT_META):
                    continue
                (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "arch": bundle.arch})
        (tmp / ARRAYS_FILE).unlink(missing_ok=True)  # a kept copy belongs to the old bundle
        if bundle.arrays:
            from safetensors.numpy import save_file as save_np

            save_np({k: np.ascontiguousarray(v) for k, v in bundle.arrays.items()}, str(tmp / ARRAYS_FILE))
        (tmp / META_FILE).write_text(text + "\n", encoding="utf-8")
        if heldout is not None:
            heldout.write(tmp)
    return directory


# --------------------------------------------------------------------------- held-out predictions
@dataclass
class HeldoutPredictions:
    """Logits of clips the model never trained on, and which weights produced them."""

    logits: np.ndarray  # (n, K) float32
    labels: np.ndarray  # (n,) int64
    clip_ids: list[str]
    classes: list[str] | None = None
    #: :func:`weights_fingerprint` of the producing weights; None in files written before it existed
    weights_sha256: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def __post_init__(self) -> None:
        self.logits = np.asarray(self.logits, np.float32)
        self.labels = np.asarray(self.labels, np.int64)
        self.clip_ids = [str(c) for c in self.clip_ids]
        if self.logits.ndim != 2 or len(self.labels) != len(self.logits) or len(self.logits) == 0:
            raise BundleError(f"{self.path or 'held-out predictions'}: logits {self.logits.shape} and "
                              f"labels {self.labels.shape} do not match")
        if len(self.clip_ids) != len(self.labels):
            raise BundleError(f"{self.path or 'held-out predictions'}: {len(self.clip_ids)} clip ids for "
                              f"{len(self.labels)} held-out clips")

    @property
    def fold(self) -> Any:
        return self.meta.get("fold")

    def write(self, directory: str | Path) -> None:
        """``heldout.safetensors`` then ``heldout.json`` (the json last: it marks completion)."""
        from safetensors.numpy import save_file as save_np

        from tympan.io import atomic_path, write_json_atomic

        directory = Path(directory)
        with atomic_path(directory / HELDOUT_TENSORS) as tmp:
            save_np({"logits": np.ascontiguousarray(self.logits), "labels": np.ascontiguousarray(self.labels)},
                    str(tmp))
        meta = {**self.meta, "clip_ids": self.clip_ids, "n": len(self.clip_ids),
                "weights_sha256": self.weights_sha256}
        if self.classes is not None:
            meta["classes"] = list(self.classes)
        write_json_atomic(directory / HELDOUT_META, meta)


def read_heldout(path: str | Path) -> HeldoutPredictions:
    """Held-out predictions from a folder with ``heldout.safetensors`` + ``heldout.json``, or either file."""
    from safetensors.numpy import load_file as load_np

    p = Path(path)
    if p.is_dir():
        tensors, meta_path = p / HELDOUT_TENSORS, p / HELDOUT_META
    elif p.suffix == ".json":
        tensors, meta_path = p.with_suffix(".safetensors"), p
    else:
        tensors, meta_path = p, p.with_suffix(".json")
    if not tensors.is_file():
        raise BundleError(f"{tensors}: no held-out predictions (heldout.safetensors is written by "
                          "`tympan train`; pass --heldout FILE)")
    try:
        arrays = load_np(str(tensors))
        logits, labels = arrays["logits"], arrays["labels"]
    except Exception as exc:  # safetensors raises its own types
        raise BundleError(f"{tensors}: cannot read held-out logits/labels ({exc})") from None
    meta: dict[str, Any] = {}
    if meta_path.is_file():
        meta = parse_json_strict(meta_path)
        if not isinstance(meta, dict):
            raise BundleError(f"{meta_path}: not held-out metadata (a JSON object is expected)")
    ids = meta.pop("clip_ids", None) or [str(i) for i in range(len(labels))]
    classes = meta.pop("classes", None)
    fp = meta.pop("weights_sha256", None)
    meta.pop("n", None)
    return HeldoutPredictions(logits, labels, ids, classes, fp, meta, str(tensors))


def check_heldout(heldout: HeldoutPredictions, bundle: Bundle) -> None:
    """Raise :class:`StaleHeldoutError` unless ``bundle``'s weights produced these logits."""
    if heldout.classes and list(heldout.classes) != list(bundle.classes):
        raise BundleError(f"{heldout.path}: held-out classes differ from the bundle's classes")
    if heldout.logits.shape[1] != bundle.n_classes:
        raise BundleError(f"{heldout.path}: {heldout.logits.shape[1]} logit columns for "
                          f"{bundle.n_classes} classes")
    want = weights_fingerprint(bundle.model)
    if heldout.weights_sha256 is None:
        raise StaleHeldoutError(f"{heldout.path}: held-out predictions do not say which weights produced "
                                f"them (no weights_sha256); they cannot be trusted for bundle {bundle.name}")
    if heldout.weights_sha256 != want:
        raise StaleHeldoutError(f"{heldout.path}: held-out predictions come from other weights "
                                f"({heldout.weights_sha256}) than bundle {bundle.name} ({want})")


# --------------------------------------------------------------------------- locating bundles
def default_bundle_dir() -> Path:
    """The bundle shipped with tympan (``tympan/assets/default``)."""
    return Path(__file__).resolve().parent / "assets" / "default"


def resolve_bundle_dir(arg: str | Path | None = None) -> Path:
    """``--bundle``, else ``$TYMPAN_BUNDLE``, else the shipped bundle; fail with one clear line."""
    env = os.environ.get(BUNDLE_ENV)
    path = Path(arg) if arg else Path(env) if env else default_bundle_dir()
    recover_dir(path)
    if not path.is_dir():
        hint = "" if arg else f" (no --bundle given, ${BUNDLE_ENV} unset, and no shipped default bundle)"
        raise BundleError(f"{path}: no such bundle directory{hint}")
    if not (path / META_FILE).is_file():
        raise BundleError(f"{path}: not a model bundle ({META_FILE} is missing)")
    return path


#: a bundle.json larger than this is refused unread (the shipped one is under 1 MB)
MAX_META_BYTES = 64 << 20
#: weights files larger than this are refused before they are read
MAX_WEIGHTS_BYTES = 4 << 30
#: architecture parameters (widths, sizes) above this would build a model no weights file fits
MAX_ARCH_PARAM = 10_000

_Positive = Annotated[float, Field(gt=0, le=1e4, allow_inf_nan=False)]
_Finite = Annotated[float, Field(allow_inf_nan=False)]


class _OODMeta(BaseModel):
    """The parts of ``ood`` every prediction uses: a negative or NaN temperature would invert or void it."""

    model_config = ConfigDict(extra="allow")
    score: str = "energy"
    temperature: _Positive = 1.0
    threshold: _Finite | None = None


class _ArchMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    params: dict[str, Any] = {}

    @field_validator("params")
    @classmethod
    def _bounded(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k, x in v.items():
            if isinstance(x, bool) or x is None or isinstance(x, str):
                continue
            if not isinstance(x, int | float) or not math.isfinite(x) or abs(x) > MAX_ARCH_PARAM:
                raise ValueError(f"architecture parameter {k}={x!r:.40} is out of range (|x| <= {MAX_ARCH_PARAM})")
        return v


class BundleMeta(BaseModel):
    """``bundle.json`` as loading checks it: the fields that decide what a prediction says."""

    model_config = ConfigDict(extra="allow")
    format_version: int
    name: Annotated[str, StringConstraints(max_length=200)] = ""
    architecture: _ArchMeta
    classes: Annotated[list[Annotated[str, StringConstraints(min_length=1, max_length=200)]],
                       Field(min_length=1, max_length=10_000)]
    frontend: dict[str, Any]
    temperature: _Positive = 1.0
    ood: _OODMeta | None = None

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("class names must be unique")
        return v


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"number {text[:20]} is out of range")
    return x


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json_strict(path: Path, max_bytes: int = MAX_META_BYTES) -> Any:
    """JSON from ``path`` without NaN/Infinity or overflowing numbers, refusing files over ``max_bytes`` unread."""
    size = path.stat().st_size
    if size > max_bytes:
        raise BundleError(f"{path}: {size} bytes, more than a bundle file may hold ({max_bytes}); refused unread")
    try:
        return json.loads(path.read_bytes().decode("utf-8"), parse_float=_finite_float, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise BundleError(f"{path}: not valid JSON ({str(exc)[:200]})") from None


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """Read and check ``bundle.json`` without touching the weights."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    recover_dir(directory)  # a save killed mid-switch left the old folder aside
    if not directory.is_dir():
        raise BundleError(f"{directory}: no such bundle directory")
    if not meta_path.is_file():
        raise BundleError(f"{directory}: not a model bundle ({META_FILE} is missing)")
    _inside(directory, meta_path)
    meta = parse_json_strict(meta_path)
    if not isinstance(meta, dict):
        raise BundleError(f"{meta_path}: not a bundle description (a JSON object is expected)")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{meta_path}: bundle format version {version!r:.40} is not supported "
            f"(this tympan reads version {FORMAT_VERSION})"
        )
    for key in ("architecture", "classes", "frontend"):
        if key not in meta:
            raise BundleError(f"{meta_path}: required field {key!r} is missing")
    try:
        BundleMeta.model_validate(meta)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise BundleError(f"{meta_path}: {errs}") from None
    return meta


def _inside(directory: Path, path: Path) -> None:
    """A bundle's file must be a regular file of the bundle folder, not a link leading elsewhere."""
    if path.is_symlink() or not path.resolve().is_relative_to(directory.resolve()):
        raise BundleError(f"{path}: a bundle file must be a regular file inside the bundle folder, "
                          "not a link to another place")


def _weights_header(weights: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``name -> (dtype, shape)`` from the safetensors header only (bounded: no tensor is read)."""
    from safetensors import safe_open

    size = weights.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise BundleError(f"{weights}: {size} bytes of weights, more than {MAX_WEIGHTS_BYTES}; refused unread")
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            return {k: (str(f.get_slice(k).get_dtype()), tuple(f.get_slice(k).get_shape())) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types (a pickle is not safetensors)
        raise BundleError(f"{weights}: cannot read weights, not a safetensors file ({str(exc)[:200]})") from None


_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's values as NumPy (bfloat16, which NumPy lacks, widened to float32)."""
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def load_bundle(directory: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle, checking format version, every number that decides a prediction, the
    architecture and every weight's shape, dtype and finiteness, in bounded memory and time.

    The model is first built on PyTorch's ``meta`` device (no memory) and compared with the
    weights file's header, so absurd architecture parameters or tensors cost nothing.
    """
    directory = Path(directory)
    meta = read_metadata(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"{directory}: {WEIGHTS_FILE} is missing")
    arch = meta["architecture"]
    classes = list(meta["classes"])
    try:
        frontend = FrontendConfig.from_dict(meta["frontend"])
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{directory}: bad front-end config: {exc}") from None
    _inside(directory, weights)
    header = _weights_header(weights)
    try:
        with torch.device("meta"):
            skeleton = build_model(arch["name"], n_classes=len(classes), **arch.get("params", {}))
    except UnknownArchitectureError as exc:
        raise BundleError(f"{directory}: {exc}") from None
    except (TypeError, ValueError, RuntimeError) as exc:
        raise BundleError(f"{directory}: bad parameters for {arch['name']!r}: {str(exc)[:200]}") from None
    expected = skeleton.state_dict()
    check_state_dict(skeleton, {k: torch.empty(shape, device="meta") for k, (_, shape) in header.items()},
                     source=str(weights))
    wrong = [f"{k}: {dt}" for k, (dt, _) in header.items() if expected[k].is_floating_point() and dt not in _FLOAT_DTYPES]
    if wrong:
        raise BundleError(f"{weights}: floating-point weights stored as other types ({'; '.join(wrong[:5])})")
    if all(name in expected for name, _ in skeleton.named_buffers()):
        # every tensor comes from the file: materialise the skeleton instead of building (and
        # randomly initialising, ~0.3 s for mn04) a second model that load_state_dict overwrites
        model = skeleton.to_empty(device="cpu")
    else:  # a buffer the file does not hold keeps the value the architecture gives it
        model = build_model(arch["name"], n_classes=len(classes), **arch.get("params", {}))
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise BundleError(f"{weights}: cannot read weights ({exc})") from None
    # NumPy's check: torch's costs a thread-pool dispatch per tensor (hundreds of small ones)
    bad = [k for k, v in state.items() if v.is_floating_point() and not np.isfinite(_as_numpy(v)).all()]
    if bad:
        raise BundleError(f"{weights}: weights hold NaN or infinite values ({', '.join(bad[:5])})")
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    arrays: dict[str, np.ndarray] = {}
    if (directory / ARRAYS_FILE).is_file():
        from safetensors.numpy import load_file as load_np

        try:
            arrays = dict(load_np(str(directory / ARRAYS_FILE)))
        except Exception as exc:  # safetensors raises its own types
            raise BundleError(f"{directory / ARRAYS_FILE}: cannot read ({exc})") from None
        bad = [k for k, v in arrays.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
        if bad:
            raise BundleError(f"{directory / ARRAYS_FILE}: arrays hold NaN or infinite values ({', '.join(bad[:5])})")
    return Bundle(
        model=model,
        arch=arch["name"],
        arch_params=dict(arch.get("params", {})),
        classes=classes,
        frontend=frontend,
        temperature=float(meta.get("temperature", 1.0)),
        ood=dict(meta.get("ood") or {}),
        background=dict(meta.get("background") or {}),
        arrays=arrays,
        reference=dict(meta.get("reference") or {}),
        metrics=dict(meta.get("metrics") or {}),
        provenance=dict(meta.get("provenance") or {}),
        extra=dict(meta.get("extra") or {}),
        name=str(meta.get("name", directory.name)),
    )


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Raise :class:`BundleError` naming every missing, unexpected or mis-shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [
        f"{k}: expected {tuple(expected[k].shape)}, found {tuple(state[k].shape)}"
        for k in expected
        if k in state and tuple(expected[k].shape) != tuple(state[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes[:5]))
    if problems:
        raise BundleError(f"{source} does not fit the architecture: " + " | ".join(problems))
