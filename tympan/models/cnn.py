"""A compact VGG-style CNN on log-mels, trained from scratch (no external data).

Four stages of two 3x3 conv-BN-ReLU layers with 2x2 pooling, then frequency-mean and
time-max+mean pooling (the PANNs recipe: events are short, so max over time keeps them),
dropout and a linear head. ``width`` scales every stage, so one design covers the tiny test
model and the ESC-50 default.
"""

from __future__ import annotations

import torch
from torch import nn

from tympan.models.registry import register_model


def _block(c_in: int, c_out: int, pool: tuple[int, int]) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.AvgPool2d(pool) if pool != (1, 1) else nn.Identity(),
    )


@register_model(
    "cnn",
    frontend="default",
    train_defaults={"epochs": 40, "batch_size": 32, "lr": 2e-3},
    head_prefixes=("fc.",),
    head_modules=("fc",),
)
class CNN(nn.Module):
    """VGG-style CNN; ``width=32`` gives ~1.2 M parameters, ``width=8`` a tiny test model."""

    def __init__(self, n_classes: int, width: int = 32, n_mels: int = 64, dropout: float = 0.3) -> None:
        super().__init__()
        self.n_classes, self.width, self.n_mels = n_classes, width, n_mels
        self.input_norm = nn.BatchNorm2d(1)
        w = [width, width * 2, width * 4, width * 8]
        self.stage1 = _block(1, w[0], (2, 2))
        self.stage2 = _block(w[0], w[1], (2, 2))
        self.stage3 = _block(w[1], w[2], (2, 2))
        self.stage4 = _block(w[2], w[3], (1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(w[3], n_classes)
        self.stages = ["stage1", "stage2", "stage3", "stage4"]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(x)
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        x = x.mean(dim=2)  # over frequency
        return x.amax(dim=2) + x.mean(dim=2)  # over time

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(embedding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(x))
