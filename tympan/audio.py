"""The one audio decoder: every entry point (training, serving, diagnostics) calls it.

soundfile (libsndfile) decodes WAV/FLAC/OGG/Opus/MP3 and the older codecs (GSM 6.10, ADPCM,
G.72x, DPCM), soxr resamples. Bad input raises a subclass of :class:`tympan.errors.AudioError`
whose message names the problem, so the CLI and the API can pass it on as it is.

What a field recorder leaves behind decodes, with a warning in :attr:`Decoded.warnings`:

- a WAV whose header was never finalised (RIFF/data sizes 0 or 0xFFFFFFFF);
- a FLAC whose STREAMINFO does not give the length (total samples 0);
- a file cut short (power lost mid-recording): a WAV whose data chunk promises more than the
  file holds, a FLAC whose last frames are missing: what is there decodes, with a warning.
  Callers that must have every promised sample pass ``salvage=False`` and get
  :class:`~tympan.errors.TruncatedAudioError` instead;
- a chained Ogg (logical streams one after another): libsndfile decodes the first stream only,
  and the warning says so and how many there are.

Lengths and limits always use the samples really decoded, never a header's promise.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import logging
import os
import re
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from tympan.errors import (
    AudioTooLongError,
    EmptyAudioError,
    NonFiniteAudioError,
    NotAudioError,
    SampleRangeError,
    SampleRateError,
    TruncatedAudioError,
)
from tympan.names import display_name
from tympan.recording_meta import ogg_chain_links, riff_chunks, sniff_container

log = logging.getLogger(__name__)

#: Sample rates outside this range are not plausible recordings (1 kHz .. 768 kHz).
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768_000
#: Default upper bound on a decoded recording, in seconds (a 10-minute field recording).
DEFAULT_MAX_SECONDS = 600.0
#: Float samples beyond this magnitude are not audio levels (a float WAV of other data):
#: squared in a power spectrum they overflow float32 and reach the model as inf/NaN.
#: Integer PCM decodes within [-1, 1]; lossy decoders overshoot 1.0 only slightly.
MAX_SAMPLE_MAGNITUDE = 1e4
#: libsndfile reports SF_COUNT_MAX frames when a header does not give the length.
_UNKNOWN_FRAMES = 1 << 62
#: Frames per read when a file is read as a stream (non-seekable codecs, salvage).
_BLOCK = 1 << 16

AudioSource = str | Path | bytes | bytearray | memoryview | BinaryIO


@dataclass(frozen=True)
class Decoded:
    """A decoded, mono, resampled waveform and what it was before."""

    waveform: np.ndarray  # float32, shape (n,), at ``sample_rate``
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    source_frames: int  # frames really decoded (not what a header promised)
    format: str
    subtype: str
    #: what was wrong with the file but could be decoded around, one sentence each
    warnings: list[str] = field(default_factory=list)

    @property
    def source_duration(self) -> float:
        """Duration of the recording as received, in seconds."""
        return self.source_frames / self.source_sample_rate


@dataclass(frozen=True)
class Header:
    """What a file's header promises, before any sample is decoded: what budgets are checked on."""

    frames: int | None  # None: the header does not give the length
    channels: int
    sample_rate: int
    format: str

    @property
    def samples(self) -> int | None:
        """Frames x channels: what decoding would hold in memory (None: unknown)."""
        return None if self.frames is None else self.frames * self.channels


#: called with the :class:`Header` before decoding; raises to refuse the file
HeaderCheck = Callable[[Header], None]


def _describe(source: AudioSource) -> str:
    return display_name(source) if isinstance(source, str | Path) else "audio bytes"


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a regular file to read (missing, folder, FIFO, device, link loop), else None."""
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        return "no such file" + (" (a broken symbolic link)" if Path(path).is_symlink() else "")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop, not an audio file"
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(mode):
        return "is a directory, not an audio file"
    if stat.S_ISREG(mode):
        return None
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return f"{kind}, not an audio file (only regular files are read)"


def _stat_input(path: Path) -> os.stat_result:
    """The file's ``stat``, or one clear error naming the file (see :func:`file_problem`)."""
    name = display_name(path)
    why = file_problem(path)
    if why is not None:
        if why.startswith("no such file"):
            raise FileNotFoundError(f"{name}: {why}")
        raise NotAudioError(f"{name}: {why}")
    try:
        st = path.stat()
    except OSError as exc:  # it went away meanwhile
        raise NotAudioError(f"{name}: cannot be read ({exc.strerror})") from None
    if st.st_size == 0:
        raise EmptyAudioError(f"{name}: file is empty (0 bytes)")
    return st


