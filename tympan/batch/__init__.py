"""Field archives: folders of recordings of any length, classified window by window into tables.

- :mod:`.sources`: files and folders -> the recordings to analyse (recursive; hidden files and
  non-audio skipped and counted; start time and site of each).
- :mod:`.stream`: a recording decoded in blocks (:func:`tympan.audio.iter_audio_blocks`) ->
  batches of model windows, memory flat whatever the length.
- :mod:`.engine`: windows -> :meth:`tympan.inference.Predictor.forward` (in this process, or
  features computed by worker processes and the network batched here) -> per-file
  :class:`FileResult` with window logits and embeddings.
- :mod:`.tables`: per-window rows (from :func:`tympan.inference.predict_recording`'s typed
  ``WindowPrediction`` and :func:`tympan.inference.aggregate`), summaries, and the CSV /
  Parquet / Raven / Audacity writers with a resume ledger.

``tympan predict`` (:mod:`.cli`) and ``diagnose --field-dir`` both run on this engine.
"""

from tympan.batch.engine import BatchOptions, FileResult, run_batch
from tympan.batch.sources import Source, SourceScan, scan_sources

__all__ = ["BatchOptions", "FileResult", "Source", "SourceScan", "run_batch", "scan_sources"]
