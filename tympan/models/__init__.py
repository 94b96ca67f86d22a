"""CNN architectures on log-mel input, built by name (see :mod:`tympan.models.registry`)."""

from tympan.models.registry import (
    UnknownArchitectureError,
    available_models,
    build_model,
    register_model,
)

__all__ = ["UnknownArchitectureError", "available_models", "build_model", "register_model"]
