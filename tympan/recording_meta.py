"""What a field recording says about itself, from its headers alone (no decoding).

:func:`read_recording_metadata` gives the start time (and where it came from), the GUANO,
RIFF INFO and BWF ``bext`` fields, the stream parameters and whether the file name's
extension names the container it really is. It reads chunk headers and a few small chunks,
never the samples, so a batch job can call it for every file of an archive.

:func:`recording_statistics` is the part that needs the decoded waveform (clipping share,
energy above the model's 8 kHz band); it is kept separate on purpose.

The RIFF walker here (:func:`riff_chunks`) is also what :mod:`tympan.audio` uses to notice
unfinalised WAV headers. It trusts no size field: it reads only what the file holds.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO

import numpy as np

#: The most bytes read from one metadata chunk (GUANO, LIST, bext): they are small text.
MAX_META_CHUNK = 1 << 20
#: The most chunks walked in one RIFF file (a damaged file can look like many tiny chunks).
MAX_CHUNKS = 4096
#: The model's band: content above this frequency is not seen by a 16 kHz front end.
MODEL_BAND_HZ = 8000.0
#: A sample at or above this magnitude counts as clipped.
CLIP_LEVEL = 0.999


# ------------------------------------------------------------------------------ RIFF walking
@dataclass(frozen=True)
class RiffChunk:
    """One chunk of a RIFF file: its id, where its payload starts, declared and present size."""

    id: str
    offset: int  # of the payload, after the 8-byte header
    size: int  # as declared by the header
    available: int  # bytes of payload the file really holds (for ``data``: the samples present)


@dataclass(frozen=True)
class RiffLayout:
    """The chunk layout of a RIFF/RF64 WAVE file, as far as the file really goes."""

    form: str  # "RIFF", "RIFX", "RF64" or "BW64"
    riff_size: int  # as declared
    file_size: int
    chunks: tuple[RiffChunk, ...]
    #: the data chunk's declared size is a placeholder (0 or 0xFFFFFFFF) and samples follow it
    data_unfinalised: bool = False

    def find(self, chunk_id: str) -> RiffChunk | None:
        return next((c for c in self.chunks if c.id == chunk_id), None)


def _plausible_id(raw: bytes) -> bool:
    return len(raw) == 4 and all(0x20 <= b <= 0x7E for b in raw)


def riff_chunks(f: BinaryIO, file_size: int) -> RiffLayout | None:
    """Walk the chunks of the RIFF WAVE file ``f`` (seekable, ``file_size`` bytes long).

    Returns None when the file is not RIFF/RIFX/RF64/BW64 WAVE. Reads 8-byte chunk headers
    only; stops at the end of the file, at a chunk that claims to run past it, or at bytes
    that are no chunk header.
    """
    f.seek(0)
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX", b"RF64", b"BW64") or head[8:12] != b"WAVE":
        return None
    form = head[:4].decode("ascii")
    endian = ">" if form == "RIFX" else "<"
    riff_size = struct.unpack(endian + "I", head[4:8])[0]
    chunks: list[RiffChunk] = []
    unfinalised = False
    ds64_data: int | None = None
    pos = 12
    while pos + 8 <= file_size and len(chunks) < MAX_CHUNKS:
        f.seek(pos)
        hdr = f.read(8)
        if len(hdr) < 8 or not _plausible_id(hdr[:4]):
            break
        cid = hdr[:4].decode("ascii")
        size = struct.unpack(endian + "I", hdr[4:8])[0]
        payload = pos + 8
        rest = file_size - payload
        if cid == "ds64" and size >= 24 and rest >= 24:
            f.seek(payload + 8)
            ds64_data = struct.unpack("<Q", f.read(8))[0]
        if cid == "data":
            if ds64_data is not None and size == 0xFFFFFFFF:
                size = ds64_data
            elif size == 0xFFFFFFFF:
                unfinalised = rest > 0
                chunks.append(RiffChunk(cid, payload, size, rest))
                break
            elif size == 0 and rest > 0:
                f.seek(payload)
                nxt = f.read(8)
                # a real empty data chunk is followed by another chunk (or nothing)
                if not (len(nxt) == 8 and _plausible_id(nxt[:4])
                        and struct.unpack(endian + "I", nxt[4:8])[0] <= rest - 8):
                    unfinalised = True
                    chunks.append(RiffChunk(cid, payload, size, rest))
                    break
        chunks.append(RiffChunk(cid, payload, size, max(0, min(size, rest))))
        pos = payload + size + (size & 1)
    return RiffLayout(form, riff_size, file_size, tuple(chunks), unfinalised)


def _read_chunk(f: BinaryIO, chunk: RiffChunk, limit: int = MAX_META_CHUNK) -> bytes:
    f.seek(chunk.offset)
    return f.read(min(chunk.available, limit))


# ----------------------------------------------------------------------- metadata parsers
def _text(raw: bytes) -> str:
    raw = raw.split(b"\x00", 1)[0]
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return raw.decode("latin-1").strip()


def parse_guano(raw: bytes) -> dict[str, str]:
    """GUANO ``key: value`` lines (UTF-8) as a dict; the first line ``GUANO|Version`` included."""
    text = raw.rstrip(b"\x00").decode("utf-8", errors="replace")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    return fields


def parse_info(raw: bytes) -> dict[str, str]:
    """The sub-chunks of a ``LIST``/``INFO`` chunk (``ICMT``, ``IART``, ...) as a dict."""
    if raw[:4] != b"INFO":
        return {}
    fields: dict[str, str] = {}
    pos = 4
    while pos + 8 <= len(raw):
        cid, size = raw[pos : pos + 4], struct.unpack("<I", raw[pos + 4 : pos + 8])[0]
        if not _plausible_id(cid):
            break
        value = raw[pos + 8 : pos + 8 + size]
        fields[cid.decode("ascii")] = _text(value)
        pos += 8 + size + (size & 1)
    return fields


def parse_bext(raw: bytes) -> dict[str, str]:
    """The text fields of a BWF ``bext`` chunk (EBU Tech 3285)."""
    if len(raw) < 256 + 32 + 32 + 10 + 8:
        return {}
    return {
        "Description": _text(raw[0:256]),
        "Originator": _text(raw[256:288]),
        "OriginatorReference": _text(raw[288:320]),
        "OriginationDate": _text(raw[320:330]),
        "OriginationTime": _text(raw[330:338]),
    }


def _parse_iso(text: str) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace(" ", "T", 1) if "T" not in text else text)
    except ValueError:
        return None


_AUDIOMOTH = re.compile(
    r"Recorded at (\d{1,2}):(\d{2}):(\d{2}) (\d{1,2})/(\d{1,2})/(\d{4}) \(UTC(?:([+-])(\d{1,2})(?::?(\d{2}))?)?\)"
)


def parse_audiomoth_comment(comment: str) -> datetime | None:
    """The start time in AudioMoth's comment: ``Recorded at 12:00:00 01/02/2024 (UTC) by ...``.

    AudioMoth writes DD/MM/YYYY and the zone as ``(UTC)``, ``(UTC+1)`` or ``(UTC-3:30)``.
    """
    m = _AUDIOMOTH.search(comment)
    if not m:
        return None
    hh, mi, ss, dd, mo, yy, sign, oh, om = m.groups()
    offset = timedelta(hours=int(oh or 0), minutes=int(om or 0)) * (-1 if sign == "-" else 1)
    try:
        return datetime(int(yy), int(mo), int(dd), int(hh), int(mi), int(ss), tzinfo=timezone(offset))
    except ValueError:
        return None


def parse_bext_time(date: str, time: str) -> datetime | None:
    """``OriginationDate`` (yyyy-mm-dd, any separator) + ``OriginationTime`` (hh:mm:ss); no zone."""
    d = re.fullmatch(r"(\d{4})\D(\d{2})\D(\d{2})", date.strip())
    t = re.fullmatch(r"(\d{2})\D(\d{2})\D(\d{2})", time.strip()) if time.strip() else None
    if not d:
        return None
    hh, mi, ss = (int(x) for x in t.groups()) if t else (0, 0, 0)
    try:
        return datetime(int(d[1]), int(d[2]), int(d[3]), hh, mi, ss)
    except ValueError:
        return None


_NAME_TIME = re.compile(r"(?:^|[_\-. ])(\d{8})[_T-](\d{6})(Z)?$", re.IGNORECASE)


def parse_filename_time(name: str) -> datetime | None:
    """``..._YYYYMMDD_HHMMSS`` or ``YYYYMMDD_HHMMSS`` at the end of a file's stem (``Z``: UTC)."""
    m = _NAME_TIME.search(Path(name).stem)
    if not m:
        return None
    try:
        when = datetime.strptime(m[1] + m[2], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    return when.replace(tzinfo=UTC) if m[3] else when


# ------------------------------------------------------------------------- container sniff
#: The containers each extension may name (as soundfile spells the format).
EXTENSION_CONTAINERS: dict[str, frozenset[str]] = {
    ".wav": frozenset({"WAV", "WAVEX", "RF64"}),
    ".wave": frozenset({"WAV", "WAVEX", "RF64"}),
    ".bwf": frozenset({"WAV", "WAVEX", "RF64"}),
    ".rf64": frozenset({"RF64", "WAV"}),
    ".w64": frozenset({"W64"}),
    ".flac": frozenset({"FLAC"}),
    ".ogg": frozenset({"OGG"}),
    ".oga": frozenset({"OGG"}),
    ".opus": frozenset({"OGG"}),
    ".mp3": frozenset({"MP3"}),
    ".aif": frozenset({"AIFF"}),
    ".aiff": frozenset({"AIFF"}),
    ".aifc": frozenset({"AIFF"}),
    ".au": frozenset({"AU"}),
    ".snd": frozenset({"AU"}),
    ".caf": frozenset({"CAF"}),
}


def sniff_container(head: bytes) -> str | None:
    """The container the first bytes announce (soundfile's format names), or None."""
    if head[:4] in (b"RIFF", b"RIFX") and head[8:12] == b"WAVE":
        return "WAV"
    if head[:4] in (b"RF64", b"BW64"):
        return "RF64"
    if head[:4] == b"riff" and head[4:8] == b"\x2e\x91\xcf\x11":
        return "W64"
    if head[:4] == b"fLaC":
        return "FLAC"
    if head[:4] == b"OggS":
        return "OGG"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "AIFF"
    if head[:4] == b".snd":
        return "AU"
    if head[:4] == b"caff":
        return "CAF"
    if head[:3] == b"ID3":
        # an ID3 tag then MPEG audio (or, rarely, FLAC after a tag)
        size = _id3_size(head)
        if size and head[size : size + 4] == b"fLaC":
            return "FLAC"
        return "MP3"
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x06) != 0:
        return "MP3"
    return None


