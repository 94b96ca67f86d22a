"""ResNet-18 (He et al., CVPR 2016) on log-mels: the seed project's recipe, written in tympan.

The seed resized every spectrogram to 224 x 224 (``F.interpolate``, bilinear) and fed it to
torchvision's ImageNet ResNet-18 with a one-channel first convolution. This is that network
(no torchvision): 7x7/2 stem, max-pool, four stages of two BasicBlocks (64, 128, 256, 512),
global average pooling and a linear head; ~11.2 M parameters for 50 classes. It is kept as
the baseline the default model is compared against (see ``benchmarks/esc50_cv.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tympan.models.registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


@register_model(
    "resnet18",
    frontend="default",
    train_defaults={"epochs": 30, "batch_size": 32, "lr": 1e-3},
    head_prefixes=("fc.",),
    head_modules=("fc",),
)
class ResNet18(nn.Module):
    """ResNet-18 with a 1-channel stem; inputs are resized to ``input_size`` x ``input_size``."""

    def __init__(self, n_classes: int, input_size: int = 224, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_classes, self.input_size = n_classes, input_size
        self.conv1 = nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths, c_in, layers = (64, 128, 256, 512), 64, []
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(c_in, w, stride), BasicBlock(w, w)))
            c_in = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512, n_classes)
        self.stages = ["layer1", "layer2", "layer3", "layer4"]
        # a shape-only skeleton (a bundle's check) is not initialised: normal_ on meta imports torch._dynamo
        for m in () if self.fc.weight.is_meta else self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        size = (self.input_size, self.input_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(embedding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(x))
