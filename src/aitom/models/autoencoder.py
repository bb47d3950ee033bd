"""A 3-D convolutional autoencoder of subtomograms (after Zeng, Leung, Zeev-Ben-Mordehai & Xu 2018).

Zeng X, Leung MR, Zeev-Ben-Mordehai T, Xu M. *A convolutional autoencoder approach for mining features in
cellular electron cryo-tomograms and weakly supervised coarse segmentation.* J Struct Biol 202:150-160 (2018).

The encoder has three stages, each a stride-2 3×3×3 convolution (halving the box) and a 'same' 3×3×3
convolution, ReLU after each; a linear layer maps the flattened bottleneck (box / 8) to the latent vector. The
decoder mirrors it: a linear layer and ReLU back to the bottleneck grid, three stride-2 4×4×4 transposed
convolutions (doubling the box; the first two followed by a 'same' convolution), ReLU after each, and a final
1-channel 3×3×3 convolution with no activation (inputs are standardised densities, of either sign). Only the
first and the last two layers work at full resolution, which keeps training affordable on a CPU. There is no
batch normalisation (slow on CPU in this memory format, and not needed at this depth).
The box must be a multiple of 8 (32³ and 40³ both work); the network is built for one box size.
Weights and activations are kept in the ``channels_last_3d`` memory format: on CPU the backward pass of a 3-D
convolution in the default format is up to 60 times slower (PyTorch 2.13, oneDNN 3.12).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from aitom.errors import InputError
from aitom.models.classifiers import check_volume_channels

__all__ = ["SubtomogramAutoencoder"]

#: the encoder halves the box this many times
DOWNSAMPLING_STAGES = 3


def _conv_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1), nn.ReLU(inplace=True)]


class SubtomogramAutoencoder(nn.Module):
    """Convolutional autoencoder ``(B, 1, S, S, S)`` -> latent ``(B, latent_dim)`` -> ``(B, 1, S, S, S)``.

    Args:
        box_size_voxels: edge of the (cubic) input box, voxels; a multiple of 8, at least 8.
        latent_dim: length of the latent vector.
        channels: channels of the three encoder stages (the decoder uses them in reverse).
        in_channels: channels of the input volumes.

    Example:
        >>> net = SubtomogramAutoencoder(box_size_voxels=16, latent_dim=4)
        >>> reconstruction, z = net(torch.zeros(2, 1, 16, 16, 16))
        >>> tuple(reconstruction.shape), tuple(z.shape)
        ((2, 1, 16, 16, 16), (2, 4))
    """

    def __init__(
        self,
        box_size_voxels: int = 32,
        latent_dim: int = 32,
        channels: tuple[int, int, int] = (8, 16, 32),
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        step = 2**DOWNSAMPLING_STAGES
        if box_size_voxels < step or box_size_voxels % step:
            raise InputError(
                f"SubtomogramAutoencoder needs a box that is a multiple of {step} voxels, got "
                f"{box_size_voxels}; crop or pad the subtomograms (e.g. 32 or 40)"
            )
        if latent_dim < 1:
            raise InputError(f"latent_dim must be at least 1, got {latent_dim}")
        if len(channels) != DOWNSAMPLING_STAGES or min(channels) < 1:
            raise InputError(f"channels must be {DOWNSAMPLING_STAGES} positive numbers, got {channels}")
        self.box_size_voxels = box_size_voxels
        self.latent_dim = latent_dim
        self.in_channels = in_channels
        self.bottleneck_shape = (channels[-1],) + (box_size_voxels // step,) * 3
        bottleneck_size = channels[-1] * (box_size_voxels // step) ** 3

        encoder: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            encoder += _conv_relu(previous, width, stride=2) + _conv_relu(width, width)
            previous = width
        self.encoder = nn.Sequential(*encoder, nn.Flatten(), nn.Linear(bottleneck_size, latent_dim))

        self.expand = nn.Sequential(nn.Linear(latent_dim, bottleneck_size), nn.ReLU(inplace=True))
        decoder: list[nn.Module] = []
        widths = [*reversed(channels), channels[0]]
        for stage, (width, next_width) in enumerate(itertools.pairwise(widths)):
            decoder += [nn.ConvTranspose3d(width, next_width, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
            if stage < DOWNSAMPLING_STAGES - 1:
                decoder += _conv_relu(next_width, next_width)
        self.decoder = nn.Sequential(*decoder, nn.Conv3d(channels[0], in_channels, 3, padding=1))
        self.to(memory_format=torch.channels_last_3d)

    def _check_input(self, volume: torch.Tensor) -> None:
        check_volume_channels(volume, self.in_channels, type(self).__name__, axes="S, S, S")
        if tuple(volume.shape[-3:]) != (self.box_size_voxels,) * 3:
            raise InputError(
                f"SubtomogramAutoencoder was built for {self.box_size_voxels}³ boxes but got "
                f"{tuple(volume.shape[-3:])}; set its box_size_voxels to the data's box size"
            )

    def encode(self, volume: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S, S)`` volumes -> ``(B, latent_dim)`` latent vectors."""
        self._check_input(volume)
        return self.encoder(volume.contiguous(memory_format=torch.channels_last_3d))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent_dim)`` latent vectors -> ``(B, C, S, S, S)`` reconstructions."""
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape (B, {self.latent_dim}), got {tuple(z.shape)}")
        grid = self.expand(z).reshape(-1, *self.bottleneck_shape)
        return self.decoder(grid.contiguous(memory_format=torch.channels_last_3d))

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, C, S, S, S)`` -> ``(reconstruction (B, C, S, S, S), z (B, latent_dim))``."""
        z = self.encode(volume)
        return self.decode(z), z
