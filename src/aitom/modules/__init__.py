"""``nn.Module`` wrappers of :mod:`aitom.ops` (hyper-parameters in the constructor, maths in the function)."""

from __future__ import annotations

from aitom.modules.filters import (
    AnisotropicDiffusion3d,
    BandpassFilter3d,
    DifferenceOfGaussians3d,
    GaussianFilter3d,
)

__all__ = ["AnisotropicDiffusion3d", "BandpassFilter3d", "DifferenceOfGaussians3d", "GaussianFilter3d"]
