"""Typed JSON contracts (pydantic v2) shared by the producers and the readers of each document.

One definition per document: :mod:`.prediction` (``/predict``, ``/explain``, what the one
prediction path returns). Producers validate what they write; readers parse with the same
models, so a change to a contract shows up as a type error, not as a silently missing field.
"""