def _id3_size(data: bytes) -> int:
    """Bytes of a leading ID3v2 tag (0 when there is none)."""
    if data[:3] != b"ID3" or len(data) < 10:
        return 0
    size = 0
    for b in data[6:10]:
        size = (size << 7) | (b & 0x7F)
    return 10 + size


def audio_payload_size(data: bytes) -> int:
    """Bytes of ``data`` that can hold coded audio: a FLAC's metadata blocks (PADDING, PICTURE,
    ...) and a leading ID3 tag are not audio, so a budget of samples per byte must not count them
    (a megabyte of padding would otherwise buy 64 M samples of silence). Other containers: all."""
    start = _id3_size(data)
    if data[start : start + 4] != b"fLaC":
        return len(data)
    at = start + 4
    while at + 4 <= len(data):
        kind, length = data[at], int.from_bytes(data[at + 1 : at + 4], "big")
        at += 4 + length
        if kind & 0x80:  # the last metadata block: frames follow
            break
    return max(len(data) - at, 0)


#: The most Ogg pages walked to count chained streams (a 20 MB upload of minimal pages is 700 k).
MAX_OGG_PAGES = 1 << 20


def ogg_chain_links(f: BinaryIO, file_size: int) -> int:
    """How many logical streams an Ogg file chains one after another (1 for an ordinary file).

    libsndfile decodes only the first; a chained file (200 streams of 0.1 s, or a radio dump)
    would otherwise be answered as its first stream with no warning. Walks the page headers
    (27 bytes and the segment table each) and counts the runs of beginning-of-stream pages
    (streams multiplexed side by side start together and count once); stops at the first bytes
    that are not a page (what follows is not decoded either).
    """
    f.seek(0)
    streams, at, pages, last_bos = 0, 0, 0, False
    while at + 27 <= file_size and pages < MAX_OGG_PAGES:
        head = f.read(27)
        if len(head) < 27 or head[:4] != b"OggS":
            break
        table = f.read(head[26])
        if len(table) < head[26]:
            break
        bos = bool(head[5] & 0x02)  # beginning of a logical stream
        streams += bos and not last_bos
        last_bos = bos
        at += 27 + head[26] + sum(table)
        f.seek(at)
        pages += 1
    return max(streams, 1)


