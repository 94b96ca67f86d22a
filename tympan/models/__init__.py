"""CNN architectures on log-mel input, built by name (see :mod:`tympan.models.registry`)."""

from tympan.models.registry import (
    ArchSpec,
    UnknownArchitectureError,
    available_models,
    build_model,
    get_spec,
    register_model,
    register_spec,
    uniform_param_groups,
)

__all__ = [
    "ArchSpec",
    "UnknownArchitectureError",
    "available_models",
    "build_model",
    "get_spec",
    "register_model",
    "register_spec",
    "uniform_param_groups",
]
