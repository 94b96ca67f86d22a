"""EfficientAT ``mn04``: a MobileNetV3-Large audio tagger at width 0.4.

Schmid, Koutini and Widmer, "Efficient Large-Scale Audio Tagging via Transformer-to-CNN
Knowledge Distillation", ICASSP 2023 (arXiv:2211.04772), built on Howard et al., "Searching
for MobileNetV3", ICCV 2019 (arXiv:1905.02244). The AudioSet-trained ``mn04_as`` weights
(mAP 43.2, 0.98 M parameters) are the reason this network is here: they make a strong
starting point for ESC-50 fine-tuning at a fraction of a ResNet's cost.

Module names mirror EfficientAT's exactly (``features.N.block.M``, ``classifier.2``, the SE's
``conc_se_layers.0``), so the official state dict loads with a strict key and shape match and
no renaming table can drift out of date.

Input: log-mels ``(B, 1, 128, T)`` for any ``T`` (the network pools globally). With the
default strides the time and frequency axes shrink 32x before pooling.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tympan.models.registry import register_model, uniform_param_groups

#: BatchNorm settings of EfficientAT's MobileNetV3 (TensorFlow-style), kept so fine-tuning
#: from the official weights moves the running statistics as slowly as their training did.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
#: The output layer (``classifier.5``): what to leave out of a pretrained mn04 to fine-tune it
#: with a new label set.
MN04_HEAD_PREFIXES: tuple[str, ...] = ("classifier.5.",)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor``, never losing more than 10%.

    This is MobileNet's rule; the checkpoint's channel counts depend on it.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@dataclass(frozen=True)
class BlockSpec:
    """One row of the MobileNetV3-Large table (Howard et al., Table 1), before width scaling."""

    in_ch: int
    kernel: int
    exp_ch: int
    out_ch: int
    se: bool
    hardswish: bool  # False: ReLU
    stride: int


#: MobileNetV3-Large's bottleneck rows. EfficientAT exposes the four stride-2 rows as
#: ``strides=(2, 2, 2, 2)``; ``mn04_as`` keeps them all at 2.
MOBILENETV3_LARGE: tuple[BlockSpec, ...] = (
    BlockSpec(16, 3, 16, 16, False, False, 1),
    BlockSpec(16, 3, 64, 24, False, False, 2),
    BlockSpec(24, 3, 72, 24, False, False, 1),
    BlockSpec(24, 5, 72, 40, True, False, 2),
    BlockSpec(40, 5, 120, 40, True, False, 1),
    BlockSpec(40, 5, 120, 40, True, False, 1),
    BlockSpec(40, 3, 240, 80, False, True, 2),
    BlockSpec(80, 3, 200, 80, False, True, 1),
    BlockSpec(80, 3, 184, 80, False, True, 1),
    BlockSpec(80, 3, 184, 80, False, True, 1),
    BlockSpec(80, 3, 480, 112, True, True, 1),
    BlockSpec(112, 3, 672, 112, True, True, 1),
    BlockSpec(112, 5, 672, 160, True, True, 2),
    BlockSpec(160, 5, 960, 160, True, True, 1),
    BlockSpec(160, 5, 960, 160, True, True, 1),
)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional activation; indices 0/1 match the checkpoint."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = None,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            _bn(out_ch),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class _ChannelExcitation(nn.Module):
    """Squeeze-and-excitation over channels (Hu et al., arXiv:1709.01507).

    EfficientAT scales with a plain sigmoid (not MobileNetV3's hard-sigmoid); the official
    weights were trained that way, so the gate must match.
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, squeeze)
        self.fc2 = nn.Linear(squeeze, channels)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class SqueezeExcite(nn.Module):
    """Channel SE under the name EfficientAT's checkpoints use.

    EfficientAT can run several SE branches (channel/frequency/time) side by side and merge
    them with a max; ``mn04_as`` has only the channel branch, where that max is the identity.
    The ``conc_se_layers`` list survives only so the keys match.
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.conc_se_layers = nn.ModuleList([_ChannelExcitation(channels, squeeze)])

    def forward(self, x: Tensor) -> Tensor:
        return self.conc_se_layers[0](x)


class InvertedResidual(nn.Module):
    """MobileNetV3 bottleneck: expand 1x1 -> depthwise kxk -> [SE] -> project 1x1 (+ skip)."""

    def __init__(self, spec: BlockSpec, width_mult: float) -> None:
        super().__init__()
        in_ch = make_divisible(spec.in_ch * width_mult)
        exp_ch = make_divisible(spec.exp_ch * width_mult)
        out_ch = make_divisible(spec.out_ch * width_mult)
        act = nn.Hardswish if spec.hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if exp_ch != in_ch:  # the first block has no expansion, as in MobileNetV3
            layers.append(ConvBNAct(in_ch, exp_ch, 1, act=act))
        layers.append(ConvBNAct(exp_ch, exp_ch, spec.kernel, spec.stride, groups=exp_ch, act=act))
        if spec.se:
            layers.append(SqueezeExcite(exp_ch, make_divisible(exp_ch // 4)))
        layers.append(ConvBNAct(exp_ch, out_ch, 1))  # linear bottleneck: no activation
        self.block = nn.Sequential(*layers)
        self.use_residual = spec.stride == 1 and in_ch == out_ch
        self.out_channels = out_ch

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_residual else out


def training_param_groups(
    model: nn.Module,
    base_lr: float,
    *,
    weight_decay: float = 0.0,
    layer_decay: float = 0.5,
    pretrained: bool = False,
) -> list[dict[str, Any]]:
    """Layer-wise lrs (:func:`mn04_param_groups`) when fine-tuning pretrained weights, else one lr."""
    if pretrained:
        return mn04_param_groups(model, base_lr, decay=layer_decay, weight_decay=weight_decay)  # type: ignore[arg-type]
    return uniform_param_groups(model, base_lr, weight_decay=weight_decay)


def load_audioset(model: nn.Module, init: str, skip_prefixes: tuple[str, ...] = MN04_HEAD_PREFIXES) -> nn.Module:
    """``--init``: EfficientAT AudioSet weights (``mn04_as``, a URL or a file), head left out."""
    from tympan.models.convert import load_efficientat

    return load_efficientat(model, init, skip_prefixes=skip_prefixes)


@register_model(
    "mn04",
    frontend="efficientat",  # the pipeline the AudioSet weights were trained on
    train_defaults={"epochs": 40, "batch_size": 32, "lr": 2e-3},
    finetune_defaults={"epochs": 12, "batch_size": 32, "lr": 2e-3},
    head_prefixes=MN04_HEAD_PREFIXES,
    head_modules=("classifier",),
    param_groups=training_param_groups,
    pretrained=load_audioset,
    cpu_bf16_min_batch=128,
)
class MN04(nn.Module):
    """EfficientAT MobileNetV3 (``mn04_as`` at the defaults) with an MLP head.

    ``embed`` returns the 384-d globally pooled output of ``features.16`` (what EfficientAT
    returns as its embedding); ``classify`` is the head after pooling:
    Linear(384->512) -> Hardswish -> Dropout -> Linear(512->n_classes).
    """

    def __init__(
        self,
        n_classes: int,
        width_mult: float = 0.4,
        head_hidden: int = 512,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.params: dict[str, Any] = {
            "width_mult": width_mult,
            "head_hidden": head_hidden,
            "dropout": dropout,
        }
        stem_ch = make_divisible(MOBILENETV3_LARGE[0].in_ch * width_mult)
        layers: list[nn.Module] = [ConvBNAct(1, stem_ch, 3, stride=2, act=nn.Hardswish)]
        layers += [InvertedResidual(spec, width_mult) for spec in MOBILENETV3_LARGE]
        last_in = make_divisible(MOBILENETV3_LARGE[-1].out_ch * width_mult)
        self.embed_dim = 6 * last_in
        layers.append(ConvBNAct(last_in, self.embed_dim, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(start_dim=1),
            nn.Linear(self.embed_dim, head_hidden),
            nn.Hardswish(),
            nn.Dropout(p=dropout),
            nn.Linear(head_hidden, n_classes),
        )
        # The last feature map at each resolution (/2, /4, /8, /16, /32).
        self.stages: list[str] = ["features.1", "features.3", "features.6", "features.12", "features.16"]
        self._init_weights()

    def _init_weights(self) -> None:
        """MobileNetV3's initialisation, for training without pretrained weights."""
        if next(self.parameters()).is_meta:
            return  # a shape-only skeleton (a bundle's check): normal_ on meta imports torch._dynamo (2 s)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def embed(self, x: Tensor) -> Tensor:
        """Pooled ``features.16`` output, ``(B, embed_dim)``."""
        return self.features(x).mean(dim=(2, 3))

    def classify(self, e: Tensor) -> Tensor:
        """Head applied to a pooled embedding; the pool/flatten at ``classifier[0:2]`` are skipped."""
        for layer in list(self.classifier)[2:]:
            e = layer(e)
        return e

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.embed(x))