class _Input:
    """The source, re-openable: libsndfile is asked to start over when salvaging."""

    def __init__(self, source: AudioSource) -> None:
        self.path: str | None = None
        self.data: bytes | None = None
        if isinstance(source, str | Path):
            path = Path(source)
            st = _stat_input(path)
            self.path = str(path)
            self.size = st.st_size
        else:
            data = bytes(source) if isinstance(source, bytes | bytearray | memoryview) else source.read()
            if not isinstance(data, bytes | bytearray):
                raise NotAudioError("audio source is not a binary file")
            if len(data) == 0:
                raise EmptyAudioError("audio is empty (0 bytes)")
            self.data = bytes(data)
            self.size = len(self.data)

    def raw(self) -> BinaryIO:
        return open(self.path, "rb") if self.path is not None else io.BytesIO(self.data)

    def open(self) -> sf.SoundFile:
        # bytes: libsndfile opens a name that is not valid UTF-8 (soundfile would encode a str strictly)
        return sf.SoundFile(os.fsencode(self.path) if self.path is not None else io.BytesIO(self.data))

    def replace(self, data: bytes) -> None:
        self.path, self.data, self.size = None, data, len(data)


def _open_checked(source: AudioSource) -> tuple[str, _Input, list[str], bool]:
    """What every decode starts with: the header checks, an unfinalised WAV patched in memory.

    Returns ``(name, input, notes, quiet)``: ``notes`` collects the warnings, ``quiet`` says
    whether libsndfile may print while decoding this container (keep it out of the output).
    """
    name = _describe(source)
    src = _Input(source)
    notes: list[str] = []
    with src.raw() as f:
        head = f.read(64)
        container = sniff_container(head)
        _check_header(name, f, src.size, container)
        if container == "WAV":
            patched = _finalise_riff(name, f, src.size, notes)
            if patched is not None:
                src.replace(patched)
        elif container == "OGG" and (links := ogg_chain_links(f, src.size)) > 1:
            notes.append(f"chained Ogg: the file holds {links} logical streams one after another; only the first "
                         f"is decoded (libsndfile reads one), so the duration and result cover that stream alone")
    return name, src, notes, _may_print(head, container)


def load_audio(
    source: AudioSource,
    sample_rate: int | None = None,
    *,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    salvage: bool = True,
    check_header: HeaderCheck | None = None,
) -> Decoded:
    """Decode ``source`` (path, bytes or binary file) to mono float32 at ``sample_rate``.

    ``sample_rate=None`` keeps the file's own rate. ``max_seconds`` bounds the recording's
    length *before* decoding it all (or, for streams without a length, while decoding), so a
    huge upload cannot exhaust memory. A truncated file decodes what it holds (with a warning),
    or raises :class:`~tympan.errors.TruncatedAudioError` with ``salvage=False``. Unfinalised WAV headers and FLAC streams of
    unknown length always decode, with a warning. ``check_header`` sees the header first (one
    open of the file: a server's decode budget costs no second parse) and raises to refuse it.
    """
    name, src, notes, quiet = _open_checked(source)
    with _quiet_native_output() if quiet else contextlib.nullcontext():
        data, sr, channels, fmt, subtype = _decode(src, name, max_seconds, salvage, notes, check_header)

    if data.shape[0] == 0:
        raise EmptyAudioError(f"{name}: contains no audio samples")
    if max_seconds is not None and data.shape[0] / sr > max_seconds:  # streams without length
        raise AudioTooLongError(
            f"{name}: recording is {data.shape[0] / sr:.1f} s long; the limit is {max_seconds:g} s"
        )
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise NonFiniteAudioError(f"{name}: {bad} samples are NaN or infinite")
    peak = _peak(data)
    if peak > MAX_SAMPLE_MAGNITUDE:
        raise SampleRangeError(
            f"{name}: samples reach {peak:.3g}, far outside audio levels (|x| <= 1; float files are "
            f"accepted up to {MAX_SAMPLE_MAGNITUDE:g}): the file holds no usable audio"
        )

    mono = _downmix(data)
    target = sr if sample_rate is None else int(sample_rate)
    wave = resample(mono, sr, target)
    return Decoded(
        waveform=np.ascontiguousarray(wave, dtype=np.float32),
        sample_rate=target,
        source_sample_rate=sr,
        source_channels=channels,
        source_frames=data.shape[0],
        format=fmt,
        subtype=subtype,
        warnings=notes,
    )


