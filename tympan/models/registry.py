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

Everything else tympan knows about an architecture (its default front end, training
defaults, classifier head, optimizer groups, pretrained weights) lives in one
:class:`ArchSpec`, registered together with the class by :func:`register_model`.
``tests/test_models_contract.py`` checks every registered spec against its model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from torch import nn


class ParamGroupsFn(Protocol):
    """Optimizer param groups for ``model`` (AdamW dicts with ``params``, ``lr``, ``name``)."""

    def __call__(
        self,
        model: nn.Module,
        base_lr: float,
        *,
        weight_decay: float = 0.0,
        layer_decay: float = 1.0,
        pretrained: bool = False,
    ) -> list[dict[str, Any]]: ...


#: ``loader(model, init, skip_prefixes)``: resolve ``init`` (a name, URL or path), load it into
#: ``model`` leaving parameters under ``skip_prefixes`` (the new head) as initialised.
PretrainedLoader = Callable[[nn.Module, str, tuple[str, ...]], nn.Module]

#: ``tympan train`` defaults for an architecture that declares none (the from-scratch recipe).
DEFAULT_TRAIN_DEFAULTS: Mapping[str, Any] = MappingProxyType({"epochs": 40, "batch_size": 32, "lr": 2e-3})


def uniform_param_groups(
    model: nn.Module,
    base_lr: float,
    *,
    weight_decay: float = 0.0,
    layer_decay: float = 1.0,
    pretrained: bool = False,
) -> list[dict[str, Any]]:
    """One learning rate for every parameter; weight decay on matrices/kernels only (not 1-d)."""
    del layer_decay, pretrained  # one lr for all: nothing is layer-wise here
    decayed = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [
        {"name": "weights", "params": decayed, "lr": base_lr, "weight_decay": weight_decay},
        {"name": "no_decay", "params": plain, "lr": base_lr, "weight_decay": 0.0},
    ]


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, eq=False)
class ArchSpec:
    """Everything tympan knows about one architecture, in one place.

    Why: training, the CLI, pretrained loading and adaptation each used to branch on the
    architecture's name; a new architecture had to be taught to every one of them. With a
    spec, adding one is a class plus its :func:`register_model` line, and the contract test
    covers it automatically. Frozen, so no caller can change another's view of an arch.
    """

    #: the name in ``--arch`` and ``bundle.json``
    name: str
    #: the model class (or any ``(n_classes, **params) -> nn.Module`` callable)
    factory: Callable[..., nn.Module]
    #: default front end: anything :meth:`tympan.features.FrontendConfig.from_spec` accepts
    frontend: str = "default"
    #: :class:`~tympan.training.loop.TrainConfig` field values ``tympan train`` starts from
    train_defaults: Mapping[str, Any] = field(default_factory=lambda: DEFAULT_TRAIN_DEFAULTS)
    #: further overrides when fine-tuning from pretrained weights (``--init``)
    finetune_defaults: Mapping[str, Any] = field(default_factory=dict)
    #: parameter-name prefixes of the output layer: the parameters whose shape depends on
    #: ``n_classes``, left out of a pretrained checkpoint and re-initialised for a new label set
    head_prefixes: tuple[str, ...] = ()
    #: modules ``classify`` uses (the head that labelled adaptation fine-tunes); empty: the
    #: last ``nn.Linear``
    head_modules: tuple[str, ...] = ()
    #: optimizer param groups (see :class:`ParamGroupsFn`); the default is one lr for all
    param_groups: ParamGroupsFn = uniform_param_groups
    #: loads ``--init`` weights; ``None``: the architecture trains from scratch only
    pretrained: PretrainedLoader | None = None
    #: smallest batch from which ``--precision auto`` trains under bfloat16 on a CPU that has it
    #: natively: depthwise convolutions (mn04) ran slower under bf16 than in fp32 at batch 32 on
    #: both bf16 CPUs measured (``benchmarks/results/train_speed*.json``), faster at batch 128
    cpu_bf16_min_batch: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_defaults", _frozen(self.train_defaults))
        object.__setattr__(self, "finetune_defaults", _frozen(self.finetune_defaults))
        object.__setattr__(self, "head_prefixes", tuple(self.head_prefixes))
        object.__setattr__(self, "head_modules", tuple(self.head_modules))

    def training_defaults(self, pretrained: bool = False) -> dict[str, Any]:
        """``train_defaults``, with ``finetune_defaults`` on top when ``pretrained``."""
        out = dict(self.train_defaults)
        if pretrained:
            out.update(self.finetune_defaults)
        return out

    def build(self, n_classes: int, **params: Any) -> nn.Module:
        return self.factory(n_classes=n_classes, **params)


_REGISTRY: dict[str, ArchSpec] = {}


class UnknownArchitectureError(KeyError):
    """Raised for an architecture name nobody registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def register_model(
    name: str,
    *,
    frontend: str = "default",
    train_defaults: Mapping[str, Any] = DEFAULT_TRAIN_DEFAULTS,
    finetune_defaults: Mapping[str, Any] | None = None,
    head_prefixes: tuple[str, ...] = (),
    head_modules: tuple[str, ...] = (),
    param_groups: ParamGroupsFn = uniform_param_groups,
    pretrained: PretrainedLoader | None = None,
    cpu_bf16_min_batch: int = 1,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Class decorator: make ``name`` buildable by :func:`build_model`, with its :class:`ArchSpec`.

    The keyword arguments are the spec's fields (see :class:`ArchSpec`).
    """

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        register_spec(ArchSpec(
            name=name,
            factory=factory,
            frontend=frontend,
            train_defaults=train_defaults,
            finetune_defaults=finetune_defaults or {},
            head_prefixes=head_prefixes,
            head_modules=head_modules,
            param_groups=param_groups,
            pretrained=pretrained,
            cpu_bf16_min_batch=cpu_bf16_min_batch,
        ))
        return factory

    return wrap


def register_spec(spec: ArchSpec) -> ArchSpec:
    """Register a ready-made :class:`ArchSpec` (what :func:`register_model` does for a class)."""
    old = _REGISTRY.get(spec.name)
    if old is not None and old.factory is not spec.factory:
        raise ValueError(f"architecture {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    _import_builtin_models()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``name``; unknown names fail with the list of known ones."""
    _import_builtin_models()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None


def build_model(name: str, n_classes: int, **params: Any) -> nn.Module:
    """Instantiate architecture ``name``; unknown names fail with the list of known ones."""
    return get_spec(name).build(n_classes=n_classes, **params)


def _import_builtin_models() -> None:
    """Import the modules that register tympan's own architectures (idempotent)."""
    import importlib
    import pkgutil

    import tympan.models as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "registry" and not info.name.startswith("_"):
            importlib.import_module(f"tympan.models.{info.name}")
