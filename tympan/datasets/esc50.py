"""ESC-50: the official layout (``meta/esc50.csv`` + ``audio/``), in any audio format.

The official release is 44.1 kHz WAV; other copies (e.g. 16 kHz FLAC) keep the same names
with another extension. Anything that follows the layout loads; every consumer resamples
to its own front end's rate through :func:`tympan.audio.load_audio`.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tympan.audio import AUDIO_EXTENSIONS, load_audio
from tympan.errors import AudioError, DataError

ENV_VAR = "TYMPAN_ESC50_DIR"
META = Path("meta") / "esc50.csv"
N_CLIPS, N_FOLDS, N_CLASSES = 2000, 5, 50


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``data_dir`` if given, else ``$TYMPAN_ESC50_DIR``; fail clearly if neither exists."""
    chosen = data_dir or os.environ.get(ENV_VAR)
    if not chosen:
        raise DataError(f"no ESC-50 folder given: pass --data-dir DIR or set {ENV_VAR}")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: no such directory (ESC-50 data folder)")
    if not (path / META).is_file():
        raise DataError(f"{path}: not an ESC-50 folder ({META} is missing)")
    return path


def locate_data_dir(data_dir: str | Path | None = None, *fallbacks: str | Path | None) -> Path | None:
    """``data_dir`` (which must be an ESC-50 folder), else the first of ``$TYMPAN_ESC50_DIR`` and
    ``fallbacks`` that is one; None if none is.

    For consumers whose data is optional (the drift reference, the example clip of ``tympan
    up``); a folder the user named explicitly still fails clearly (:func:`resolve_data_dir`).
    """
    if data_dir:
        return resolve_data_dir(data_dir)
    for cand in (os.environ.get(ENV_VAR), *fallbacks):
        if cand and (Path(cand).expanduser() / META).is_file():
            return Path(cand).expanduser()
    return None


@dataclass
class ESC50:
    """Clip paths, labels, folds and class names of an ESC-50-layout folder."""

    root: Path
    files: list[Path]
    labels: np.ndarray  # int64 target per clip
    folds: np.ndarray  # int64 fold (1-based) per clip
    classes: list[str]  # index = target
    clip_ids: list[str] = field(default_factory=list)  # file stem, e.g. "1-100032-A-0"

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, mask: np.ndarray) -> ESC50:
        idx = np.flatnonzero(mask)
        return ESC50(
            root=self.root,
            files=[self.files[i] for i in idx],
            labels=self.labels[idx],
            folds=self.folds[idx],
            classes=self.classes,
            clip_ids=[self.clip_ids[i] for i in idx],
        )

    def fingerprint(self) -> str:
        """Checksum of the clip list and every file's bytes (what the cache and provenance use)."""
        h = hashlib.sha256()
        for cid, path, label, fold in zip(self.clip_ids, self.files, self.labels, self.folds, strict=True):
            h.update(f"{cid}|{int(label)}|{int(fold)}|".encode())
            h.update(_file_digest(path))
        return h.hexdigest()


def _file_digest(path: Path) -> bytes:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def _audio_index(audio_dir: Path) -> dict[str, Path]:
    """Map file stem -> path for every audio file in ``audio/`` (any supported extension)."""
    if not audio_dir.is_dir():
        return {}
    index: dict[str, Path] = {}
    for p in sorted(audio_dir.iterdir()):
        if p.suffix.lower() in AUDIO_EXTENSIONS:
            index.setdefault(p.stem, p)
    return index


def load_esc50(data_dir: str | Path | None = None, folds: list[int] | None = None) -> ESC50:
    """Read ``meta/esc50.csv`` and locate each clip's audio (optionally only some folds)."""
    root = resolve_data_dir(data_dir)
    rows = _read_meta(root)
    index = _audio_index(root / "audio")
    missing = [r["filename"] for r in rows if Path(r["filename"]).stem not in index]
    if missing:
        raise DataError(
            f"{root}: {len(missing)} clips listed in {META} have no audio file in audio/ "
            f"(first: {missing[0]})"
        )
    classes = _class_names(rows)
    files, labels, fold_ids, clip_ids = [], [], [], []
    for r in rows:
        fold = int(r["fold"])
        if folds is not None and fold not in folds:
            continue
        stem = Path(r["filename"]).stem
        files.append(index[stem])
        labels.append(int(r["target"]))
        fold_ids.append(fold)
        clip_ids.append(stem)
    if folds is not None and not files:
        raise DataError(f"{root}: folds {folds} contain no clips")
    return ESC50(root, files, np.asarray(labels, np.int64), np.asarray(fold_ids, np.int64), classes, clip_ids)


def _read_meta(root: Path) -> list[dict[str, str]]:
    path = root / META
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    need = {"filename", "fold", "target", "category"}
    if not rows or not need <= set(rows[0]):
        raise DataError(f"{path}: expected columns {sorted(need)}")
    try:
        for r in rows:
            int(r["fold"]), int(r["target"])
    except ValueError:
        raise DataError(f"{path}: fold and target must be integers") from None
    return rows


