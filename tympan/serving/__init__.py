"""HTTP serving: FastAPI app (``create_app``), micro-batcher, settings, metrics, Modal deployment.

The contract it implements is ``docs/api.md``; the model work itself is
:class:`tympan.inference.Predictor`, shared with ``tympan predict``.
"""
