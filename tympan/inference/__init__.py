"""Inference: the one path from audio to a typed, calibrated prediction.

- :mod:`.prediction`: window logits -> per-window and per-recording answer (calibrated top-k,
  energy OOD score and flag, uncertainty), for one recording or many. Pure arrays; defined once.
- :mod:`.predictor`: :class:`Predictor`, audio -> windows -> bundle front end -> model ->
  :mod:`.prediction`; shared by the HTTP API, ``tympan predict``, ``diagnose`` and adaptation.
- :mod:`.events`: window predictions -> sound events (hysteresis, minimum duration, merge gap),
  streaming and batch; the one definition.
- :mod:`.saliency`: what the network saw and where it looked (feature maps, Grad-CAM).
"""

from tympan.inference.prediction import (
    AGGREGATE,
    NO_THRESHOLD_NOTE,
    RecordingScores,
    TrustParams,
    UncertaintyPolicy,
    aggregate,
    predict_recording,
    uncertain_mask,
    uncertainty_reasons,
)
from tympan.inference.predictor import DEFAULT_MAX_SAMPLES, EmbedAndClassify, Predictor, Prepared, bundle_version

__all__ = [
    "AGGREGATE",
    "DEFAULT_MAX_SAMPLES",
    "NO_THRESHOLD_NOTE",
    "EmbedAndClassify",
    "Predictor",
    "Prepared",
    "RecordingScores",
    "TrustParams",
    "UncertaintyPolicy",
    "aggregate",
    "bundle_version",
    "predict_recording",
    "uncertain_mask",
    "uncertainty_reasons",
]
