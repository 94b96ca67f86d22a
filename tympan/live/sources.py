"""Live audio sources: blocks of float32 mono samples at the model's rate, each with the stream
sample index it starts at (a jump in that index is a gap: a reconnect, or windows dropped).

- :func:`ffmpeg_source`: anything ffmpeg reads (a file, an RTSP/HTTP stream), decoded by an
  ffmpeg subprocess writing raw float32 PCM at the model's rate. A stream that ends, fails or
  stalls (no bytes for ``stall_s``) is reopened with exponential backoff when ``reconnect`` is
  set (stream time goes on by the outage, so timestamps stay true); otherwise ffmpeg's own
  error is raised as a :class:`SourceError` (one line).
- :func:`pcm_source`: raw PCM from a binary stream (stdin): ``s16le`` or ``f32le``, any rate
  and channel count; downmixed, resampled with ``soxr``'s streaming resampler; a stream that
  closes mid-frame loses only the partial frame (reported).
- :func:`finished_files`: a folder watched for new recordings, each yielded once its size has
  stopped changing.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tympan.errors import TympanError

__all__ = ["PcmDecoder", "SourceError", "device_source", "ffmpeg_source", "finished_files", "is_url", "pcm_source"]

Block = tuple[int, np.ndarray]  # (stream sample index of block[0], samples)


class SourceError(TympanError):
    """A live source that cannot be read (named, with the reason)."""


def is_url(source: str) -> bool:
    return "://" in source


def _reader(stream: BinaryIO, out: queue.Queue, chunk: int) -> None:
    """Thread: bytes from ``stream`` into ``out``; ``None`` at the end (a closed pipe)."""
    try:
        while True:
            data = stream.read1(chunk) if hasattr(stream, "read1") else stream.read(chunk)
            if not data:
                break
            out.put(data)
    except (OSError, ValueError):
        pass
    out.put(None)


def _ffmpeg_once(source: str, sr: int, stall_s: float, realtime: bool, chunk: int) -> Iterator[bytes]:
    """One ffmpeg run: raw float32 mono bytes; raises SourceError with ffmpeg's last line."""
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise SourceError("ffmpeg is not installed (apt-get install ffmpeg); it reads files and streams for listen")
    cmd = [exe, "-nostdin", "-hide_banner", "-loglevel", "error"]
    if realtime:
        cmd.append("-re")
    if source.startswith("rtsp://"):
        cmd += ["-rtsp_transport", "tcp"]
    cmd += ["-i", source, "-vn", "-ac", "1", "-ar", str(sr), "-f", "f32le", "pipe:1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    q: queue.Queue = queue.Queue(maxsize=64)
    threading.Thread(target=_reader, args=(proc.stdout, q, chunk), daemon=True).start()
    err: list[bytes] = []
    threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True).start()
    try:
        while True:
            try:
                data = q.get(timeout=stall_s)
            except queue.Empty:
                raise SourceError(f"{source}: no audio for {stall_s:g} s (stalled)") from None
            if data is None:
                break
            yield data
        rc = proc.wait(timeout=10)
        if rc != 0:
            time.sleep(0.05)
            tail = (b"".join(err).decode("utf-8", "replace").strip().splitlines() or [f"exit code {rc}"])[-1]
            raise SourceError(f"ffmpeg could not read {source}: {tail}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def ffmpeg_source(source: str, sr: int, *, reconnect: bool = False, stall_s: float = 15.0,
                  realtime: bool = False, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                  max_retries: int | None = None, block_s: float = 0.5,
                  log: Callable[[str], None] = lambda m: None) -> Iterator[Block]:
    """Blocks from ffmpeg; with ``reconnect``, a dropped or stalled stream is reopened."""
    chunk = max(4, int(block_s * sr) * 4)
    pos, retries, delay = 0, 0, backoff_s
    while True:
        carry = b""
        got = False
        try:
            for data in _ffmpeg_once(source, sr, stall_s, realtime, chunk):
                data = carry + data
                cut = len(data) - len(data) % 4
                carry = data[cut:]
                if cut:
                    y = np.frombuffer(data[:cut], np.float32).copy()
                    if not np.isfinite(y).all():
                        y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
                    yield pos, y
                    pos += len(y)
                    got, retries, delay = True, 0, backoff_s
            if not reconnect:
                return
            reason = "the stream ended"
        except SourceError as exc:
            if not reconnect or (not got and retries == 0 and not is_url(source)):
                raise
            reason = str(exc)
        retries += 1
        if max_retries is not None and retries > max_retries:
            raise SourceError(f"{source}: gave up after {max_retries} reconnects ({reason})")
        log(f"{reason}; reconnecting in {delay:g} s (attempt {retries})")
        t0 = time.monotonic()
        time.sleep(delay)
        delay = min(max_backoff_s, delay * 2)
        pos += int((time.monotonic() - t0) * sr)  # stream time goes on through the outage