def _class_names(rows: list[dict[str, str]]) -> list[str]:
    names: dict[int, str] = {}
    for r in rows:
        t, c = int(r["target"]), r["category"]
        if names.setdefault(t, c) != c:
            raise DataError(f"target {t} is both {names[t]!r} and {c!r} in esc50.csv")
    if sorted(names) != list(range(len(names))):
        raise DataError("targets in esc50.csv are not 0..n-1")
    return [names[i] for i in range(len(names))]


@dataclass
class VerifyReport:
    """What ``tympan data verify`` found."""

    root: Path
    n_clips: int
    n_classes: int
    fold_counts: dict[int, int]
    class_counts: dict[str, int]
    sample_rates: dict[int, int]
    problems: list[str]
    decode_errors: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems and not self.decode_errors


def verify_esc50(
    data_dir: str | Path | None = None,
    *,
    decode: bool = True,
    expect_official: bool = True,
    progress: bool = False,
) -> VerifyReport:
    """Check layout and counts (2000 clips, 5 folds of 400, 40 per class) and decode every file.

    ``expect_official=False`` checks only internal consistency (for generated sets).
    """
    root = resolve_data_dir(data_dir)
    rows = _read_meta(root)
    problems: list[str] = []
    index = _audio_index(root / "audio")
    stems = [Path(r["filename"]).stem for r in rows]
    missing = [s for s in stems if s not in index]
    extra = sorted(set(index) - set(stems))
    if missing:
        problems.append(f"{len(missing)} clips have no audio file (first: {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} audio files are not in {META} (first: {extra[0]})")
    if len(set(stems)) != len(stems):
        problems.append("duplicate file names in esc50.csv")
    try:
        classes = _class_names(rows)
    except DataError as exc:
        problems.append(str(exc))
        classes = sorted({r["category"] for r in rows})
    fold_counts = dict(sorted(Counter(int(r["fold"]) for r in rows).items()))
    class_counts = dict(sorted(Counter(r["category"] for r in rows).items()))
    if expect_official:
        if len(rows) != N_CLIPS:
            problems.append(f"{len(rows)} clips, expected {N_CLIPS}")
        if sorted(fold_counts) != list(range(1, N_FOLDS + 1)) or set(fold_counts.values()) != {N_CLIPS // N_FOLDS}:
            problems.append(f"fold sizes {fold_counts}, expected 5 folds of 400")
        if len(classes) != N_CLASSES or set(class_counts.values()) != {N_CLIPS // N_CLASSES}:
            problems.append(f"{len(classes)} classes with counts {sorted(set(class_counts.values()))}, expected 50 x 40")

    decode_errors: list[str] = []
    rates: Counter[int] = Counter()
    if decode:
        paths = [index[s] for s in stems if s in index]
        iterator = paths
        if progress:
            from tqdm import tqdm

            iterator = tqdm(paths, desc="decoding", unit="clip")
        for p in iterator:
            try:
                d = load_audio(p, None, max_seconds=60)
                rates[d.source_sample_rate] += 1
            except (AudioError, OSError) as exc:
                decode_errors.append(str(exc))
    return VerifyReport(root, len(rows), len(classes), fold_counts, class_counts, dict(rates), problems, decode_errors)


#: The official release (Piczak, 2015; CC BY-NC 3.0), a zip of the GitHub repository.
ESC50_URL = "https://github.com/karolpiczak/ESC-50/archive/master.zip"


def download_esc50(dest: str | Path, url: str = ESC50_URL, *, progress: bool = True) -> Path:
    """Download, test and unpack the official ESC-50 archive into ``dest`` and verify it.

    The archive is resumable (``.part``), the zip's CRCs are checked before unpacking, and
    unpacking goes to a temporary folder that replaces ``dest/ESC-50`` only when complete.
    """
    import shutil
    import zipfile

    from tympan.download import DownloadError, download
    from tympan.io import atomic_dir

    dest = Path(dest)
    archive = download(url, dest / "ESC-50-master.zip", progress=progress)
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise DownloadError(f"{archive}: corrupt member {bad}; delete it and retry")
            with atomic_dir(dest / "ESC-50") as tmp:
                zf.extractall(tmp)
                inner = [p for p in tmp.iterdir() if (p / META).is_file()]
                if not inner:
                    raise DataError(f"{archive}: no {META} inside; not the ESC-50 archive")
                for item in inner[0].iterdir():
                    shutil.move(str(item), tmp / item.name)
                inner[0].rmdir()
    except zipfile.BadZipFile:
        archive.unlink(missing_ok=True)
        raise DownloadError(f"{archive}: not a valid zip archive; removed, run again") from None
    return dest / "ESC-50"