def _decode(
    src: _Input, name: str, max_seconds: float | None, salvage: bool, notes: list[str],
    check_header: HeaderCheck | None = None,
) -> tuple[np.ndarray, int, int, str, str]:
    """libsndfile's part: header, then the samples (at once, as a stream, or salvaged)."""
    try:
        with src.open() as f:
            sr, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            fmt, subtype = f.format, f.subtype
            if check_header is not None:
                check_header(Header(frames if 0 <= frames < _UNKNOWN_FRAMES else None, channels, sr, fmt))
            seekable = f.seekable()
            if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
                raise SampleRateError(
                    f"{name}: sample rate {sr} Hz is outside the supported range "
                    f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
                )
            known = 0 <= frames < _UNKNOWN_FRAMES
            if not known:
                notes.append("the header does not give the length (total samples unknown, as a "
                             "recorder leaves a stream it did not finish); decoded what the file holds")
            for chunk, declared, actual in _declared_shortfalls(f.extra_info):
                if not salvage:
                    raise TruncatedAudioError(
                        f"{name}: truncated: the {chunk} chunk declares {declared} bytes, the file holds {actual}"
                    )
                notes.append(f"truncated: the {chunk} chunk declares {declared} bytes, the file holds "
                             f"{actual}; decoded the {frames / sr:.3f} s present")
            if max_seconds is not None and known and frames > 0 and frames / sr > max_seconds:
                raise AudioTooLongError(
                    f"{name}: recording is {frames / sr:.1f} s long; the limit is {max_seconds:g} s"
                )
            data = None
            if known and seekable:
                with contextlib.suppress(sf.LibsndfileError, RuntimeError):
                    data = f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        if isinstance(exc, SampleRateError | TruncatedAudioError | AudioTooLongError):
            raise
        raise _classify_libsndfile_error(name, exc) from None

    err: Exception | None = None
    if data is None:  # not seekable, length unknown, or the one-shot read failed: stream it
        limit = None if max_seconds is None else int(max_seconds * sr) + 1
        try:
            data, err = _read_stream(src.open, channels, limit)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise _classify_libsndfile_error(name, exc) from None
        if limit is not None and data.shape[0] > limit:
            raise AudioTooLongError(
                f"{name}: recording is longer than {max_seconds:g} s (decoding stopped there); "
                f"the limit is {max_seconds:g} s"
            )
    n = data.shape[0]
    if err is not None and n == 0:
        raise _classify_libsndfile_error(name, err)
    if err is not None and not known and "psf_fseek" in str(err):
        err = None  # how libsndfile's FLAC reader ends a stream without a length
    short = known and n < frames
    if (short or err is not None) and not any(x.startswith("truncated") for x in notes):
        if known and not salvage:
            detail = f" ({str(err).strip()})" if err is not None else ""
            raise TruncatedAudioError(
                f"{name}: truncated: header promises {frames} frames, only {n} decode{detail}"
            )
        where = f"header promises {frames} frames ({frames / sr:.3f} s); " if known else ""
        reason = f" (libsndfile: {str(err).strip()})" if err is not None else ""
        notes.append(f"truncated or damaged: {where}decoded the {n} frames ({n / sr:.3f} s) before "
                     f"the end of the readable data{reason}")
    return data, sr, channels, fmt, subtype


def _read_stream(
    open_file: Callable[[], sf.SoundFile], channels: int, limit: int | None
) -> tuple[np.ndarray, Exception | None]:
    """Read block by block until the end, the first undecodable block, or ``limit`` frames.

    Works for codecs libsndfile reads only forwards (GSM 6.10, G.72x, NMS ADPCM, XI DPCM) and
    for streams without a length or with a damaged tail. Returns the frames that decoded and
    the error that stopped decoding (None at a clean end).
    """
    if _RAW_READ:
        with open_file() as f:
            return _read_raw(f, channels, limit)
    return _read_backoff(open_file, channels, limit)


