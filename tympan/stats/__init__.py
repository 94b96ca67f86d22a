"""Statistics for distrusting a classifier: arrays in, numbers out (no model, no audio files).

* :mod:`.confusion` -- confusion matrix, per-class scores, most-confused pairs.
* :mod:`.calibration` -- ECE / adaptive ECE / MCE / Brier / NLL, reliability curve.
* :mod:`.temperature` -- temperature scaling and leave-one-group-out cross-fitting.
* :mod:`.ood` -- energy and max-softmax OOD scores (higher = more OOD), metrics.
* :mod:`.acoustic` -- per-clip acoustic descriptors (librosa).
* :mod:`.drift` -- train-vs-field drift with effect-size-gated verdicts.
* :mod:`.event_scores` -- event-based precision/recall/F1 of sound events (onset collar).

Everything fitted follows scikit-learn's conventions (``fit`` returns ``self``, fitted state
ends in ``_``). The pipelines that use these on bundles and folders live in
:mod:`tympan.diagnostics`.
"""