# ------------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class RecordingMetadata:
    """What a recording's headers say; ``None`` where the file does not tell."""

    path: str
    start_time: datetime | None = None  # timezone-aware when the source gives a zone
    start_time_source: str | None = None  # "guano", "audiomoth_comment", "bext", "filename"
    guano: dict[str, str] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)  # RIFF LIST/INFO (ICMT, IART, ...)
    bext: dict[str, str] = field(default_factory=dict)
    sample_rate: int | None = None
    channels: int | None = None
    frames: int | None = None  # None when the header does not give the length
    duration: float | None = None  # seconds, from ``frames``
    format: str | None = None  # soundfile's container name ("WAV", "FLAC", ...)
    subtype: str | None = None  # soundfile's encoding name ("PCM_16", ...)
    container: str | None = None  # what the first bytes announce
    #: set when the extension names another container than the file is (e.g. FLAC named .wav)
    extension_warning: str | None = None
    #: header problems worth knowing (unfinalised sizes, unknown length, unreadable header)
    warnings: list[str] = field(default_factory=list)
    #: why the stream parameters could not be read (None when they could)
    error: str | None = None

    @property
    def extension_lies(self) -> bool:
        return self.extension_warning is not None


#: libsndfile's "length unknown" (SF_COUNT_MAX) and anything near it is no real length
_UNKNOWN_FRAMES = 1 << 62


