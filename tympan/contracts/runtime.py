"""The runtime cache entry: how the network ran last time for one model, and what it must give.

Written by :mod:`tympan.inference.runtime_cache` beside the bundle (``.tympan-cache/``) or in the
cache folder; read back on every load, validated, and compared field by field with the identity
of the run that reads it, so a changed weight, front end or library version rebuilds the entry.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RuntimeEntry(BaseModel):
    """``<key>.json``: the backend ``auto`` chose (with its timings) and the eager reference."""

    model_config = ConfigDict(extra="forbid")

    format: int = Field(description="entry format; another value is rebuilt")
    #: weights fingerprint, front end, backend asked, threads, device, machine, library versions
    identity: dict[str, str]
    backend: str = Field(description="the runner chosen: onnx, torchscript or eager")
    ms_per_window: dict[str, float] = {}
    max_abs_diff: dict[str, float] = {}
    rejected: dict[str, str] = {}
    #: sha256 of ``<key>.onnx`` (absent when no ONNX graph was kept)
    onnx_sha256: str | None = None
    #: the eager module's embeddings and logits on the parity batch (``tympan.io.encode_array``)
    reference: dict[str, dict[str, Any]]
    created: str
