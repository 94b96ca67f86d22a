"""Typed JSON contracts (pydantic v2) shared by the producers and the readers of each document.

One definition per document:

* :mod:`.prediction` -- ``/predict``, ``/explain``, what the one prediction path returns.
* :mod:`.diagnostics` -- the bundle's held-out diagnostics block (``bundle.extra["diagnostics"]``,
  ``GET /model`` → ``"diagnostics"``): :class:`~.diagnostics.Diagnostics`.
* :mod:`.report` -- ``report.json`` of ``diagnose``: :class:`~.report.DiagnoseReport`.
* :mod:`.runtime` -- a runtime cache entry (exported graph's check, backend choice): :class:`~.runtime.RuntimeEntry`.

Producers validate what they write; readers parse with the same models, so a change to a
contract shows up as a validation error naming the field, not as a silently missing one.
"""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["contract_errors"]


def contract_errors(exc: ValidationError, limit: int = 5) -> str:
    """A :class:`pydantic.ValidationError` as one line: ``path.to.field: message; ...``."""
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        where = ".".join(str(p) for p in err["loc"]) or "(document)"
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