def _param_levels(model: MN04) -> Iterator[tuple[str, list[str]]]:
    """Depth groups, shallow to deep: one per resolution, then the head."""
    n = len(model.features)
    # Index of the first module at each resolution: stem(/2), /4, /8, /16, /32.
    starts = [0] + [i + 1 for i, s in enumerate(MOBILENETV3_LARGE) if s.stride == 2]
    bounds = starts + [n]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        yield f"features.{lo}-{hi - 1}", [f"features.{i}." for i in range(lo, hi)]
    yield "classifier", ["classifier."]


def mn04_param_groups(
    model: MN04,
    base_lr: float,
    decay: float = 0.5,
    weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Optimizer param groups with layer-wise learning rates for fine-tuning.

    The head learns at ``base_lr`` and each shallower resolution stage at ``decay`` times the
    one above it (stem ``base_lr * decay**5``), so generic low-level AudioSet filters move
    least. Biases and norm weights get no weight decay. Groups carry a ``"name"`` for logs.
    """
    named = dict(model.named_parameters())
    levels = list(_param_levels(model))
    groups: list[dict[str, Any]] = []
    seen: set[str] = set()
    for depth, (name, prefixes) in enumerate(levels):
        lr = base_lr * decay ** (len(levels) - 1 - depth)
        keys = [k for k in named if k.startswith(tuple(prefixes)) and named[k].requires_grad]
        seen.update(keys)
        decayed = [named[k] for k in keys if named[k].ndim > 1]
        plain = [named[k] for k in keys if named[k].ndim <= 1]
        if decayed:
            groups.append({"name": name, "params": decayed, "lr": lr, "weight_decay": weight_decay})
        if plain:
            groups.append({"name": f"{name}/no_decay", "params": plain, "lr": lr, "weight_decay": 0.0})
    left = [k for k, p in named.items() if p.requires_grad and k not in seen]
    if left:  # a subclass added parameters; never drop them silently
        raise ValueError(f"parameters not assigned to a learning-rate group: {left[:5]}")
    return groups