class PcmDecoder:
    """Raw interleaved PCM bytes (``s16le`` or ``f32le``) to float32 mono at the model's rate,
    piece by piece: downmixed, resampled by soxr's streaming resampler, a frame cut between two
    pieces carried to the next (shared by stdin and the server's ``/stream``)."""

    WIDTHS = {"s16le": 2, "f32le": 4}

    def __init__(self, rate: int, channels: int, sr: int, sample_format: str = "s16le") -> None:
        if rate <= 0 or channels <= 0:
            raise SourceError("the sample rate and channel count must be positive")
        width = self.WIDTHS.get(sample_format)
        if width is None:
            raise SourceError(f"unknown PCM sample format {sample_format!r} (s16le or f32le)")
        self.width, self.channels = width, channels
        self.frame = width * channels
        self.carry = b""
        self.nonfinite = 0  # pieces in which non-finite samples were set to zero
        self.resampler = None
        if rate != sr:
            import soxr

            self.resampler = soxr.ResampleStream(rate, sr, 1, dtype="float32")

    def decode(self, data: bytes, *, last: bool = False) -> np.ndarray:
        """The samples of ``data`` (after what was carried); ``last`` flushes the resampler."""
        data = self.carry + data
        cut = len(data) - len(data) % self.frame
        self.carry = data[cut:]
        y = np.zeros(0, np.float32)
        if cut:
            raw = np.frombuffer(data[:cut], "<i2" if self.width == 2 else "<f4")
            y = raw.astype(np.float32) / (32768.0 if self.width == 2 else 1.0)
            y = y.reshape(-1, self.channels).mean(axis=1)
            if not np.isfinite(y).all():
                self.nonfinite += 1
                y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
        if self.resampler is not None:
            y = self.resampler.resample_chunk(y, last=last)
        return np.ascontiguousarray(y, np.float32)


def pcm_source(stream: BinaryIO, rate: int, channels: int, sr: int, *, sample_format: str = "s16le",
               block_s: float = 0.5, log: Callable[[str], None] = lambda m: None) -> Iterator[Block]:
    """Blocks from raw PCM on a binary stream, at the model's rate ``sr``."""
    if rate <= 0 or channels <= 0:
        raise SourceError("--rate and --channels must be positive")
    dec = PcmDecoder(rate, channels, sr, sample_format)
    chunk = max(dec.frame, int(block_s * rate) * dec.frame)
    pos = 0
    while True:
        data = stream.read(chunk)
        last = not data
        seen = dec.nonfinite
        y = dec.decode(data or b"", last=last)
        if dec.nonfinite > seen:
            log("non-finite samples in the PCM stream were set to zero")
        if len(y):
            yield pos, y
            pos += len(y)
        if last:
            if dec.carry:
                log(f"the PCM stream ended mid-frame: {len(dec.carry)} trailing bytes dropped")
            return


def finished_files(folder: Path, *, settle_s: float = 2.0, poll_s: float = 1.0,
                   stop: Callable[[], bool] = lambda: False, existing: bool = False) -> Iterator[Path]:
    """New audio files in ``folder`` (recursive), each once its size and mtime stopped changing."""
    from tympan.audio import AUDIO_EXTENSIONS

    seen: dict[Path, tuple[int, int, float]] = {}
    done: set[Path] = set()
    if not existing:
        done = {p for p in folder.rglob("*") if p.is_file()}
    while not stop():
        now = time.monotonic()
        for p in sorted(folder.rglob("*")):
            if p in done or not p.is_file() or p.name.startswith(".") or p.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            try:
                st = os.stat(p)
            except OSError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            old = seen.get(p)
            if old is None or old[:2] != key:
                seen[p] = (*key, now)
            elif now - old[2] >= settle_s and st.st_size > 0:
                done.add(p)
                seen.pop(p, None)
                yield p
        time.sleep(poll_s)


def device_source(device: str | int | None, sr: int, *, block_s: float = 0.5,
                  stop: Callable[[], bool] = lambda: False) -> Iterator[Block]:
    """A sound card through ``sounddevice`` (the ``live`` extra), recorded at the model's rate."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as exc:
        raise SourceError(f"a sound card needs the sounddevice package and PortAudio ({exc})") from exc
    q: queue.Queue = queue.Queue()

    def callback(indata, frames, t, status) -> None:  # noqa: ANN001 - PortAudio's signature
        q.put(indata[:, 0].copy())

    try:
        stream = sd.InputStream(device=device, channels=1, samplerate=sr, dtype="float32",
                                blocksize=int(block_s * sr), callback=callback)
    except Exception as exc:  # noqa: BLE001 - PortAudio raises its own error types
        raise SourceError(f"cannot open the sound card {device!r}: {exc}") from exc
    pos = 0
    with stream:
        while not stop():
            try:
                y = q.get(timeout=5.0)
            except queue.Empty:
                raise SourceError(f"the sound card {device!r} delivers no audio") from None
            yield pos, y
            pos += len(y)