def read_recording_metadata(path: str | Path) -> RecordingMetadata:
    """Read ``path``'s headers: start time and its source, GUANO/INFO/bext, stream parameters.

    Cheap: reads chunk headers, the small metadata chunks and libsndfile's header parse, never
    the samples. Never raises for a damaged file (``error``/``warnings`` say what is wrong);
    a missing file raises :class:`FileNotFoundError`.
    """
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    size = p.stat().st_size
    warnings: list[str] = []
    guano: dict[str, str] = {}
    info: dict[str, str] = {}
    bext: dict[str, str] = {}
    with open(p, "rb") as f:
        head = f.read(64)
        container = sniff_container(head)
        layout = riff_chunks(f, size) if container in ("WAV", "RF64") else None
        if layout is not None:
            for chunk in layout.chunks:
                if chunk.id == "guan" and not guano:
                    guano = parse_guano(_read_chunk(f, chunk))
                elif chunk.id == "LIST":
                    info.update(parse_info(_read_chunk(f, chunk)))
                elif chunk.id == "bext" and not bext:
                    bext = parse_bext(_read_chunk(f, chunk))
            data = layout.find("data")
            if layout.data_unfinalised:
                warnings.append("the WAV header was never finalised (data size is a placeholder); "
                                "the samples run to the end of the file")
            elif data is not None and data.available < data.size:
                warnings.append(f"truncated: the data chunk declares {data.size} bytes, the file holds "
                                f"{data.available}")
            if layout.riff_size in (0, 0xFFFFFFFF) and layout.form in ("RIFF", "RIFX"):
                warnings.append("the RIFF size is a placeholder (the recorder did not finalise the header)")

    start, source = _start_time(guano, info, bext, p.name)

    sr = channels = frames = None
    fmt = subtype = None
    error = None
    try:
        i = sf.info(os.fsencode(p))  # bytes: a name that is not UTF-8 opens too
        sr, channels, fmt, subtype = int(i.samplerate), int(i.channels), i.format, i.subtype
        frames = int(i.frames) if 0 <= int(i.frames) < _UNKNOWN_FRAMES else None
        if frames is None:
            warnings.append("the header does not give the length (total samples unknown)")
    except Exception as exc:  # noqa: BLE001 - libsndfile's reasons are varied; report, never raise
        error = f"{type(exc).__name__}: {str(exc).strip()}"
    duration = frames / sr if frames is not None and sr else None

    real = container or fmt
    expected = EXTENSION_CONTAINERS.get(p.suffix.lower())
    ext_warning = None
    if real and expected and real not in expected:
        ext_warning = f"the extension {p.suffix} names another container: the file is {real}"
    return RecordingMetadata(
        path=str(p), start_time=start, start_time_source=source, guano=guano, info=info, bext=bext,
        sample_rate=sr, channels=channels, frames=frames, duration=duration, format=fmt,
        subtype=subtype, container=container, extension_warning=ext_warning, warnings=warnings,
        error=error,
    )


