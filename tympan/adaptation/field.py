"""Field audio as model input: decode a folder, cut long recordings into windows, featurise.

Shared by unlabelled adaptation (:mod:`.adabn`), the labelled fine-tune (:mod:`.finetune`)
and the before/after evidence (:mod:`.compare`). A recording is cut into the model's windows
exactly as serving cuts it (:func:`tympan.audio.frame_windows`, 50% overlap), each window goes
through the bundle's own front end, and window logits become a file's answer through the one
prediction path, :func:`tympan.inference.aggregate`, as ``/predict`` reports it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn

from tympan.audio import DEFAULT_MAX_SECONDS, frame_windows, load_audio
from tympan.bundle import Bundle
from tympan.datasets.field import scan_field_dir
from tympan.errors import AudioError, TympanError
from tympan.features import FrontendConfig, LogMel
from tympan.inference import Predictor, RecordingScores, TrustParams, aggregate


#: Default cap on field windows held in memory (cnn: 64 KB each; mn04: 256 KB each).
DEFAULT_MAX_WINDOWS = 4000


class AdaptationError(TympanError):
    """Adaptation cannot run as asked (no usable field audio, no BatchNorm, bad labels)."""


class NoBatchNormError(AdaptationError):
    """The model has no BatchNorm layer, so unlabelled (AdaBN) adaptation cannot change it."""


@dataclass
class FieldFeatures:
    """Log-mel windows of a set of recordings, and which recording each window came from."""

    files: list[Path]  # recordings that decoded, in order
    features: torch.Tensor  # (n_windows, 1, n_mels, frames) float32
    file_index: np.ndarray  # (n_windows,) index into ``files``
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why) not used
    root: Path | None = None
    window_stride: int = 1  # every k-th window was kept (max_windows)

    @property
    def n_files(self) -> int:
        return len(self.files)

    @property
    def n_windows(self) -> int:
        return int(self.features.shape[0])

    def relative_names(self) -> list[str]:
        """File names relative to the folder (POSIX), or the full paths without one."""
        if self.root is None:
            return [str(p) for p in self.files]
        return [p.relative_to(self.root).as_posix() if p.is_relative_to(self.root) else str(p) for p in self.files]

    def files_sha256(self) -> str:
        """sha256 of the sorted relative file names, one per line (what the bundle records)."""
        return hashlib.sha256("\n".join(sorted(self.relative_names())).encode()).hexdigest()

    def subset_files(self, keep: Sequence[int]) -> FieldFeatures:
        """Only the windows of files ``keep`` (indices into ``files``), renumbered."""
        keep = list(keep)
        remap = {old: new for new, old in enumerate(keep)}
        mask = np.isin(self.file_index, keep)
        idx = np.flatnonzero(mask)
        return FieldFeatures(
            files=[self.files[i] for i in keep],
            features=self.features[torch.from_numpy(idx)],
            file_index=np.asarray([remap[int(i)] for i in self.file_index[idx]], np.int64),
            skipped=list(self.skipped),
            root=self.root,
            window_stride=self.window_stride,
        )


@torch.no_grad()
def featurize_windows(waves: np.ndarray, frontend: FrontendConfig | LogMel, batch_size: int = 32) -> torch.Tensor:
    """Log-mels ``(n, 1, n_mels, frames)`` of windows ``(n, clip_samples)``, in chunks."""
    logmel = frontend if isinstance(frontend, LogMel) else LogMel(frontend)
    waves = np.asarray(waves, dtype=np.float32)
    out = [logmel(torch.from_numpy(np.ascontiguousarray(waves[lo : lo + batch_size])))
           for lo in range(0, waves.shape[0], batch_size)]
    if not out:
        cfg = logmel.config
        return torch.zeros((0, 1, cfg.n_mels, cfg.n_frames))
    return torch.cat(out).float()


def from_waveforms(
    waves: Sequence[np.ndarray], frontend: FrontendConfig, names: Sequence[str] | None = None
) -> FieldFeatures:
    """Featurise in-memory recordings (already at ``frontend.sample_rate``), windowed like files."""
    logmel = LogMel(frontend)
    feats, index = [], []
    for i, w in enumerate(waves):
        windows, _ = frame_windows(np.asarray(w, np.float32), frontend.clip_samples)
        feats.append(featurize_windows(windows, logmel))
        index.append(np.full(windows.shape[0], i, np.int64))
    names = list(names) if names is not None else [f"clip{i}" for i in range(len(waves))]
    if not feats:
        raise AdaptationError("no recordings given")
    return FieldFeatures([Path(n) for n in names], torch.cat(feats), np.concatenate(index))


def _header(path: Path) -> tuple[int, int] | None:
    """``(frames, sample_rate)`` from the recording's header (``None``: unreadable, or a format
    soundfile lacks)."""
    try:
        info = sf.info(os.fsencode(path))
        return int(info.frames), max(1, int(info.samplerate))
    except Exception:  # unreadable: decoding will say why
        return None


def _expected_windows(path: Path, frontend: FrontendConfig, header: tuple[int, int] | None = None) -> int:
    """How many windows :func:`frame_windows` will cut ``path`` into (from its header; 1 if unknown)."""
    header = header or _header(path)
    if header is None:
        return 1
    n = int(header[0] * frontend.sample_rate / header[1])
    clip, hop = frontend.clip_samples, max(1, frontend.clip_samples // 2)
    return 1 if n <= clip else (n - clip) // hop + 1 + (1 if (n - clip) % hop else 0)


def load_field(
    source: str | Path | Sequence[str | Path],
    frontend: FrontendConfig,
    *,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    max_windows: int | None = DEFAULT_MAX_WINDOWS,
    progress: bool = False,
    desc: str = "field files",
) -> FieldFeatures:
    """Decode every recording of a folder (or a list of files) and featurise its windows.

    Unreadable files are skipped and listed with the reason; a missing or empty folder, or one
    where nothing decodes, raises (one line). ``max_windows`` bounds memory on big folders:
    when the recordings hold more windows than that, every file keeps every ``k``-th window
    (evenly spaced, at least one per file) with ``k`` chosen from the files' headers.
    ``progress``: the shared progress line (:class:`tympan.progress.JobProgress`) on a terminal,
    since decoding hours of field audio is the long part of ``tympan adapt``; off for library callers.
    """
    from tympan.progress import JobProgress

    if isinstance(source, str | Path):
        scan = scan_field_dir(source)  # DataError: missing, not a folder, no audio files
        root, files, skipped = scan.root, list(scan.files), list(scan.skipped)
    else:
        files = [Path(p) for p in source]
        if not files:
            raise AdaptationError("no field recordings given")
        root, skipped = None, []
    stride = 1
    headers = [_header(p) for p in files] if (progress or max_windows is not None) else []
    if max_windows is not None:
        total = sum(_expected_windows(p, frontend, h) for p, h in zip(files, headers))
        stride = max(1, math.ceil(total / max(1, max_windows)))
    logmel = LogMel(frontend)
    used, feats, index = [], [], []
    known = [h[0] / h[1] for h in headers if h is not None]  # the ETA follows audio when every header gives it
    bar = JobProgress(len(files), desc, quiet=not progress, leave=False,
                      total_audio_s=sum(known) if known and len(known) == len(files) else None)
    with bar:
        for p in files:
            try:
                wave = load_audio(p, frontend.sample_rate, max_seconds=max_seconds).waveform
            except (AudioError, OSError) as exc:
                skipped.append((p, str(exc)))
                bar.done(ok=False)  # listed with the reason in the command's summary
                continue
            windows, _ = frame_windows(wave, frontend.clip_samples)
            windows = windows[::stride]
            feats.append(featurize_windows(windows, logmel))
            index.append(np.full(windows.shape[0], len(used), np.int64))
            used.append(p)
            bar.done(wave.shape[0] / frontend.sample_rate)
    where = root if root is not None else "the given files"
    if not used:
        first = skipped[0][1] if skipped else "no files"
        raise AdaptationError(f"{where}: none of the {len(files)} audio files could be decoded (first: {first})")
    return FieldFeatures(used, torch.cat(feats), np.concatenate(index), skipped, root, window_stride=stride)


@torch.no_grad()
def window_logits(model: nn.Module, features: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Logits ``(n_windows, n_classes)`` in eval mode (the caller's mode is restored)."""
    was = model.training
    model.eval()
    try:
        out = [model(features[lo : lo + batch_size].float()).float() for lo in range(0, len(features), batch_size)]
    finally:
        model.train(was)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


#: Per-recording predictions of field audio: :class:`tympan.inference.RecordingScores`.
FilePredictions = RecordingScores


def bundle_params(bundle: Bundle) -> TrustParams:
    """The bundle's temperature and OOD threshold, read as serving reads them."""
    return TrustParams.from_bundle(bundle)


def predict_field(bundle: Bundle, ff: FieldFeatures) -> RecordingScores:
    """The bundle's per-file predictions on already featurised field audio (the one path)."""
    e, z = Predictor(bundle).forward_features(ff.features)
    return aggregate(z, bundle_params(bundle), ff.file_index, ff.n_files, embeddings=e)