#: Read with libsndfile's ``sf_readf_float`` directly when soundfile exposes it: soundfile's
#: ``read`` raises on libsndfile's sticky error flag and drops the frames that same call did
#: decode (a FLAC's last frames, a truncated file's tail).
_RAW_READ = hasattr(sf, "_snd") and hasattr(sf, "_ffi") and hasattr(sf.SoundFile, "_errorcode")


def _read_raw(f: sf.SoundFile, channels: int, limit: int | None) -> tuple[np.ndarray, Exception | None]:
    parts: list[np.ndarray] = []
    n = 0
    while True:
        block = np.empty((_BLOCK, max(1, channels)), dtype=np.float32)
        got = int(sf._snd.sf_readf_float(f._file, sf._ffi.cast("float *", block.ctypes.data), _BLOCK))
        if got > 0:
            parts.append(block[:got])
            n += got
        code = f._errorcode
        if code:
            msg = sf._ffi.string(sf._snd.sf_error_number(code)).decode("utf-8", "replace")
            return _concat(parts, channels), sf.LibsndfileError(code, msg)
        if got == 0 or (limit is not None and n > limit):
            return _concat(parts, channels), None


def _read_backoff(
    open_file: Callable[[], sf.SoundFile], channels: int, limit: int | None
) -> tuple[np.ndarray, Exception | None]:
    """Without raw access: a read that fails loses its whole block, so after a failure the file
    is opened again, the frames already decoded are skipped, and reading goes on in blocks 16
    times smaller, down to single frames."""
    parts: list[np.ndarray] = []
    n, chunk = 0, _BLOCK
    err: Exception | None = None
    while True:
        with open_file() as f:
            try:
                skipped = 0
                while skipped < n:  # re-decode what we already have (no seeking: not all can)
                    got = len(f.read(min(_BLOCK, n - skipped), dtype="float32", always_2d=True))
                    if got == 0:
                        break
                    skipped += got
                while True:
                    block = f.read(chunk, dtype="float32", always_2d=True)
                    if len(block) == 0:
                        return _concat(parts, channels), None
                    parts.append(block)
                    n += len(block)
                    if limit is not None and n > limit:
                        return _concat(parts, channels), None
            except (sf.LibsndfileError, RuntimeError) as exc:
                err = exc
        if chunk == 1:
            return _concat(parts, channels), err
        chunk = max(1, chunk // 16)


def _concat(parts: list[np.ndarray], channels: int) -> np.ndarray:
    if not parts:
        return np.zeros((0, max(1, channels)), dtype=np.float32)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


# --------------------------------------------------------------------------- header checks
def _check_header(name: str, f: BinaryIO, size: int, container: str | None) -> None:
    """Refuse a WAV/FLAC whose header gives no usable sample rate (libsndfile says less)."""
    rate: int | None = None
    if container == "WAV":
        layout = riff_chunks(f, size)
        fmt = layout.find("fmt ") if layout is not None else None
        if fmt is not None and fmt.available >= 8:
            f.seek(fmt.offset)
            raw = f.read(8)
            endian = ">" if layout.form == "RIFX" else "<"
            channels = int.from_bytes(raw[2:4], "big" if endian == ">" else "little")
            rate = int.from_bytes(raw[4:8], "big" if endian == ">" else "little")
            if channels == 0:
                raise NotAudioError(f"{name}: the WAV header declares 0 channels")
    elif container == "FLAC":
        f.seek(0)
        head = f.read(26)
        if len(head) >= 26 and head[:4] == b"fLaC" and (head[4] & 0x7F) == 0:  # STREAMINFO
            rate = int.from_bytes(head[18:21], "big") >> 4
    if rate is not None and not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise SampleRateError(
            f"{name}: the header's sample rate {rate} Hz is outside the supported range "
            f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )


def _finalise_riff(name: str, f: BinaryIO, size: int, notes: list[str]) -> bytes | None:
    """Note placeholder RIFF/data sizes; return patched bytes when libsndfile would see no data.

    A recorder that loses power before closing the file leaves the sizes it wrote first:
    0 or 0xFFFFFFFF. libsndfile reads a 0xFFFFFFFF data size to the end of the file but takes
    a 0 at its word (no samples), so that header is patched in memory with the real size.
    """
    layout = riff_chunks(f, size)
    if layout is None or layout.form not in ("RIFF", "RIFX"):
        return None
    data = layout.find("data")
    placeholder_riff = layout.riff_size in (0, 0xFFFFFFFF)
    if not layout.data_unfinalised:
        if placeholder_riff:
            notes.append(f"the RIFF size is a placeholder ({layout.riff_size:#x}): the recorder did not "
                         "finalise the header")
        return None
    assert data is not None
    notes.append(f"the WAV header was never finalised (data size {data.size:#x}); decoded the "
                 f"{data.available} bytes that follow it")
    if data.size != 0:
        return None
    f.seek(0)
    patched = bytearray(f.read())
    endian = ">" if layout.form == "RIFX" else "<"
    patched[data.offset - 4 : data.offset] = min(data.available, 0xFFFFFFFE).to_bytes(
        4, "big" if endian == ">" else "little")
    patched[4:8] = min(size - 8, 0xFFFFFFFE).to_bytes(4, "big" if endian == ">" else "little")
    return bytes(patched)


_SHOULD_BE = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _declared_shortfalls(log_text: str) -> list[tuple[str, int, int]]:
    """Chunks whose header promises more data than the file holds.

    libsndfile quietly shortens such files to what is there; its header log says
    ``data : 32000 (should be 15978)``, which is how a cut-off file shows itself.
    Streaming writers leave a placeholder length (0 or all ones): that is not truncation.
    """
    return [
        (chunk, int(declared), int(actual))
        for chunk, declared, actual in _SHOULD_BE.findall(log_text or "")
        if int(actual) < int(declared) < 0x7FFF_0000
    ]


def _classify_libsndfile_error(name: str, exc: Exception) -> Exception:
    """Map libsndfile's messages onto tympan's typed errors."""
    msg = str(exc)
    low = msg.lower()
    if "format not recognised" in low or "unknown format" in low or "not a" in low:
        return NotAudioError(f"{name}: not a recognised audio format ({msg.strip()})")
    if "sample rate" in low or "samplerate" in low:
        return SampleRateError(f"{name}: invalid sample rate ({msg.strip()})")
    if "truncat" in low or "unexpected end" in low or "short" in low or "lost sync" in low:
        return TruncatedAudioError(f"{name}: truncated or damaged file ({msg.strip()})")
    return NotAudioError(f"{name}: cannot decode audio ({msg.strip()})")


# ---------------------------------------------------------------- libsndfile's own printing
#: Containers whose libsndfile readers never print: the rest may (SDS prints one line per bad
#: block to stdout, ALAC prints on bad packet tables, mpg123 notes every resync on stderr).
_QUIET_CONTAINERS = frozenset({"WAV", "RF64", "W64", "FLAC", "OGG", "AIFF", "AU"})
#: Lines the native decoders print; dropped. Anything else printed meanwhile is passed on.
_NATIVE_NOISE = re.compile(
    rb"^(Error [A1] : [0-9A-F]{2}"  # libsndfile sds.c
    rb"|Note: .*|Warning: .*"  # mpg123 notes and warnings
    rb"|\[[^\]]*\.c:[^\]]*\] (error|warning|note): .*"  # mpg123 error() / warning()
    rb"|\w+ \d+ : Ooops!.*|alac\w* : .*"  # libsndfile alac.c
    rb")\s*$"
)
_QUIET_LOCK = threading.Lock()
#: Most bytes of other output captured during a decode that are passed on afterwards.
_PASS_ON_LIMIT = 64 * 1024


def _may_print(head: bytes, container: str | None) -> bool:
    if container not in _QUIET_CONTAINERS:
        return True
    at = head.find(b"fmt ") if container == "WAV" else -1
    return at >= 0 and head[at + 8 : at + 10] == b"\x55\x00"  # MPEG audio in a WAV: mpg123


def _libc_fflush() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def _quiet_native_output() -> Iterator[None]:
    """Keep what libsndfile and mpg123 print (fd 1 and fd 2) out of the process's output.

    They write with C stdio to the process's stdout/stderr: a malformed SDS file prints a line
    per block (hundreds of thousands for one upload). File descriptors are process-wide, so
    decodes that may print take a lock, point fd 1 and fd 2 at temporary files, flush C stdio,
    restore them, and pass on to the real fds whatever else was written meanwhile (another
    thread's log line is delayed, not lost), dropping the decoders' known lines and counting them.
    """
    with _QUIET_LOCK:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        _libc_fflush()
        saved: dict[int, int] = {}
        sinks: dict[int, tempfile._TemporaryFileWrapper] = {}
        try:
            for fd in (1, 2):
                try:
                    saved[fd] = os.dup(fd)
                except OSError:
                    continue
                sinks[fd] = tempfile.TemporaryFile()  # noqa: SIM115
                os.dup2(sinks[fd].fileno(), fd)
        except OSError:
            pass
        try:
            yield
        finally:
            _libc_fflush()
            dropped = 0
            for fd, old in saved.items():
                with contextlib.suppress(OSError):
                    os.dup2(old, fd)
                os.close(old)
            for fd, sink in sinks.items():
                dropped += _pass_on(sink, fd)
            if dropped:
                log.debug("tympan.audio: suppressed %d lines printed by the native decoder", dropped)


def _pass_on(sink: BinaryIO, fd: int) -> int:
    """Write ``sink``'s lines that are not decoder noise to ``fd`` (bounded); count the rest."""
    dropped, kept = 0, bytearray()
    with sink:
        sink.seek(0)
        for line in sink:
            if _NATIVE_NOISE.match(line):
                dropped += 1
            elif len(kept) < _PASS_ON_LIMIT:
                kept += line
    if kept:
        with contextlib.suppress(OSError):
            os.write(fd, bytes(kept))
    return dropped


def resample(waveform: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample with soxr's high-quality filter; a no-op when the rates agree."""
    if sr_in == sr_out:
        return np.asarray(waveform, dtype=np.float32)
    if sr_out < MIN_SAMPLE_RATE or sr_out > MAX_SAMPLE_RATE:
        raise SampleRateError(f"target sample rate {sr_out} Hz is not supported")
    return soxr.resample(np.asarray(waveform, dtype=np.float32), sr_in, sr_out, quality="HQ")


def fit_length(waveform: np.ndarray, n_samples: int) -> np.ndarray:
    """Zero-pad at the end or crop from the start to exactly ``n_samples``.

    ESC-50 clips are zero-padded to 5 s at the end; padding the same way keeps field
    clips shorter than the model's window in the form the model saw in training.
    """
    x = np.asarray(waveform, dtype=np.float32)
    if x.shape[-1] >= n_samples:
        return x[..., :n_samples]
    pad = [(0, 0)] * (x.ndim - 1) + [(0, n_samples - x.shape[-1])]
    return np.pad(x, pad)


def frame_windows(
    waveform: np.ndarray, n_samples: int, hop: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cut a recording into overlapping windows of ``n_samples`` (default 50% overlap).

    Returns ``(windows, starts)``: windows ``(n_windows, n_samples)`` and their start sample.
    A recording no longer than one window gives one padded window; the last window is
    aligned to the end so no tail is lost.
    """
    x = np.asarray(waveform, dtype=np.float32)
    hop = hop or max(1, n_samples // 2)
    if x.shape[0] <= n_samples:
        return fit_length(x, n_samples)[None, :], np.zeros(1, dtype=np.int64)
    starts = list(range(0, x.shape[0] - n_samples + 1, hop))
    if starts[-1] + n_samples < x.shape[0]:
        starts.append(x.shape[0] - n_samples)
    idx = np.asarray(starts, dtype=np.int64)
    windows = np.stack([x[s : s + n_samples] for s in idx])
    return windows, idx


AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64"}
)


# ------------------------------------------------------------------------ streaming decode
@dataclass
class StreamInfo:
    """What :func:`iter_audio_blocks` knows about a recording; filled in as it is decoded.

    ``source_frames`` and ``frames`` grow while blocks are read and are final once the
    iteration ends; ``warnings`` gets the same sentences :func:`load_audio` would give
    (unfinalised header, unknown length, truncated or damaged tail).
    """

    sample_rate: int  # of the blocks
    source_sample_rate: int
    source_channels: int
    declared_frames: int | None  # what the header promises; None when it does not say
    format: str
    subtype: str
    source_frames: int = 0  # frames really decoded so far
    frames: int = 0  # samples yielded so far, at ``sample_rate``
    warnings: list[str] = field(default_factory=list)
    finished: bool = False

    @property
    def source_duration(self) -> float:
        return self.source_frames / self.source_sample_rate

    @property
    def declared_duration(self) -> float | None:
        return None if self.declared_frames is None else self.declared_frames / self.source_sample_rate


class AudioBlocks:
    """Iterable of mono float32 blocks at ``info.sample_rate``; see :func:`iter_audio_blocks`."""

    def __init__(self, src: _Input, name: str, info: StreamInfo, block_frames: int, salvage: bool,
                 quiet: bool) -> None:
        self._src, self._name, self.info = src, name, info
        self._block, self._salvage, self._quiet = block_frames, salvage, quiet
        self._used = False

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._used:
            raise RuntimeError("an AudioBlocks stream can be iterated once")
        self._used = True
        info, name = self.info, self._name
        sr, target = info.source_sample_rate, info.sample_rate
        stream = None if sr == target else soxr.ResampleStream(sr, target, 1, dtype="float32", quality="HQ")
        quiet = _quiet_native_output if self._quiet else contextlib.nullcontext
        err: Exception | None = None
        try:
            f = self._src.open()
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise _classify_libsndfile_error(name, exc) from None
        with f:
            while True:
                with quiet():
                    data, err = _read_block(f, info.source_channels, self._block)
                if data.shape[0]:
                    peak = _peak(data)  # NaN or inf when any sample is: one check for both
                    if not np.isfinite(peak):
                        bad = int((~np.isfinite(data)).sum())
                        raise NonFiniteAudioError(f"{name}: {bad} samples are NaN or infinite "
                                                  f"(at {info.source_frames / sr:.1f} s)")
                    if peak > MAX_SAMPLE_MAGNITUDE:
                        raise SampleRangeError(
                            f"{name}: samples reach {peak:.3g}, far outside audio levels (|x| <= 1; float "
                            f"files are accepted up to {MAX_SAMPLE_MAGNITUDE:g}): the file holds no usable audio")
                    info.source_frames += data.shape[0]
                    mono = _downmix(data)
                    out = mono if stream is None else stream.resample_chunk(np.ascontiguousarray(mono))
                    if len(out):
                        info.frames += len(out)
                        yield np.ascontiguousarray(out, dtype=np.float32)
                if err is not None or data.shape[0] == 0:
                    break
        if stream is not None:
            out = stream.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(out):
                info.frames += len(out)
                yield np.ascontiguousarray(out, dtype=np.float32)
        self._finish(err)

    def _finish(self, err: Exception | None) -> None:
        info, name, n = self.info, self._name, self.info.source_frames
        known = info.declared_frames is not None
        if n == 0:
            if err is not None:
                raise _classify_libsndfile_error(name, err)
            raise EmptyAudioError(f"{name}: contains no audio samples")
        if err is not None and not known and "psf_fseek" in str(err):
            err = None  # how libsndfile's FLAC reader ends a stream without a length
        frames = info.declared_frames or 0
        short = known and n < frames
        if (short or err is not None) and not any(x.startswith("truncated") for x in info.warnings):
            if known and not self._salvage:
                detail = f" ({str(err).strip()})" if err is not None else ""
                raise TruncatedAudioError(f"{name}: truncated: header promises {frames} frames, only {n} decode{detail}")
            sr = info.source_sample_rate
            where = f"header promises {frames} frames ({frames / sr:.3f} s); " if known else ""
            reason = f" (libsndfile: {str(err).strip()})" if err is not None else ""
            info.warnings.append(f"truncated or damaged: {where}decoded the {n} frames ({n / sr:.3f} s) before "
                                 f"the end of the readable data{reason}")
        info.finished = True


def _peak(data: np.ndarray) -> float:
    """Largest |sample|, NaN when any sample is NaN: two contiguous reductions, no |x| copy."""
    if not data.size:
        return 0.0
    return max(float(data.max()), -float(data.min()))  # data.max() is NaN whenever a NaN is there


def _downmix(data: np.ndarray) -> np.ndarray:
    """Mean of the channels of ``(frames, C)``: column sums, not numpy's strided row reduction.

    Same float32 result as ``data.mean(axis=1)`` (the same additions in the same order), about
    five times faster on interleaved stereo, which made downmixing a long 48 kHz recording cost
    more than its resampling.
    """
    if data.shape[1] == 1:
        return data[:, 0]
    out = data[:, 0] + data[:, 1]
    for c in range(2, data.shape[1]):
        out += data[:, c]
    out /= data.shape[1]
    return out


def _read_block(f: sf.SoundFile, channels: int, frames: int) -> tuple[np.ndarray, Exception | None]:
    """One block of up to ``frames`` frames, and the error that stopped decoding (None if none).

    With raw access, the frames a failing call did decode are kept (as :func:`_read_raw`).
    """
    if _RAW_READ:
        block = np.empty((frames, max(1, channels)), dtype=np.float32)
        got = int(sf._snd.sf_readf_float(f._file, sf._ffi.cast("float *", block.ctypes.data), frames))
        code = f._errorcode
        err = None
        if code:
            msg = sf._ffi.string(sf._snd.sf_error_number(code)).decode("utf-8", "replace")
            err = sf.LibsndfileError(code, msg)
        return block[: max(got, 0)], err
    try:
        return f.read(frames, dtype="float32", always_2d=True), None
    except (sf.LibsndfileError, RuntimeError) as exc:  # the failing block is lost without raw access
        return np.zeros((0, max(1, channels)), np.float32), exc


def iter_audio_blocks(
    source: AudioSource,
    sample_rate: int | None = None,
    block_seconds: float = 30.0,
    *,
    salvage: bool = True,
) -> AudioBlocks:
    """Decode ``source`` as a stream: mono float32 blocks at ``sample_rate``, memory flat in its length.

    The same decoder as :func:`load_audio` (header checks, unfinalised WAV/FLAC, truncated
    tails salvaged with a warning, forward-only codecs), read ``block_seconds`` at a time with
    soundfile and resampled by one :class:`soxr.ResampleStream`, so the concatenated blocks
    equal ``load_audio(source, sample_rate, max_seconds=None).waveform`` whatever the block
    size. There is no length limit. Header problems raise here; problems in the samples
    (NaN, absurd levels, nothing decodable) raise while iterating. ``.info`` (a
    :class:`StreamInfo`) carries the stream parameters and, once iterated, the frames really
    decoded and the warnings.

    A WAV whose data size was left at 0 is patched in memory (the whole file is read once,
    as :func:`load_audio` does); every other file is read block by block.
    """
    name, src, notes, quiet = _open_checked(source)
    try:
        with _quiet_native_output() if quiet else contextlib.nullcontext(), src.open() as f:
            sr, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            fmt, subtype, extra = f.format, f.subtype, f.extra_info
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise _classify_libsndfile_error(name, exc) from None
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise SampleRateError(f"{name}: sample rate {sr} Hz is outside the supported range "
                              f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    known = 0 <= frames < _UNKNOWN_FRAMES
    if not known:
        notes.append("the header does not give the length (total samples unknown, as a "
                     "recorder leaves a stream it did not finish); decoded what the file holds")
    for chunk, declared, actual in _declared_shortfalls(extra):
        if not salvage:
            raise TruncatedAudioError(
                f"{name}: truncated: the {chunk} chunk declares {declared} bytes, the file holds {actual}")
        notes.append(f"truncated: the {chunk} chunk declares {declared} bytes, the file holds "
                     f"{actual}; decoded the {frames / sr:.3f} s present")
    target = sr if sample_rate is None else int(sample_rate)
    if not MIN_SAMPLE_RATE <= target <= MAX_SAMPLE_RATE:
        raise SampleRateError(f"target sample rate {target} Hz is not supported")
    info = StreamInfo(sample_rate=target, source_sample_rate=sr, source_channels=channels,
                      declared_frames=frames if known else None, format=fmt, subtype=subtype, warnings=notes)
    block = max(1024, int(block_seconds * sr))
    return AudioBlocks(src, name, info, block, salvage, quiet)
