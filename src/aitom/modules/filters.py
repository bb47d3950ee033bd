"""``nn.Module`` wrappers of the filters in :mod:`aitom.ops` (kornia style: ``GaussianBlur2d`` for
``gaussian_blur2d``): the constructor stores the hyper-parameters, ``forward`` delegates to the function."""

from __future__ import annotations

import torch
from torch import nn

from aitom.fourier import apply_fourier_filter, bandpass_filter_kernel
from aitom.ops.diffusion import anisotropic_diffusion
from aitom.ops.filters import SigmaLike, difference_of_gaussians, gaussian_filter3d

__all__ = ["AnisotropicDiffusion3d", "BandpassFilter3d", "DifferenceOfGaussians3d", "GaussianFilter3d"]


class GaussianFilter3d(nn.Module):
    """Gaussian blur of ``(..., Z, Y, X)`` volumes; see :func:`aitom.ops.gaussian_filter3d`.

    Example:
        >>> GaussianFilter3d(1.5)(torch.zeros(2, 8, 8, 8)).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(self, sigma_voxels: SigmaLike, *, truncate: float = 4.0, method: str = "auto") -> None:
        super().__init__()
        self.sigma_voxels = sigma_voxels
        self.truncate = truncate
        self.method = method

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return gaussian_filter3d(volume, self.sigma_voxels, truncate=self.truncate, method=self.method)

    def extra_repr(self) -> str:
        return f"sigma_voxels={self.sigma_voxels}, truncate={self.truncate}, method={self.method!r}"


class DifferenceOfGaussians3d(nn.Module):
    """``G(σ1) * v - G(σ2) * v``; see :func:`aitom.ops.difference_of_gaussians`."""

    def __init__(
        self,
        sigma1_voxels: SigmaLike,
        sigma2_voxels: SigmaLike | None = None,
        *,
        truncate: float = 4.0,
        method: str = "auto",
    ) -> None:
        super().__init__()
        self.sigma1_voxels = sigma1_voxels
        self.sigma2_voxels = sigma2_voxels
        self.truncate = truncate
        self.method = method

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return difference_of_gaussians(
            volume, self.sigma1_voxels, self.sigma2_voxels, truncate=self.truncate, method=self.method
        )

    def extra_repr(self) -> str:
        return f"sigma1_voxels={self.sigma1_voxels}, sigma2_voxels={self.sigma2_voxels}"


class BandpassFilter3d(nn.Module):
    """Radial Fourier band-pass in Å; see :func:`aitom.ops.bandpass_filter`.

    The kernel is built on the first call and kept for later volumes of the same shape, device and dtype
    (building it costs about as much as the two FFTs).
    """

    def __init__(
        self,
        voxel_size_a: float,
        highpass_a: float | None = None,
        lowpass_a: float | None = None,
        edge_width_frac: float = 0.05,
    ) -> None:
        super().__init__()
        self.voxel_size_a = voxel_size_a
        self.highpass_a = highpass_a
        self.lowpass_a = lowpass_a
        self.edge_width_frac = edge_width_frac
        self._kernel: torch.Tensor | None = None

    def _kernel_for(self, volume: torch.Tensor) -> torch.Tensor:
        shape = tuple(volume.shape[-3:])
        half_shape = (*shape[:-1], shape[-1] // 2 + 1)
        kernel = self._kernel
        if (
            kernel is None
            or tuple(kernel.shape) != half_shape
            or kernel.device != volume.device
            or kernel.dtype != volume.dtype
        ):
            kernel = bandpass_filter_kernel(
                shape,
                voxel_size_a=self.voxel_size_a,
                highpass_a=self.highpass_a,
                lowpass_a=self.lowpass_a,
                edge_width_frac=self.edge_width_frac,
                device=volume.device,
                dtype=volume.dtype,
            )
            self._kernel = kernel
        return kernel

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        if volume.ndim < 3 or not volume.is_floating_point():
            raise ValueError(
                f"volume must be a floating-point tensor (..., Z, Y, X), got {tuple(volume.shape)}"
            )
        return apply_fourier_filter(volume, self._kernel_for(volume))

    def extra_repr(self) -> str:
        return f"voxel_size_a={self.voxel_size_a}, highpass_a={self.highpass_a}, lowpass_a={self.lowpass_a}"


class AnisotropicDiffusion3d(nn.Module):
    """Edge- or coherence-enhancing diffusion; see :func:`aitom.ops.anisotropic_diffusion`."""

    def __init__(
        self,
        *,
        mode: str = "edge",
        n_iterations: int = 10,
        time_step: float = 0.1,
        sigma_voxels: float = 1.0,
        rho_voxels: float = 1.0,
        contrast_k: float | None = None,
        alpha: float = 0.001,
        coherence_c: float | None = None,
    ) -> None:
        super().__init__()
        self.mode = mode
        self.n_iterations = n_iterations
        self.time_step = time_step
        self.sigma_voxels = sigma_voxels
        self.rho_voxels = rho_voxels
        self.contrast_k = contrast_k
        self.alpha = alpha
        self.coherence_c = coherence_c

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return anisotropic_diffusion(
            volume,
            mode=self.mode,
            n_iterations=self.n_iterations,
            time_step=self.time_step,
            sigma_voxels=self.sigma_voxels,
            rho_voxels=self.rho_voxels,
            contrast_k=self.contrast_k,
            alpha=self.alpha,
            coherence_c=self.coherence_c,
        )

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, n_iterations={self.n_iterations}, time_step={self.time_step}"
