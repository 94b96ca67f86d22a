"""The model bundle: a folder with ``model.safetensors`` and ``bundle.json``.

It carries everything that must travel with the weights so that every consumer (training,
serving, diagnostics, dashboard) agrees: classes, front-end config, fitted temperature, OOD
score and threshold, drift reference statistics, metrics and provenance. Loading never
unpickles anything: safetensors for tensors, JSON for the rest.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tympan.errors import BundleError
from tympan.features import FrontendConfig, LogMel
from tympan.io import atomic_dir
from tympan.models import UnknownArchitectureError, build_model

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "bundle.json"


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
            "reference": self.reference,
            "metrics": self.metrics,
            "provenance": self.provenance,
            "extra": self.extra,
        }

    def save(self, directory: str | Path) -> Path:
        """Write the bundle atomically (a crash leaves the previous bundle, or none)."""
        return save_bundle(self, directory)

    def replace(self, **changes: Any) -> Bundle:
        """A copy with some fields changed (the model is deep-copied only if not given)."""
        fields = {k: copy.deepcopy(v) for k, v in self.__dict__.items() if k not in changes}
        fields.update(changes)
        return Bundle(**fields)


def save_bundle(bundle: Bundle, directory: str | Path) -> Path:
    directory = Path(directory)
    meta = bundle.metadata()
    text = json.dumps(meta, indent=2, allow_nan=False)  # fail before touching the disk
    state = {k: v.detach().cpu().contiguous() for k, v in bundle.model.state_dict().items()}
    with atomic_dir(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "arch": bundle.arch})
        (tmp / META_FILE).write_text(text + "\n", encoding="utf-8")
    return directory


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """Read and check ``bundle.json`` without touching the weights."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not directory.is_dir():
        raise BundleError(f"{directory}: no such bundle directory")
    if not meta_path.is_file():
        raise BundleError(f"{directory}: not a model bundle ({META_FILE} is missing)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{meta_path}: not valid JSON ({exc})") from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{meta_path}: bundle format version {version!r} is not supported "
            f"(this tympan reads version {FORMAT_VERSION})"
        )
    for key in ("architecture", "classes", "frontend"):
        if key not in meta:
            raise BundleError(f"{meta_path}: required field {key!r} is missing")
    return meta


def load_bundle(directory: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load a bundle, checking format version, architecture and every weight's shape."""
    directory = Path(directory)
    meta = read_metadata(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"{directory}: {WEIGHTS_FILE} is missing")
    arch = meta["architecture"]
    classes = list(meta["classes"])
    try:
        model = build_model(arch["name"], n_classes=len(classes), **arch.get("params", {}))
    except UnknownArchitectureError as exc:
        raise BundleError(f"{directory}: {exc}") from None
    except TypeError as exc:
        raise BundleError(f"{directory}: bad parameters for {arch['name']!r}: {exc}") from None
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise BundleError(f"{weights}: cannot read weights ({exc})") from None
    check_state_dict(model, state, source=str(weights))
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    try:
        frontend = FrontendConfig.from_dict(meta["frontend"])
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{directory}: bad front-end config: {exc}") from None
    return Bundle(
        model=model,
        arch=arch["name"],
        arch_params=dict(arch.get("params", {})),
        classes=classes,
        frontend=frontend,
        temperature=float(meta.get("temperature", 1.0)),
        ood=dict(meta.get("ood") or {}),
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
