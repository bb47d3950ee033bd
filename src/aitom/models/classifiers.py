"""3-D CNNs that classify subtomograms: DSRF3D-v2, RB3D and CB3D (Che et al. 2018).

Che C, Lin R, Zeng X, Elmaaroufi K, Galeotti J, Xu M. *Improved deep learning-based macromolecules structure
classification from electron cryo-tomograms.* Machine Vision and Applications 29:1227-1236 (2018).

The layer widths follow AITom's Keras definitions (``Cgg``, ``Cresnet`` and ``c3d`` in xulabs'
``subdivide.py``). Three changes make the networks work on any box and train faster from scratch:

* each network ends its convolutional part with adaptive average pooling to a fixed grid, so the classifier
  head has the same size for every box (32³ and 40³ alike) -- DSRF3D-v2 pools to the 4³ grid that AITom's
  network had at 32³, so at 32³ its parameter count equals AITom's;
* every convolution is followed by batch normalisation (``batch_norm=True``, the default) before its ReLU;
  ``batch_norm=False`` gives AITom's plain convolution + ReLU;
* the networks return logits (no softmax): the loss (cross-entropy) and the probabilities are computed by
  the task that uses them.

Input: ``(B, in_channels, Z, Y, X)`` float tensors, the same size on the three axes or not; output ``(B,
num_classes)`` logits. A box smaller than a network's ``minimum_box_voxels`` (stated, with its reason, in each
network's docstring) raises :class:`aitom.errors.InputError` naming the minimum.
"""

from __future__ import annotations

import torch
from torch import nn

from aitom.errors import InputError