def _start_time(guano: dict[str, str], info: dict[str, str], bext: dict[str, str],
                name: str) -> tuple[datetime | None, str | None]:
    """The first start time found: GUANO, AudioMoth comment, bext, file name."""
    when = _parse_iso(guano.get("Timestamp", ""))
    if when is not None:
        return when, "guano"
    when = parse_audiomoth_comment(info.get("ICMT", ""))
    if when is not None:
        return when, "audiomoth_comment"
    if bext:
        when = parse_bext_time(bext.get("OriginationDate", ""), bext.get("OriginationTime", ""))
        if when is not None:
            return when, "bext"
    when = parse_filename_time(name)
    if when is not None:
        return when, "filename"
    return None, None


# ----------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class RecordingStatistics:
    """What needs the decoded samples: clipping and content above the model's band."""

    clipping_share: float  # share of samples with |x| >= 0.999
    #: share of spectral energy above the band (8 kHz by default); None when the rate cannot hold it
    share_above_band: float | None


def recording_statistics(waveform: np.ndarray, sample_rate: int, *, n_fft: int = 4096,
                         band_hz: float = MODEL_BAND_HZ) -> RecordingStatistics:
    """Clipping share and energy share above ``band_hz`` (the model's top frequency) of a mono waveform."""
    x = np.asarray(waveform, dtype=np.float32)
    clipping = float(np.mean(np.abs(x) >= CLIP_LEVEL)) if x.size else 0.0
    above: float | None = None
    if sample_rate > 2 * band_hz and x.size:
        n = min(n_fft, x.size)
        freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
        power = np.zeros(freqs.size)
        window = np.hanning(n) if n > 1 else np.ones(1)
        for lo in range(0, max(1, x.size - n + 1), n):  # non-overlapping frames: bounded memory
            frame = x[lo : lo + n]
            if frame.size < n:
                break
            power += np.abs(np.fft.rfft(frame * window)) ** 2
        total = float(power.sum())
        above = float(power[freqs > band_hz].sum() / total) if total > 0 else 0.0
    return RecordingStatistics(clipping, above)

