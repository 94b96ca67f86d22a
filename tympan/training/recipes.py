"""Named training recipes: what ``tympan train --recipe NAME`` sets on top of an architecture's defaults.

- ``baseline``: the recipe the shipped model up to 2026-11 was trained with (AdamW + one-cycle,
  label smoothing, Mixup, SpecAugment, roll, gain; no field augmentation). Kept so that its
  numbers can be reproduced by name.
- ``robust`` (default): ``baseline`` plus on-the-fly field augmentation of the log-mels
  (:class:`~tympan.training.field_augment.MelFieldConfig.robust`: noise of four colours and
  real noise-like training clips at 0-30 dB SNR, a quiet background floor, band-limiting /
  telephone / resampling / codec-like filtering, EQ, gain -30..+12 dB, reverberation).
  Waveform-level copies (codec round trips through real encoders) are added with
  ``--field-augment N``.
"""

from __future__ import annotations

import dataclasses

from tympan.training.field_augment import MelFieldConfig
from tympan.training.loop import TrainConfig, TrainingConfigError

RECIPES: dict[str, str] = {
    "baseline": "arch defaults: AdamW + one-cycle, label smoothing, Mixup, SpecAugment, roll, gain",
    "robust": "baseline + log-mel field augmentation (noise, background, band limits, codecs, gain, reverb)",
}
DEFAULT_RECIPE = "robust"


def apply_recipe(config: TrainConfig, name: str) -> TrainConfig:
    """``config`` with recipe ``name`` applied (a new object; the input is left alone)."""
    if name not in RECIPES:
        raise TrainingConfigError(f"--recipe {name!r}: expected one of {', '.join(RECIPES)}")
    field_mel = MelFieldConfig.robust() if name == "robust" else MelFieldConfig()
    return dataclasses.replace(config, field_mel=field_mel, recipe=name)
