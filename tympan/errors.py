"""Error types every entry point maps to a clear message (CLI exit 2, HTTP 4xx)."""

from __future__ import annotations


class TympanError(Exception):
    """Base of tympan's user-facing errors: the message alone must tell what is wrong."""


class AudioError(TympanError, ValueError):
    """Audio that cannot be used; subclasses say why."""

    #: short machine-readable reason, used as the ``error`` field of HTTP responses
    code = "bad_audio"


class EmptyAudioError(AudioError):
    code = "empty_audio"


class NotAudioError(AudioError):
    code = "not_audio"


class TruncatedAudioError(AudioError):
    code = "truncated_audio"


class NonFiniteAudioError(AudioError):
    code = "non_finite_samples"


class SampleRateError(AudioError):
    code = "bad_sample_rate"


class SampleRangeError(AudioError):
    """Finite samples far outside any audio level (float files holding other data)."""

    code = "samples_out_of_range"


class AudioTooLongError(AudioError):
    code = "audio_too_long"


class DataError(TympanError):
    """A data set folder that is missing, incomplete or inconsistent."""


class BundleError(TympanError):
    """A model bundle that is missing, of another format version, or inconsistent."""


class OutputError(TympanError):
    """An output that cannot be written without destroying something (an input, a device, a folder)."""
