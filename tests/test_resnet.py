"""ResNet-18 (the seed project's recipe) in tympan: size, input handling, model protocol."""

from __future__ import annotations

import torch

from tympan.models import build_model


def test_resnet18_size_and_shapes():
    model = build_model("resnet18", n_classes=50).eval()
    n = sum(p.numel() for p in model.parameters())
    assert 11.1e6 < n < 11.3e6  # ~11.2 M: ImageNet ResNet-18 with a 1-channel stem, 50 classes
    assert model.conv1.in_channels == 1
    x = torch.randn(2, 1, 64, 251)
    with torch.no_grad():
        logits = model(x)
        emb = model.embed(x)
        assert torch.allclose(model.classify(emb), logits, atol=1e-6)
    assert logits.shape == (2, 50) and emb.shape == (2, 512)
    names = dict(model.named_modules())
    assert all(s in names for s in model.stages)


def test_resnet18_resizes_any_input_to_224():
    model = build_model("resnet18", n_classes=5).eval()
    seen = {}

    def hook(module, inputs, output):
        seen["shape"] = tuple(inputs[0].shape)

    model.conv1.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(1, 1, 128, 500))
    assert seen["shape"] == (1, 1, 224, 224)
