"""The one front end: waveform -> log-mel, built from a :class:`FrontendConfig`.

Training, evaluation, serving and diagnostics all build :class:`LogMel` from the config
stored in the model bundle, so a model can never be served with features other than those
it was trained on. A pretrained model's pipeline (e.g. EfficientAT's Kaldi-style banks with
pre-emphasis and a fixed normalisation) is one more config, not a special case.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import librosa
import numpy as np
import scipy.sparse
import torch
from torch import nn

MelScale = Literal["slaney", "htk", "kaldi"]


#: bounds a bundle's front end must keep (a hostile bundle.json must not cost minutes or gigabytes)
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000
MAX_N_FFT = 65_536
MAX_N_MELS = 1_024
MAX_FRAMES_PER_SECOND = 2_000
MAX_CLIP_SECONDS = 120.0


@dataclass(frozen=True)
class FrontendConfig:
    """Everything that decides what the network sees; stored verbatim in ``bundle.json``.

    The default is chosen for accuracy per CPU cost on ESC-50: 16 kHz keeps everything the
    shipped ESC-50 copy contains (it is band-limited to 8 kHz) and what most field recorders
    deliver; 64 Slaney mel bands over 20 Hz..8 kHz with a 64 ms window and a 20 ms hop give a
    64 x 251 image per 5-s clip, four times fewer pixels than 128 x 501 at 10 ms, which is
    where a CNN's CPU time goes, while keeping ESC-50's transients (dog barks, door knocks)
    two or more frames wide.
    """

    sample_rate: int = 16_000
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 320
    n_mels: int = 64
    f_min: float = 20.0
    f_max: float = 8_000.0
    mel_scale: MelScale = "slaney"
    mel_norm: Literal["slaney"] | None = "slaney"
    window_periodic: bool = True
    center: bool = True
    pad_mode: Literal["constant", "reflect"] = "constant"
    preemphasis: float = 0.0
    log_offset: float = 1e-6
    norm_mean: float = 0.0
    norm_std: float = 1.0
    clip_seconds: float = 5.0
    name: str = field(default="tympan-default", compare=False)

    def __post_init__(self) -> None:
        problems = self._type_problems()
        if problems:  # comparing a string or NaN below would give a traceback or pass silently
            raise ValueError("invalid FrontendConfig: " + "; ".join(problems))
        if not MIN_SAMPLE_RATE <= self.sample_rate <= MAX_SAMPLE_RATE:
            problems.append(f"sample_rate must be in {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}")
        if self.n_fft > MAX_N_FFT:
            problems.append(f"n_fft must be at most {MAX_N_FFT}")
        if self.hop_length > 0 and self.sample_rate / self.hop_length > MAX_FRAMES_PER_SECOND:
            problems.append(f"hop_length gives more than {MAX_FRAMES_PER_SECOND} frames per second")
        if self.n_mels > MAX_N_MELS:
            problems.append(f"n_mels must be at most {MAX_N_MELS}")
        if self.clip_seconds > MAX_CLIP_SECONDS:
            problems.append(f"clip_seconds must be at most {MAX_CLIP_SECONDS}")
        if not 0 <= self.preemphasis < 1:
            problems.append("preemphasis must be in [0, 1)")
        if self.sample_rate <= 0:
            problems.append("sample_rate must be positive")
        if not 0 < self.win_length <= self.n_fft:
            problems.append("win_length must be in 1..n_fft")
        if self.hop_length <= 0:
            problems.append("hop_length must be positive")
        if self.n_mels <= 0:
            problems.append("n_mels must be positive")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            problems.append("need 0 <= f_min < f_max <= sample_rate / 2")
        if self.norm_std <= 0 or self.log_offset <= 0 or self.clip_seconds <= 0:
            problems.append("norm_std, log_offset and clip_seconds must be positive")
        if self.mel_scale not in ("slaney", "htk", "kaldi"):
            problems.append(f"unknown mel_scale {self.mel_scale!r}")
        if problems:
            raise ValueError("invalid FrontendConfig: " + "; ".join(problems))

    def _type_problems(self) -> list[str]:
        import math
        import numbers

        problems = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (isinstance(v, bool) or not isinstance(v, numbers.Integral)):
                problems.append(f"{f.name} must be an integer, not {v!r:.40}")
            elif f.type == "float" and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v)):
                problems.append(f"{f.name} must be a finite number, not {v!r:.40}")
            elif f.type == "bool" and not isinstance(v, bool | np.bool_):
                problems.append(f"{f.name} must be true or false, not {v!r:.40}")
        return problems

    @property
    def clip_samples(self) -> int:
        """Samples in one model input window."""
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """Frames of the log-mel for one clip (what ``LogMel`` returns for ``clip_samples``)."""
        n = self.clip_samples - (1 if self.preemphasis else 0)
        return 1 + n // self.hop_length if self.center else 1 + (n - self.n_fft) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrontendConfig:
        """Rebuild from ``to_dict`` output; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown front-end config keys: {', '.join(unknown)}")
        return cls(**data)

    def fingerprint(self) -> str:
        """Stable text of the parameters that change the output (for cache keys)."""
        d = self.to_dict()
        d.pop("name")
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_spec(cls, spec: str) -> FrontendConfig:
        """A ``--frontend`` value: the preset ``default`` or ``efficientat``, or a JSON file of fields."""
        if spec == "default":
            return cls()
        if spec == "efficientat":
            return cls.efficientat()
        from pathlib import Path

        path = Path(spec)
        if not path.is_file():
            raise ValueError(f"--frontend {spec!r}: expected default, efficientat or a JSON file")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"--frontend {spec}: not a front-end config ({exc})") from None

    @classmethod
    def efficientat(cls) -> FrontendConfig:
        """EfficientAT's eval-mode pipeline (``AugmentMelSTFT``) that the mn04 weights expect.

        32 kHz, pre-emphasis 0.97, n_fft 1024 / window 800 (symmetric Hann) / hop 320,
        128 Kaldi-style bands 0..15 kHz, log(x + 1e-5), then (x + 4.5) / 5.
        """
        return cls(
            sample_rate=32_000,
            n_fft=1024,
            win_length=800,
            hop_length=320,
            n_mels=128,
            f_min=0.0,
            f_max=15_000.0,
            mel_scale="kaldi",
            mel_norm=None,
            window_periodic=False,
            center=True,
            pad_mode="reflect",
            preemphasis=0.97,
            log_offset=1e-5,
            norm_mean=-4.5,
            norm_std=5.0,
            clip_seconds=5.0,
            name="efficientat-mn",
        )


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """Kaldi-style triangular banks (mel = 1127 ln(1 + f/700)), shape ``(n_mels, n_fft//2 + 1)``.

    Kaldi builds triangles over FFT bins 0..n_fft/2-1 only; the Nyquist column is zero, as in
    torchaudio's ``compliance.kaldi.get_mel_banks`` padded the way EfficientAT pads it.
    """

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)

    lo, hi = mel(f_min), mel(f_max)
    delta = (hi - lo) / (n_mels + 1)
    b = np.arange(n_mels, dtype=np.float64)[:, None]
    left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    bins = mel(sample_rate / n_fft * np.arange(n_fft // 2))[None, :]
    up = (bins - left) / (center - left)
    down = (right - bins) / (right - center)
    banks = np.maximum(0.0, np.minimum(up, down))
    return np.pad(banks, ((0, 0), (0, 1))).astype(np.float32)


def mel_filterbank(config: FrontendConfig) -> np.ndarray:
    """The mel matrix ``(n_mels, n_fft//2 + 1)`` the config asks for."""
    if config.mel_scale == "kaldi":
        return kaldi_mel_banks(config.n_mels, config.n_fft, config.sample_rate, config.f_min, config.f_max)
    return librosa.filters.mel(
        sr=config.sample_rate,
        n_fft=config.n_fft,
        n_mels=config.n_mels,
        fmin=config.f_min,
        fmax=config.f_max,
        htk=config.mel_scale == "htk",
        norm=config.mel_norm,
    ).astype(np.float32)


class LogMel(nn.Module):
    """Batched log-mel spectrogram: ``(B, n)`` or ``(n,)`` waveform -> ``(B, 1, n_mels, frames)``.

    torch.stft + librosa's (or Kaldi's) mel matrix, so it runs on CPU and GPU alike and needs
    no torchaudio. Matches ``librosa.feature.melspectrogram`` (see tests for the tolerance).
    """

    def __init__(self, config: FrontendConfig) -> None:
        super().__init__()
        self.config = config
        window = torch.hann_window(config.win_length, periodic=config.window_periodic)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(mel_filterbank(config)), persistent=False)
        self._sparse_basis: scipy.sparse.csr_array | None = None

    @torch.no_grad()
    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        x = waveform.to(self.mel_basis.dtype)
        if x.ndim == 1:
            x = x[None]
        if cfg.preemphasis:
            x = x[:, 1:] - cfg.preemphasis * x[:, :-1]
        spec = torch.stft(
            x,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window,
            center=cfg.center,
            pad_mode=cfg.pad_mode,
            normalized=False,
            return_complex=True,
        )
        mel = self._mel(spec)
        logmel = torch.log(mel + cfg.log_offset)
        if cfg.norm_mean != 0.0 or cfg.norm_std != 1.0:
            logmel = (logmel - cfg.norm_mean) / cfg.norm_std
        return logmel[:, None]

    def _mel(self, spec: torch.Tensor) -> torch.Tensor:
        """``mel_basis @ |spec|^2`` per window, ``(B, n_mels, frames)``.

        On a CPU the banks are a sparse matrix (SciPy): each band covers at most a few dozen of
        the 513 bins, so this costs a third of the dense product on a 5-s window (0.34 vs 1.1 ms,
        mn04's front end) and equals it up to float rounding (~1e-7 relative). torch.stft returns
        frames-major storage, which is the layout SciPy reads fastest. GPUs keep the dense product.
        """
        if spec.device.type != "cpu" or len(spec) == 0:
            return torch.matmul(self.mel_basis, spec.real.square() + spec.imag.square())
        if self._sparse_basis is None:
            self._sparse_basis = scipy.sparse.csr_array(self.mel_basis.numpy())
        frames_major = spec.transpose(1, 2)
        power = (frames_major * frames_major.conj()).real.numpy()  # |X|^2, (B, frames, bins)
        return torch.from_numpy(np.stack([self._sparse_basis @ q.T for q in power]))

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 - nn.Module's signature
        self._sparse_basis = None  # moved or cast: rebuilt from the dense buffer when next needed
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        c = self.config
        return f"{c.name}: {c.sample_rate} Hz, {c.n_mels} {c.mel_scale} bands, hop {c.hop_length}"
