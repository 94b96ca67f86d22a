"""Model registry: architectures by name, so a bundle.json rebuilds the exact network.

Every registered model follows one small protocol, which training, serving, diagnostics and
the dashboard rely on (and nothing else):

- ``__init__(n_classes: int, **params)`` with JSON-serialisable ``params`` (they are stored in
  ``bundle.json`` under ``architecture.params``);
- ``forward(x)`` maps log-mels ``(B, 1, n_mels, frames)`` to logits ``(B, n_classes)``;
- ``embed(x)`` returns the penultimate embedding ``(B, D)`` (drift and OOD use it);
- ``classify(e)`` maps that embedding to logits, so ``forward(x) == classify(embed(x))``;
- ``stages``: names of submodules (``dict(model.named_modules())`` keys) whose outputs are the
  feature maps drawn by interpretability tools, in order from input to output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class UnknownArchitectureError(KeyError):
    """Raised for an architecture name nobody registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator: make ``name`` buildable by :func:`build_model`."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    _import_builtin_models()
    return sorted(_REGISTRY)


def build_model(name: str, n_classes: int, **params: Any) -> nn.Module:
    """Instantiate architecture ``name``; unknown names fail with the list of known ones."""
    _import_builtin_models()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None
    return factory(n_classes=n_classes, **params)


def _import_builtin_models() -> None:
    """Import the modules that register tympan's own architectures (idempotent)."""
    import importlib
    import pkgutil

    import tympan.models as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "registry" and not info.name.startswith("_"):
            importlib.import_module(f"tympan.models.{info.name}")
