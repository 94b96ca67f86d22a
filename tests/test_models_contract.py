"""The model protocol and ArchSpec contract, checked for EVERY registered architecture.

Parametrised from the registry, so an architecture registered tomorrow is covered without
editing this file: its model must satisfy the protocol in :mod:`tympan.models.registry`, and
its :class:`~tympan.models.registry.ArchSpec` must describe that model truthfully (head
prefixes, param groups, training defaults, front end).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from tympan.adaptation.finetune import head_prefixes as finetune_head
from tympan.features import FrontendConfig
from tympan.models import ArchSpec, available_models, build_model, get_spec
from tympan.training.loop import TrainConfig

ARCHS = available_models()
N_CLASSES = 5
BATCH = 2
MAX_FRAMES = 256  # a shorter time axis than a 5 s clip keeps this fast; every arch pools over time


@pytest.fixture(params=ARCHS)
def spec(request: pytest.FixtureRequest) -> ArchSpec:
    return get_spec(request.param)


def _model(spec: ArchSpec, n_classes: int = N_CLASSES, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec.name, n_classes=n_classes).eval()


def _batch(spec: ArchSpec) -> torch.Tensor:
    fe = FrontendConfig.from_spec(spec.frontend)
    return torch.randn(BATCH, 1, fe.n_mels, min(fe.n_frames, MAX_FRAMES), generator=torch.Generator().manual_seed(1))


def test_registry_lists_the_builtin_architectures() -> None:
    assert {"cnn", "resnet18", "mn04"} <= set(ARCHS)
    for name in ARCHS:
        s = get_spec(name)
        assert isinstance(s, ArchSpec) and s.name == name
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.name = "other"  # type: ignore[misc]


def test_forward_is_classify_of_embed(spec: ArchSpec) -> None:
    model, x = _model(spec), _batch(spec)
    with torch.no_grad():
        logits = model(x)
        emb = model.embed(x)
        again = model.classify(emb)
    assert logits.shape == (BATCH, N_CLASSES)
    assert emb.ndim == 2 and emb.shape[0] == BATCH and emb.shape[1] > 0
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits, again, rtol=1e-5, atol=1e-6)


def test_stages_name_real_submodules(spec: ArchSpec) -> None:
    model = _model(spec)
    modules = dict(model.named_modules())
    stages = list(model.stages)
    assert stages, f"{spec.name} names no stages"
    assert len(set(stages)) == len(stages)
    missing = [s for s in stages if s not in modules]
    assert not missing, f"{spec.name}: stages {missing} are not submodules"


def test_head_prefixes_are_exactly_the_class_count_dependent_parameters(spec: ArchSpec) -> None:
    a = dict(_model(spec, n_classes=3).named_parameters())
    b = dict(_model(spec, n_classes=7).named_parameters())
    assert a.keys() == b.keys()
    depends = {k for k in a if a[k].shape != b[k].shape}
    assert spec.head_prefixes, f"{spec.name} declares no head prefixes"
    under = {k for k in a if k.startswith(spec.head_prefixes)}
    for prefix in spec.head_prefixes:  # each prefix names real parameters
        assert any(k.startswith(prefix) for k in a), f"{spec.name}: head prefix {prefix!r} matches nothing"
    assert under == depends


def test_head_modules_hold_every_parameter_classify_uses(spec: ArchSpec) -> None:
    model = _model(spec)
    modules = dict(model.named_modules())
    assert all(m in modules for m in spec.head_modules)
    head = finetune_head(model, spec.name)  # what labelled adaptation trains
    in_head = {k for k, _ in model.named_parameters() if any(k == h or k.startswith(h + ".") for h in head)}
    assert {k for k, _ in model.named_parameters() if k.startswith(spec.head_prefixes)} <= in_head
    with torch.no_grad():
        e = torch.randn(BATCH, model.embed(_batch(spec)).shape[1])
        before = model.classify(e)
        for k, p in model.named_parameters():
            if k not in in_head:
                p.add_(torch.randn_like(p))
        assert torch.equal(model.classify(e), before), "classify uses parameters outside the head modules"


@pytest.mark.parametrize("pretrained", [False, True])
def test_param_groups_cover_every_trainable_parameter_once(spec: ArchSpec, pretrained: bool) -> None:
    model = _model(spec)
    next(iter(model.parameters())).requires_grad_(False)  # frozen parameters stay out
    groups = spec.param_groups(model, 1e-3, weight_decay=1e-2, layer_decay=0.5, pretrained=pretrained)
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert len(seen) == len(set(seen)), "a parameter is in two groups"
    assert set(seen) == set(trainable)
    for g in groups:
        assert g["lr"] > 0 and "weight_decay" in g
    torch.optim.AdamW(groups, lr=1e-3)  # a valid optimizer spec


def test_training_defaults_are_valid_train_config_fields(spec: ArchSpec) -> None:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for pretrained in (False, True):
        defaults = spec.training_defaults(pretrained=pretrained)
        assert set(defaults) <= fields, f"{spec.name}: not TrainConfig fields: {set(defaults) - fields}"
        assert {"epochs", "batch_size", "lr"} <= set(defaults)
        TrainConfig(arch=spec.name, **defaults).validate()
    assert set(spec.finetune_defaults) <= fields


def test_frontend_and_factory(spec: ArchSpec) -> None:
    fe = FrontendConfig.from_spec(spec.frontend)
    assert fe.n_mels > 0 and fe.n_frames > 1
    assert isinstance(spec.build(n_classes=2), nn.Module)


def test_pretrained_loader_keeps_the_new_head(spec: ArchSpec, tmp_path) -> None:
    """A loader takes a local .safetensors, loads the body and leaves ``head_prefixes`` alone."""
    if spec.pretrained is None:
        pytest.skip(f"{spec.name} has no pretrained loader")
    from safetensors.torch import save_file

    source = _model(spec, n_classes=11, seed=1)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = _model(spec, n_classes=N_CLASSES, seed=2)
    head_before = {k: v.clone() for k, v in target.state_dict().items() if k.startswith(spec.head_prefixes)}
    spec.pretrained(target, str(path), spec.head_prefixes)
    src = source.state_dict()
    for k, v in target.state_dict().items():
        if k.startswith(spec.head_prefixes):
            assert torch.equal(v, head_before[k])
        else:
            assert torch.equal(v, src[k]), k
