"""The lesion classifier `ddpm-lesion utility` trains: two architectures and one seeded loop.

The utility comparison is only fair if every arm trains the same model the same way, so
everything that could differ between arms lives here and depends only on the images, the
labels, `TrainSettings` and the seed: the initial weights, the order batches are drawn
in and every augmentation. Arms differ only in what they pass in.

No pretrained weights: nothing may come from a hub, and a from-scratch model measures
what the training images themselves teach, which is the question.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ddpm_lesion.core.dihedral import random_orientations

PREDICT_BATCH = 256


class Arch(str, enum.Enum):
    RESNET18 = "resnet18"
    SMALL_CNN = "small-cnn"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (1x1 conv-BN when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al. 2016, "Deep Residual Learning for Image Recognition", table 1):
    7x7/2 stem + 3x3/2 max-pool, four stages of two basic blocks (64, 128, 256, 512
    channels), global average pool, one logit. Same layer shapes as torchvision's
    `resnet18(num_classes=1)`, written out so the project needs no torchvision."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        widths, blocks, channels = (64, 128, 256, 512), [], 64
        for stage, width in enumerate(widths):
            blocks += [BasicBlock(channels, width, 1 if stage == 0 else 2), BasicBlock(width, width, 1)]
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(512, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # He initialisation, as torchvision does
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x))
        return self.head(features.mean(dim=(2, 3))).squeeze(1)


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-maxpool stages (16, 32, 64, 128 channels), global average pool,
    one logit: ~100k weights, for small data or a CPU, and for tests."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in (16, 32, 64, 128):
            layers += [nn.Conv2d(channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(1)


def build_classifier(arch: Arch, seed: int) -> nn.Module:
    """A freshly initialised model whose weights depend only on `arch` and `seed`.

    The global RNG is forked, so building a model neither depends on nor disturbs the
    caller's random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNet18() if Arch(arch) is Arch.RESNET18 else SmallCNN()


@dataclass(frozen=True)
class TrainSettings:
    """How one arm trains. `steps` is the same for every arm of a comparison, so an arm with
    more images does not also get more optimiser updates."""

    arch: Arch
    steps: int
    batch_size: int
    learning_rate: float
    balanced: bool  # draw each class equally often (the oversampling baseline)


def draw_order(labels: torch.Tensor, total: int, generator: torch.Generator, balanced: bool) -> torch.Tensor:
    """`total` training indices in the order they are used.

    Unbalanced: shuffled passes over the data, one after another (every image once per
    pass). Balanced: drawn with replacement with probability 1 / (size of its class), so
    each class fills half of every batch on average: random oversampling of the minority.
    """
    n = len(labels)
    if balanced:
        counts = torch.bincount(labels, minlength=2).double()
        weights = 1.0 / counts[labels]
        return torch.multinomial(weights, total, replacement=True, generator=generator)
    passes = -(-total // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])[:total]


def _to_input(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return pixels.float() / 127.5 - 1.0


def train_classifier(images: torch.Tensor, labels: torch.Tensor, settings: TrainSettings, seed: int,
                     device: torch.device) -> nn.Module:
    """Train a fresh classifier with binary cross-entropy and AdamW; return it in eval mode.

    Args:
        images: uint8 [N, 3, R, R] with R equal sides (90-degree rotations keep the shape).
        labels: int64 [N], 1 = positive.
        settings: architecture, number of steps, batch size, learning rate, sampling.
        seed: sets the initial weights, the batch order and the augmentations. On a CPU the
            result is bit-identical for a seed; CUDA kernels may differ in the last bits.
        device: where to train.
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"images must be square, got {tuple(images.shape[-2:])}")
    generator = torch.Generator().manual_seed(seed)
    model = build_classifier(settings.arch, seed).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    order = draw_order(labels, settings.steps * settings.batch_size, generator, settings.balanced)
    images, targets = images.to(device), labels.to(device).float()
    model.train()
    for step in range(settings.steps):
        idx = order[step * settings.batch_size:(step + 1) * settings.batch_size].to(device)
        logits = model(_to_input(random_orientations(images[idx], generator)))
        loss = nn.functional.binary_cross_entropy_with_logits(logits, targets[idx])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return model.eval()


@torch.no_grad()
def predict_scores(model: nn.Module, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """Predicted probability of the positive class for each image (no augmentation)."""
    model.eval()
    chunks = [torch.sigmoid(model(_to_input(images[i:i + PREDICT_BATCH].to(device)))).cpu()
              for i in range(0, len(images), PREDICT_BATCH)]
    return torch.cat(chunks).double().numpy()
