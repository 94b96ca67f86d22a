"""Robust training as prevention: featurised copies of the training clips under field conditions.

The training loop trains from a feature cache (log-mels computed once), so waveform-level
augmentation cannot run inside it. :func:`augmented_feature_copies` instead computes
``n_copies`` corrupted versions of every clip with :func:`tympan.corruptions.random_field_augment`
(reverb, EQ / band-limiting / 8 kHz, noise at a random SNR, gain, codec round trip), through the
bundle's own front end, and stores them like :mod:`tympan.cache` does (atomic folder, keyed by
the data, the front end, the seed, ``p`` and ``n_copies``; a second call is a cache hit).

Each copy keeps its clip's label and fold (clip id ``"<id>#aug<k>"``), so the training loop
can mix in exactly the copies of its *training* folds and never a copy of the held-out fold.
Clip ``i``'s copy ``k`` draws from ``numpy.random.default_rng([seed, k, i])``: the result
does not depend on order or threading.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tympan.audio import fit_length, load_audio
from tympan.cache import CACHE_VERSION, FeatureSet, cache_root, open_entry
from tympan.corruptions import random_field_augment
from tympan.datasets.esc50 import ESC50
from tympan.features import FrontendConfig, LogMel
from tympan.io import atomic_dir

AUGMENT_VERSION = 1


def augment_key(dataset: ESC50, frontend: FrontendConfig, n_copies: int, seed: int, p: float, dtype: str) -> str:
    h = hashlib.sha256()
    h.update(f"field-augment-v{AUGMENT_VERSION}|cache-v{CACHE_VERSION}|{n_copies}|{seed}|{p!r}|{dtype}|"
             f"{frontend.fingerprint()}|{dataset.fingerprint()}".encode())
    return "aug-" + h.hexdigest()[:20]


def augmented_feature_copies(
    dataset: ESC50,
    frontend: FrontendConfig,
    n_copies: int,
    seed: int = 0,
    *,
    p: float = 0.5,
    root: str | Path | None = None,
    dtype: str = "float16",
    batch_size: int = 32,
    workers: int = 1,
    progress: bool = True,
) -> FeatureSet:
    """Log-mels of ``n_copies`` field-augmented copies of every clip of ``dataset`` (cached).

    Returns a :class:`tympan.cache.FeatureSet` of ``n_copies * len(dataset)`` rows, copy-major
    (rows ``k*N .. (k+1)*N - 1`` are copy ``k``), with labels and folds repeated.
    """
    if n_copies < 1:
        raise ValueError("n_copies must be at least 1")
    if dtype not in ("float16", "float32"):
        raise ValueError("dtype must be float16 or float32")
    entry = cache_root(root) / augment_key(dataset, frontend, n_copies, seed, p, dtype)
    if not (entry / "meta.json").is_file():
        _build(entry, dataset, frontend, n_copies, seed, p, dtype, batch_size, workers, progress)
    return open_entry(entry)


def _corrupted(path: Path, i: int, frontend: FrontendConfig, n_copies: int, seed: int, p: float) -> np.ndarray:
    wave = fit_length(load_audio(path, frontend.sample_rate, max_seconds=None).waveform, frontend.clip_samples)
    return np.stack([
        fit_length(random_field_augment(wave, frontend.sample_rate, np.random.default_rng([seed, k, i]), p=p),
                   frontend.clip_samples)
        for k in range(n_copies)
    ])


def _build(entry: Path, dataset: ESC50, frontend: FrontendConfig, n_copies: int, seed: int, p: float,
           dtype: str, batch_size: int, workers: int, progress: bool) -> None:
    from tqdm import tqdm

    start = time.perf_counter()
    n = len(dataset)
    logmel = LogMel(frontend)
    shape = (n_copies * n, 1, frontend.n_mels, frontend.n_frames)
    with atomic_dir(entry) as tmp:
        out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=dtype, shape=shape)
        bar = tqdm(total=n, desc=f"field-augmenting x{n_copies}", unit="clip", disable=not progress)
        with ThreadPoolExecutor(max_workers=max(1, min(workers, os.cpu_count() or 1))) as pool:
            for lo in range(0, n, batch_size):
                ids = range(lo, min(n, lo + batch_size))
                waves = list(pool.map(lambda i: _corrupted(dataset.files[i], i, frontend, n_copies, seed, p), ids))
                for k in range(n_copies):
                    batch = np.stack([w[k] for w in waves])
                    feats = logmel(torch.from_numpy(batch)).numpy()
                    out[k * n + lo : k * n + lo + len(batch)] = feats.astype(dtype)
                bar.update(len(waves))
        bar.close()
        out.flush()
        del out
        meta = {
            "cache_version": CACHE_VERSION,
            "clip_ids": [f"{cid}#aug{k}" for k in range(n_copies) for cid in dataset.clip_ids],
            "labels": np.tile(dataset.labels, n_copies).tolist(),
            "folds": np.tile(dataset.folds, n_copies).tolist(),
            "classes": dataset.classes,
            "frontend": frontend.to_dict(),
            "info": {
                "dtype": dtype,
                "shape": list(shape),
                "seconds": round(time.perf_counter() - start, 2),
                "bytes": (tmp / "features.npy").stat().st_size,
                "data_root": str(dataset.root),
                "data_fingerprint": dataset.fingerprint(),
                "augment": {"fn": "tympan.corruptions.random_field_augment", "version": AUGMENT_VERSION,
                            "n_copies": n_copies, "seed": seed, "p": p},
            },
        }
        (tmp / "meta.json").write_text(json.dumps(meta))


# --------------------------------------------------------------------------------------------
# On-the-fly field augmentation in the log-mel domain (device tensors, no waveform needed)
# --------------------------------------------------------------------------------------------

#: ESC-50 classes whose recordings are stationary, noise-like backgrounds; training clips of
#: these (training folds only) are the "real noise" mixed in at a random SNR.
NOISE_LIKE_CLASSES = (
    "rain", "sea_waves", "crackling_fire", "wind", "pouring_water", "water_drops", "engine",
    "airplane", "vacuum_cleaner", "washing_machine", "helicopter", "train", "chainsaw", "hand_saw",
    "toilet_flush", "keyboard_typing", "clock_tick", "insects", "frog", "crickets", "brushing_teeth",
)
#: Noise colours by spectral slope: power density proportional to f^-beta.
COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0, "blue": -1.0}
FILTERS = ("lowpass", "telephone", "resample", "highpass", "eq", "codec")


@dataclass(frozen=True)
class MelFieldConfig:
    """Field conditions simulated on log-mel batches; every ``p_*`` is a per-example probability.

    Each op works on the mel *power* (the log-mel undone with the front end's norm and
    offset), so its effect is what the same change to the audio would do to the features:

    - ``noise``: additive noise at an SNR in ``snr_db``, coloured (white/pink/brown/blue shaped
      through the front end's pre-emphasis and mel banks) or, with ``p_real_noise``, a random
      noise-like training clip (:data:`NOISE_LIKE_CLASSES`; training folds only). The SNR is that
      of the de-emphasised band powers (:meth:`MelFieldAugment.snr_db` measures it).
    - ``background``: a quiet noise floor (SNR in ``background_snr_db``): what fills the digital
      silence between events in field audio.
    - ``filter``: one band-limitation per example: low-pass (2-7 kHz, 8th order, zero phase),
      telephone band (300-3400 Hz), resampling to 8 / 11.025 kHz (brick wall at 0.95 x Nyquist),
      high-pass (100-500 Hz), a random smooth EQ (+-6 dB), or a codec-like low-pass (3-8 kHz) with
      signal-shaped quantisation noise (15-30 dB).
    - ``gain``: a level change in ``gain_db`` applied to the power (so the log floor acts as it
      does on quiet audio).
    - ``reverb``: exponential decay along time per band (RT60, direct-to-reverberant ratio).
    """

    p_noise: float = 0.0
    snr_db: tuple[float, float] = (0.0, 30.0)
    colours: tuple[str, ...] = ("white", "pink", "brown", "blue")
    p_real_noise: float = 0.5
    p_background: float = 0.0
    background_snr_db: tuple[float, float] = (25.0, 45.0)
    p_filter: float = 0.0
    filters: tuple[str, ...] = FILTERS
    p_gain: float = 0.0
    gain_db: tuple[float, float] = (-30.0, 12.0)
    p_reverb: float = 0.0
    rt60: tuple[float, float] = (0.2, 1.0)
    drr_db: tuple[float, float] = (0.0, 10.0)

    @property
    def enabled(self) -> bool:
        return any(p > 0 for p in (self.p_noise, self.p_background, self.p_filter, self.p_gain, self.p_reverb))

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> MelFieldConfig:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})

    @classmethod
    def robust(cls) -> MelFieldConfig:
        """The ``robust`` recipe's setting (the shipped model's)."""
        return cls(p_noise=0.4, p_background=0.3, p_filter=0.4, p_gain=0.3, p_reverb=0.2)

    def validate(self) -> None:
        for name in ("p_noise", "p_real_noise", "p_background", "p_filter", "p_gain", "p_reverb"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"field augmentation {name} must be in [0, 1]")
        bad = [c for c in self.colours if c not in COLOURS] + [f for f in self.filters if f not in FILTERS]
        if bad or not self.colours or not self.filters:
            raise ValueError(f"field augmentation: unknown colour/filter {bad}; known {list(COLOURS)}, {list(FILTERS)}")


def _butter2(f: Tensor, cutoff: Tensor, order: int, high: bool = False) -> Tensor:
    """|H|^2 of a Butterworth low/high-pass at ``cutoff`` (per row) over frequencies ``f``."""
    ratio = (cutoff[:, None] / f.clamp_min(1.0)[None]) if high else (f[None] / cutoff[:, None])
    return 1.0 / (1.0 + ratio.clamp(max=1e6) ** (2 * order))


class MelFieldAugment:
    """Field augmentation of normalised log-mel batches ``(B, 1, n_mels, frames)``, on their device.

    Random numbers come from ``generator`` (a generator on the batch's device, seeded by the
    training loop from its CPU generator once per epoch), so a seeded run is reproducible.
    ``noise_bank`` is an optional tensor of normalised log-mels of noise-like *training* clips.
    """

    def __init__(self, cfg: MelFieldConfig, frontend: FrontendConfig, device: torch.device | str = "cpu",
                 noise_bank: Tensor | None = None) -> None:
        from tympan.features import mel_filterbank

        cfg.validate()
        self.cfg, self.fe, self.device = cfg, frontend, torch.device(device)
        w = torch.from_numpy(mel_filterbank(frontend)).double()  # (M, K)
        k = w.shape[1]
        self.freqs = torch.linspace(0, frontend.sample_rate / 2, k, dtype=torch.float64)
        omega = 2 * math.pi * self.freqs / frontend.sample_rate
        pre = (1 + frontend.preemphasis**2 - 2 * frontend.preemphasis * torch.cos(omega)) if frontend.preemphasis \
            else torch.ones(k, dtype=torch.float64)
        colsum = w.sum(0)
        share = torch.where(colsum > 0, w / colsum.clamp_min(1e-12), torch.zeros_like(w)).sum(1)  # bins owned
        weighted = w @ pre  # band response to a flat spectrum (with pre-emphasis)
        self.a = (share / weighted.clamp_min(1e-12)).float().to(self.device)  # band power -> linear power
        self.w = w.float().to(self.device)
        self.w_pre = (w * pre[None]).float().to(self.device)
        self.w_pre_sum = self.w_pre.sum(1).clamp_min(1e-12)
        self.fk = self.freqs.float().to(self.device)
        f_pos = self.freqs.clone()
        f_pos[0] = f_pos[1]
        prof = []
        for name in cfg.colours:
            s = f_pos ** (-COLOURS[name])
            s[0] = 0.0
            s = s / s[1:].sum()  # unit linear power
            prof.append((w * pre[None]) @ s)  # (M,)
        self.colour_profiles = torch.stack(prof).float().to(self.device)  # (C, M)
        eff = (w.sum(1) ** 2 / (w**2).sum(1).clamp_min(1e-12)).clamp_min(1.0)  # bins per band
        self.jitter_sigma = torch.sqrt(torch.log1p(1.0 / eff)).float().to(self.device)  # (M,)
        self.noise_bank = None if noise_bank is None or len(noise_bank) == 0 else noise_bank.to(self.device)

    # -- domain conversions ------------------------------------------------------------------
    def to_power(self, z: Tensor) -> Tensor:
        fe = self.fe
        return (torch.exp(z.float() * fe.norm_std + fe.norm_mean) - fe.log_offset).clamp_min(0.0)

    def to_logmel(self, p: Tensor) -> Tensor:
        fe = self.fe
        return (torch.log(p + fe.log_offset) - fe.norm_mean) / fe.norm_std

    def linear_power(self, p: Tensor) -> Tensor:
        """Per-example de-emphasised power (what the SNR is measured in): ``sum_m a_m P_m`` / frames."""
        return (p * self.a.view(1, 1, -1, 1)).sum(dim=(1, 2, 3)) / p.shape[-1]

    def snr_db(self, clean_z: Tensor, noisy_z: Tensor) -> Tensor:
        """SNR of ``noisy`` against ``clean`` log-mels (both normalised), per example, in dB."""
        pc, pn = self.to_power(clean_z), self.to_power(noisy_z)
        return 10 * torch.log10(self.linear_power(pc) / self.linear_power(pn - pc).clamp_min(1e-30))

    def band_gain(self, h2: Tensor) -> Tensor:
        """Mel-band power gains ``(B, M)`` of per-example frequency responses ``|H|^2`` ``(B, K)``."""
        return (h2 @ self.w_pre.T) / self.w_pre_sum[None]

    # -- random helpers ------------------------------------------------------------------------
    # Per-example decisions and parameters come from the CPU generator (a few numbers per
    # example, moved to the device without a host sync); per-element noise from ``dev_gen``.
    def _u(self, n: int, gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> Tensor:
        return (lo + (hi - lo) * torch.rand(n, generator=gen)).to(self.device, non_blocking=True)

    def _i(self, high: int, n: int, gen: torch.Generator) -> Tensor:
        return torch.randint(high, (n,), generator=gen).to(self.device, non_blocking=True)

    def _noise_power(self, p: Tensor, snr: Tensor, gen: torch.Generator, dev_gen: torch.Generator) -> Tensor:
        b, m, t = p.shape[0], p.shape[2], p.shape[3]
        n = self.colour_profiles[self._i(len(self.cfg.colours), b, gen)].view(b, 1, m, 1)
        z = torch.randn(b, 1, m, t, generator=dev_gen, device=self.device)
        sig = self.jitter_sigma.view(1, 1, m, 1)
        n = n * torch.exp(sig * z - sig**2 / 2)  # per-frame fluctuation of a noise's band power
        if self.noise_bank is not None:
            use_real = torch.rand(b, generator=gen) < self.cfg.p_real_noise
            pick = self._i(len(self.noise_bank), b, gen)
            shift = self._i(t, b, gen)
            if bool(use_real.any()):  # a CPU tensor: no device sync
                r = torch.nonzero(use_real).to(self.device).flatten()
                real = self.to_power(self.noise_bank[pick[r]])
                idx = (torch.arange(t, device=self.device)[None] - shift[r][:, None]) % t
                n[r] = torch.gather(real, 3, idx[:, None, None, :].expand_as(real))
        ps, pn = self.linear_power(p), self.linear_power(n).clamp_min(1e-30)
        scale = ps / (pn * 10 ** (snr / 10))
        return n * scale.view(b, 1, 1, 1)

    def _filter(self, p: Tensor, gen: torch.Generator, dev_gen: torch.Generator) -> Tensor:
        """One band-limitation per example (see :class:`MelFieldConfig`)."""
        b, f = p.shape[0], self.fk
        kinds = torch.tensor([FILTERS.index(k) for k in self.cfg.filters])
        kind = kinds[torch.randint(len(kinds), (b,), generator=gen)]  # CPU
        nyq = self.fe.sample_rate / 2
        lp_fc = self._u(b, gen, 2000.0, 7000.0).clamp(max=0.95 * nyq)
        rate = torch.tensor([8000.0, 11025.0])[torch.randint(2, (b,), generator=gen)].to(self.device)
        hp_fc = self._u(b, gen, 100.0, 500.0)
        gains_db = self._u(b * 6, gen, -6.0, 6.0).view(b, 6)
        codec_fc = self._u(b, gen, 3000.0, 8000.0).clamp(max=0.95 * nyq)
        qsnr = self._u(b, gen, 15.0, 30.0)
        h2 = torch.ones(b, f.shape[0], device=self.device)
        for code in kind.unique().tolist():
            rows = torch.nonzero(kind == code).to(self.device).flatten()
            name = FILTERS[code]
            if name == "lowpass":
                h = _butter2(f, lp_fc[rows], 8) ** 2  # zero phase (filtfilt): |H|^4 in power
            elif name == "telephone":
                n = len(rows)
                hi = torch.full((n,), min(3400.0, 0.98 * nyq), device=self.device)
                h = (_butter2(f, hi, 4) * _butter2(f, torch.full((n,), 300.0, device=self.device), 4, high=True)) ** 2
            elif name == "resample":
                h = (f[None] <= 0.95 * rate[rows][:, None] / 2).float() + 1e-6
            elif name == "highpass":
                h = _butter2(f, hp_fc[rows], 4, high=True) ** 2
            elif name == "eq":
                logc = torch.linspace(math.log(50.0), math.log(nyq), 6, device=self.device)
                logf = torch.log(f.clamp_min(1.0))
                pos = torch.bucketize(logf, logc).clamp(1, 5)
                frac = ((logf - logc[pos - 1]) / (logc[pos] - logc[pos - 1])).clamp(0, 1)
                g = gains_db[rows]
                h = 10 ** ((g[:, pos - 1] * (1 - frac) + g[:, pos] * frac) / 10)
            else:  # codec: steep low-pass + signal-shaped quantisation noise
                h = _butter2(f, codec_fc[rows], 16)
            h2[rows] = h
        q = p * self.band_gain(h2).view(b, 1, -1, 1)
        is_codec = kind == FILTERS.index("codec")
        if bool(is_codec.any()):
            rows = torch.nonzero(is_codec).to(self.device).flatten()
            qc = q[rows]
            jitter = torch.exp(torch.randn(qc.shape, generator=dev_gen, device=self.device) - 0.5)
            q[rows] = qc + qc * 10 ** (-qsnr[rows].view(-1, 1, 1, 1) / 10) * jitter
        return q

    def _reverb(self, p: Tensor, gen: torch.Generator) -> Tensor:
        b, _, m, t = p.shape
        frame_s = self.fe.hop_length / self.fe.sample_rate
        rt60 = self._u(b, gen, *self.cfg.rt60)
        drr = self._u(b, gen, *self.cfg.drr_db)
        k = torch.arange(t, device=self.device, dtype=torch.float32)
        tail = torch.exp(-6 * math.log(10) * k[None] * frame_s / rt60[:, None])  # energy decay
        tail[:, 0] = 0.0
        tail = tail / tail.sum(1, keepdim=True).clamp_min(1e-12) * 10 ** (-drr[:, None] / 10)
        h = tail.clone()
        h[:, 0] = 1.0
        n = 2 * t
        wet = torch.fft.irfft(torch.fft.rfft(p, n=n) * torch.fft.rfft(h, n=n).view(b, 1, 1, -1), n=n)[..., :t]
        wet = wet.clamp_min(0.0)
        keep = self.linear_power(p) / self.linear_power(wet).clamp_min(1e-30)
        return wet * keep.view(b, 1, 1, 1)

    def __call__(self, z: Tensor, gen: torch.Generator, dev_gen: torch.Generator | None = None) -> Tensor:
        """Augment ``z``; ``gen`` is a CPU generator, ``dev_gen`` one on ``z``'s device (default ``gen``).

        Which examples get which op is decided on the CPU, so only the chosen examples are
        computed (cost proportional to the probabilities) and nothing waits for the device.
        """
        cfg = self.cfg
        if not cfg.enabled:
            return z
        dev_gen = gen if dev_gen is None else dev_gen
        b = z.shape[0]
        probs = (cfg.p_reverb, cfg.p_filter, cfg.p_noise, cfg.p_background, cfg.p_gain)
        on = torch.rand(len(probs), b, generator=gen) < torch.tensor(probs)[:, None]  # CPU
        sel = torch.nonzero(on.any(0)).flatten()
        if len(sel) == 0:
            return z
        on = on[:, sel]
        sel_d = sel.to(self.device)
        p = self.to_power(z[sel_d])
        for op in range(len(probs)):
            rows = torch.nonzero(on[op]).flatten()
            if len(rows) == 0:
                continue
            r = rows.to(self.device)
            sub = p[r]
            if op == 0:
                sub = self._reverb(sub, gen)
            elif op == 1:
                sub = self._filter(sub, gen, dev_gen)
            elif op in (2, 3):
                lo, hi = cfg.snr_db if op == 2 else cfg.background_snr_db
                sub = sub + self._noise_power(sub, self._u(len(rows), gen, lo, hi), gen, dev_gen)
            else:
                db = self._u(len(rows), gen, *cfg.gain_db)
                sub = sub * 10 ** (db.view(-1, 1, 1, 1) / 10)
            p[r] = sub
        out = z.clone()
        out[sel_d] = self.to_logmel(p).to(z.dtype)
        return out


def noise_bank_rows(features: Any, train_idx: np.ndarray) -> np.ndarray:
    """Rows of ``train_idx`` whose class is noise-like (:data:`NOISE_LIKE_CLASSES`): the real-noise bank."""
    noisy = [i for i, c in enumerate(features.classes) if c in NOISE_LIKE_CLASSES]
    train_idx = np.asarray(train_idx)
    return np.sort(train_idx[np.isin(features.labels[train_idx], noisy)])