def conv_bn_relu(
    in_channels: int, out_channels: int, kernel_size: int, batch_norm: bool, activation: bool = True
) -> nn.Sequential:
    """A 'same'-padded 3-D convolution, optional batch normalisation, then (if ``activation``) ReLU."""
    layers: list[nn.Module] = [
        nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not batch_norm)
    ]
    if batch_norm:
        layers.append(nn.BatchNorm3d(out_channels))
    if activation:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def fully_connected_head(
    in_features: int, hidden_features: int, num_classes: int, dropout: float
) -> nn.Sequential:
    """Two ReLU hidden layers with dropout after each, then a linear layer to ``num_classes`` logits."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden_features),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden_features, hidden_features),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden_features, num_classes),
    )


def check_volume_channels(volume: torch.Tensor, in_channels: int, name: str, axes: str = "Z, Y, X") -> None:
    """Raise if ``volume`` is not ``(B, in_channels, *axes)``: :class:`ValueError` for another number of
    dimensions, :class:`InputError` (naming the network's ``in_channels`` option) for other channels."""
    if volume.ndim != 5:
        raise ValueError(
            f"{name} expects volumes of shape (B, {in_channels}, {axes}), got {tuple(volume.shape)}"
        )
    if volume.shape[1] != in_channels:
        raise InputError(
            f"{name} was built with in_channels {in_channels} for volumes of shape (B, {in_channels}, "
            f"{axes}) but got {tuple(volume.shape)}; set the network's in_channels to {volume.shape[1]}"
        )


def check_classifier_input(
    volume: torch.Tensor, in_channels: int, minimum_box_voxels: int, name: str
) -> None:
    """Raise if ``volume`` is not ``(B, in_channels, Z, Y, X)`` or a spatial size is below the minimum box."""
    check_volume_channels(volume, in_channels, name)
    if min(volume.shape[-3:]) < minimum_box_voxels:
        raise InputError(
            f"{name} needs a box of at least {minimum_box_voxels} voxels per axis, "
            f"got {tuple(volume.shape[-3:])}"
        )


class SubtomogramClassifierNet(nn.Module):
    """Common parts: a convolutional ``features`` stack, adaptive pooling to ``head_grid``³, an FC ``head``.

    Subclasses build ``features`` and ``head`` and set ``minimum_box_voxels``. Attributes ``in_channels`` and
    ``num_classes`` let a task check that the network fits its data.
    """

    minimum_box_voxels: int
    features: nn.Module
    head: nn.Module

    def __init__(self, in_channels: int, num_classes: int, dropout: float, head_grid: int) -> None:
        super().__init__()
        if num_classes < 2:
            raise InputError(f"num_classes must be 2 or more, got {num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.pool = nn.AdaptiveAvgPool3d(head_grid)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, Z, Y, X)`` volumes -> ``(B, num_classes)`` logits."""
        check_classifier_input(volume, self.in_channels, self.minimum_box_voxels, type(self).__name__)
        return self.head(self.pool(self.features(volume)))


class DSRF3Dv2(SubtomogramClassifierNet):
    """DSRF3D-v2: a VGG-like stack of 3×3×3 convolutions with small receptive fields (AITom's ``Cgg``).

    Three stages of two 3×3×3 convolutions (32, 64, 128 channels), each stage followed by 2×2×2 max pooling;
    adaptive average pooling to 4³; fully connected 8192 -> 1024 -> 1024 -> ``num_classes`` with ReLU and
    ``dropout`` (70 % as in the paper) after each hidden layer. Convolutions: conv -> BatchNorm3d -> ReLU
    (conv -> ReLU with ``batch_norm=False``, as in AITom).

    Minimum box: 8 voxels (each of the three poolings pools a full 2×2×2 window). Boxes under 32 voxels reach
    the head's 4³ grid with fewer than 4³ cells, which the adaptive pooling spreads over the grid.

    Args:
        in_channels: channels of the input volumes.
        num_classes: number of classes (logits returned).
        dropout: dropout probability in the fully connected head.
        batch_norm: batch normalisation after every convolution.
    """

    minimum_box_voxels = 8

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.7, batch_norm: bool = True
    ) -> None:
        super().__init__(in_channels, num_classes, dropout, head_grid=4)
        layers: list[nn.Module] = []
        channels = in_channels
        for width in (32, 64, 128):
            layers += [
                conv_bn_relu(channels, width, 3, batch_norm),
                conv_bn_relu(width, width, 3, batch_norm),
                nn.MaxPool3d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = fully_connected_head(channels * 4**3, 1024, num_classes, dropout)


class BottleneckBlock(nn.Module):
    """RB3D's block: a 3×3×3 convolution shortcut beside a 1×1×1 -> 3×3×3 -> 1×1×1 bottleneck.

    As in AITom's ``Cresnet``, the two paths are joined by concatenating their channels (``shortcut_channels``
    + ``bottleneck_channels``), then ReLU; the last 1×1×1 convolution of the bottleneck has no activation.

    Args:
        in_channels: channels in.
        shortcut_channels: channels of the shortcut convolution (and of the bottleneck's output).
        inner_channels: channels of the bottleneck's 3×3×3 convolution.
        batch_norm: batch normalisation after every convolution.
    """

    def __init__(
        self, in_channels: int, shortcut_channels: int, inner_channels: int, batch_norm: bool
    ) -> None:
        super().__init__()
        self.shortcut = conv_bn_relu(in_channels, shortcut_channels, 3, batch_norm)
        self.bottleneck = nn.Sequential(
            conv_bn_relu(in_channels, shortcut_channels, 1, batch_norm),
            conv_bn_relu(shortcut_channels, inner_channels, 3, batch_norm),
            conv_bn_relu(inner_channels, shortcut_channels, 1, batch_norm, activation=False),
        )
        self.activation = nn.ReLU(inplace=True)
        self.out_channels = 2 * shortcut_channels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, Z, Y, X)`` -> ``(B, 2 * shortcut_channels, Z, Y, X)``."""
        return self.activation(torch.cat([self.shortcut(features), self.bottleneck(features)], dim=1))


class RB3D(SubtomogramClassifierNet):
    """RB3D: four bottleneck blocks with 3×3×3 convolution shortcuts (AITom's ``Cresnet``).

    A 3×3×3 convolution (32 channels) and 2×2×2 max pooling; four :class:`BottleneckBlock` (shortcut 16
    channels, bottleneck 16 -> 32 -> 16, concatenated to 32 channels); adaptive average pooling to 4³;
    fully connected 2048 -> 1024 -> 1024 -> ``num_classes`` with ReLU and ``dropout`` (50 %) after each
    hidden layer.
    AITom flattens the full-resolution map instead (a 134-million-weight first layer at 32³) and also puts
    70 % dropout inside each block; here the pooling replaces the former and the head's dropout the latter.
    Convolutions: conv -> BatchNorm3d -> ReLU (conv -> ReLU with ``batch_norm=False``).

    Minimum box: 8 voxels (after its one pooling the map still covers the head's 4³ grid).

    Args:
        in_channels: channels of the input volumes.
        num_classes: number of classes (logits returned).
        dropout: dropout probability in the fully connected head.
        batch_norm: batch normalisation after every convolution.
    """

    minimum_box_voxels = 8

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.5, batch_norm: bool = True
    ) -> None:
        super().__init__(in_channels, num_classes, dropout, head_grid=4)
        layers: list[nn.Module] = [conv_bn_relu(in_channels, 32, 3, batch_norm), nn.MaxPool3d(2)]
        channels = 32
        for _ in range(4):
            block = BottleneckBlock(channels, shortcut_channels=16, inner_channels=32, batch_norm=batch_norm)
            layers.append(block)
            channels = block.out_channels
        self.features = nn.Sequential(*layers)
        self.head = fully_connected_head(channels * 4**3, 1024, num_classes, dropout)


class CB3D(SubtomogramClassifierNet):
    """CB3D: a C3D-style network with five max-pooling stages (AITom's ``c3d``).

    Convolutions (3×3×3) 64 | 128 | 256, 256 | 512, 512 | 512, 512 channels, each stage followed by 2×2×2 max
    pooling, the fifth in ``ceil_mode`` so that an odd-sized map still pools (a 48³ box reaches it as 3³);
    adaptive average pooling to 1³; fully connected 512 -> 4096 -> 4096 -> ``num_classes`` with ReLU and
    ``dropout`` (50 %) after each hidden layer. Unlike C3D (built for video), the first pooling also halves
    Z: a subtomogram's Z is space, not time. Convolutions: conv -> BatchNorm3d -> ReLU (conv -> ReLU with
    ``batch_norm=False``).

    Minimum box: 32 voxels, so that the fifth stage's convolutions see at least 2³ voxels (with fewer, batch
    normalisation of a one-subtomogram batch has a single value per channel and fails in training).

    Args:
        in_channels: channels of the input volumes.
        num_classes: number of classes (logits returned).
        dropout: dropout probability in the fully connected head.
        batch_norm: batch normalisation after every convolution.
    """

    minimum_box_voxels = 32

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.5, batch_norm: bool = True
    ) -> None:
        super().__init__(in_channels, num_classes, dropout, head_grid=1)
        stages = ((64,), (128,), (256, 256), (512, 512), (512, 512))
        layers: list[nn.Module] = []
        channels = in_channels
        for index, widths in enumerate(stages):
            for width in widths:
                layers.append(conv_bn_relu(channels, width, 3, batch_norm))
                channels = width
            layers.append(nn.MaxPool3d(2, ceil_mode=index == len(stages) - 1))
        self.features = nn.Sequential(*layers)
        self.head = fully_connected_head(channels, 4096, num_classes, dropout)
