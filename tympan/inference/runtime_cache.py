"""The exported ONNX graph and the backend choice, kept so that a start does not redo them.

Exporting the model to ONNX and timing the backends takes seconds at every load; the result
depends only on the weights, the front end (the input shape), the backend asked for, the
threads, the machine and the library versions (torch, onnxruntime, onnx). :class:`RuntimeCache`
keeps ``<key>.onnx`` and ``<key>.json`` (:class:`~tympan.contracts.runtime.RuntimeEntry`) in
``.tympan-cache/`` inside the bundle folder when it is writable, else in
``$TYMPAN_CACHE_DIR/runtime``. The key names the weights, front end, backend and threads; the
entry stores the full identity and is rebuilt when any part of it differs (a library upgrade
replaces the entry instead of leaving a stale one beside it). Both files are written atomically,
the JSON last (it marks completion). On a hit the graph's sha256 is checked and its outputs on
the parity batch are compared with the stored eager outputs (:data:`~.backends.PARITY_ATOL`):
a corrupt or foreign entry is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from tympan.cache import runtime_cache_dir
from tympan.contracts.runtime import RuntimeEntry
from tympan.io import atomic_path, decode_array, encode_array, write_json_atomic

log = logging.getLogger("tympan.inference")

#: bump when the entry's meaning changes
ENTRY_FORMAT = 1
#: the cache folder inside a bundle directory (``save_bundle`` does not carry dot entries over)
BESIDE_BUNDLE = ".tympan-cache"


def library_version(name: str) -> str:
    """An installed distribution's version without importing it (``absent`` if not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def runtime_versions() -> dict[str, str]:
    """The library versions an exported graph and a timing depend on."""
    import torch

    return {"torch": torch.__version__, "onnxruntime": library_version("onnxruntime"),
            "onnx": library_version("onnx")}


def writable_folder(folder: Path) -> bool:
    """Whether ``folder`` exists (or can be made) and files can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def cache_folder(bundle_dir: Path | None) -> Path | None:
    """``<bundle>/.tympan-cache`` if writable, else ``$TYMPAN_CACHE_DIR/runtime``, else None."""
    candidates = ([bundle_dir / BESIDE_BUNDLE] if bundle_dir is not None and bundle_dir.is_dir() else [])
    candidates.append(runtime_cache_dir())
    return next((c for c in candidates if writable_folder(c)), None)


@dataclass
class CachedRun:
    """A usable entry: what was chosen, the ONNX graph (if kept) and the eager reference."""

    entry: RuntimeEntry
    onnx: bytes | None
    reference: tuple[np.ndarray, np.ndarray]


@dataclass
class RuntimeCache:
    """One model's entry: ``folder/<key>.onnx`` and ``folder/<key>.json``."""

    folder: Path
    identity: dict[str, str]

    @classmethod
    def for_model(cls, folder: Path, *, weights: str, frontend: str, backend: str, threads: int,
                  device: str) -> RuntimeCache:
        identity = {"weights": weights, "frontend": frontend, "backend": backend, "threads": str(threads),
                    "device": device, "machine": f"{platform.machine()} x{os.cpu_count()}", **runtime_versions()}
        return cls(folder, identity)

    @property
    def key(self) -> str:
        """The file stem: what names a model and a configuration (versions live in the entry)."""
        parts = [self.identity[k] for k in ("weights", "frontend", "backend", "threads", "device")]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]

    @property
    def json_path(self) -> Path:
        return self.folder / f"{self.key}.json"

    @property
    def onnx_path(self) -> Path:
        return self.folder / f"{self.key}.onnx"

    def load(self) -> tuple[CachedRun | None, str]:
        """The entry if present, complete and made by this identity; else None and why not."""
        if not self.json_path.is_file():
            return None, "miss"
        try:
            entry = RuntimeEntry.model_validate_json(self.json_path.read_bytes())
            stale = [f"{k} {entry.identity.get(k)} -> {v}" for k, v in self.identity.items()
                     if entry.identity.get(k) != v]
            if entry.format != ENTRY_FORMAT:
                stale.insert(0, f"format {entry.format} -> {ENTRY_FORMAT}")
            if stale:
                return None, "stale (" + ", ".join(stale) + ")"
            onnx = None
            if entry.onnx_sha256 is not None:
                onnx = self.onnx_path.read_bytes()
                if hashlib.sha256(onnx).hexdigest() != entry.onnx_sha256:
                    return None, f"corrupt ({self.onnx_path.name}: sha256 differs from the entry)"
            reference = (decode_array(entry.reference["embeddings"]), decode_array(entry.reference["logits"]))
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            return None, f"corrupt ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
        return CachedRun(entry, onnx, reference), "hit"

    def save(self, *, backend: str, ms_per_window: dict[str, float], max_abs_diff: dict[str, float],
             rejected: dict[str, str], onnx: bytes | None, reference: tuple[np.ndarray, np.ndarray]) -> bool:
        """Write the entry (graph first, JSON last); False, with a log line, if the disk refuses."""
        entry = RuntimeEntry(
            format=ENTRY_FORMAT, identity=self.identity, backend=backend, ms_per_window=ms_per_window,
            max_abs_diff=max_abs_diff, rejected=rejected,
            onnx_sha256=hashlib.sha256(onnx).hexdigest() if onnx is not None else None,
            reference={"embeddings": encode_array(reference[0]), "logits": encode_array(reference[1])},
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        try:
            if onnx is not None:
                with atomic_path(self.onnx_path) as tmp:
                    tmp.write_bytes(onnx)
            write_json_atomic(self.json_path, entry.model_dump(mode="json"))
        except OSError as exc:
            log.warning("runtime cache %s not written: %s", self.folder, exc)
            return False
        return True
