"""The one front end: agrees with librosa, batches, round-trips its config."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from tympan.features import FrontendConfig, LogMel, kaldi_mel_banks


def noise(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, n).astype(np.float32)


@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
def test_matches_librosa_melspectrogram(mel_scale: str) -> None:
    cfg = FrontendConfig(mel_scale=mel_scale, mel_norm="slaney" if mel_scale == "slaney" else None)
    y = noise(cfg.clip_samples)
    ours = LogMel(cfg)(torch.from_numpy(y))[0, 0].numpy()
    ref = librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        window="hann", center=True, pad_mode="constant", power=2.0, n_mels=cfg.n_mels,
        fmin=cfg.f_min, fmax=cfg.f_max, htk=mel_scale == "htk", norm=cfg.mel_norm,
    )
    ref = np.log(ref + cfg.log_offset)
    assert ours.shape == ref.shape == (cfg.n_mels, cfg.n_frames)
    # Stated tolerance: 1e-3 absolute on natural-log mel power (float32 FFT vs librosa's).
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_shape_batching_and_determinism() -> None:
    cfg = FrontendConfig()
    lm = LogMel(cfg)
    batch = torch.from_numpy(np.stack([noise(cfg.clip_samples, s) for s in range(3)]))
    out = lm(batch)
    assert out.shape == (3, 1, 64, 251) == (3, 1, cfg.n_mels, cfg.n_frames)
    for i in range(3):
        torch.testing.assert_close(lm(batch[i]), out[i : i + 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lm(batch), out, rtol=0, atol=0)


def test_efficientat_preset_shape_and_range() -> None:
    cfg = FrontendConfig.efficientat()
    assert cfg.n_frames == 500  # pre-emphasis drops one sample: 1 + 159999 // 320
    out = LogMel(cfg)(torch.from_numpy(noise(cfg.clip_samples)))
    assert out.shape == (1, 1, 128, 500)
    # silence maps to (log(1e-5) + 4.5) / 5 = -1.40; the normalised range sits around [-1.4, 3]
    silent = LogMel(cfg)(torch.zeros(cfg.clip_samples))
    assert float(silent.max()) == pytest.approx((np.log(1e-5) + 4.5) / 5, abs=1e-4)


def test_kaldi_banks_are_triangles_with_zero_nyquist() -> None:
    banks = kaldi_mel_banks(128, 1024, 32_000, 0.0, 15_000.0)
    assert banks.shape == (128, 513)
    assert np.all(banks[:, -1] == 0) and banks.min() >= 0 and banks.max() <= 1
    peaks = banks.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0)  # centres rise with the band index
    assert banks[:, peaks.max() + 40 :].sum() == 0  # nothing above f_max


def test_config_round_trip_and_validation() -> None:
    cfg = FrontendConfig.efficientat()
    assert FrontendConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown front-end config keys: bogus"):
        FrontendConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="f_min < f_max"):
        FrontendConfig(f_max=20_000)
    assert FrontendConfig().fingerprint() != FrontendConfig(n_mels=128).fingerprint()
