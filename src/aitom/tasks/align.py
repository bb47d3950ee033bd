"""Alignment to a reference under ``trainer.predict``: a LightningModule with no optimiser.

Batches are the dicts of :class:`aitom.data.subtomograms.StarSubtomogramDataset`
(``{"volume": (B, 1, S, S, S), "index": (B,), ...}``); ``predict_step`` aligns each subtomogram to the
reference with :func:`aitom.ops.alignment.align_subtomograms` and returns its rotation (matrix and RELION ZYZ
angles in degrees), shift (voxels) and score, so alignment gets Lightning's devices, DDP and progress bars.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule

from aitom.fourier import missing_wedge_mask
from aitom.ops.alignment import align_subtomograms

__all__ = ["SubtomogramAligner"]


class SubtomogramAligner(LightningModule):
    """Align subtomograms to a fixed reference (missing-wedge aware); use with ``trainer.predict``.

    Args:
        reference: ``(S, S, S)`` reference volume.
        tilt_range_deg: ``(min, max)`` tilt range of the subtomograms' missing wedge, degrees; None: none.
        reference_tilt_range_deg: the reference's wedge, or None for a fully observed reference.
        angular_step_deg: covering radius of the rotation search grid, degrees.
        max_shift_voxels: largest shift searched (None: any).
        max_frequency: highest frequency used, cycles/voxel.
        refine_steps: gradient refinement iterations.
    """

    def __init__(
        self,
        reference: torch.Tensor,
        tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0),
        reference_tilt_range_deg: tuple[float, float] | None = None,
        angular_step_deg: float = 15.0,
        max_shift_voxels: float | None = None,
        max_frequency: float = 0.4,
        refine_steps: int = 60,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["reference"])
        shape = tuple(reference.shape)
        if reference.ndim != 3 or len(set(shape)) != 1:
            raise ValueError(f"reference must be a cubic volume (S, S, S), got {shape}")
        self.register_buffer("reference", reference.to(torch.float32))
        self.register_buffer("mask", self._wedge(shape, tilt_range_deg))
        self.register_buffer("reference_mask", self._wedge(shape, reference_tilt_range_deg))

    @staticmethod
    def _wedge(shape: tuple[int, ...], tilt_range_deg: tuple[float, float] | None) -> torch.Tensor:
        if tilt_range_deg is None:
            return torch.ones(shape)
        return missing_wedge_mask(shape, tilt_min_deg=tilt_range_deg[0], tilt_max_deg=tilt_range_deg[1])

    def forward(self, volumes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Align ``(B, S, S, S)`` or ``(B, 1, S, S, S)`` volumes: rotation, angles_deg, shift_xyz, score."""
        volumes = volumes.reshape(-1, *self.reference.shape).to(self.reference)
        result = align_subtomograms(
            self.reference,
            volumes,
            self.reference_mask,
            self.mask,
            angular_step_deg=self.hparams.angular_step_deg,
            max_shift_voxels=self.hparams.max_shift_voxels,
            max_frequency=self.hparams.max_frequency,
            refine_steps=self.hparams.refine_steps,
        )
        return {
            "rotation": result.rotation,
            "angles_deg": torch.rad2deg(result.angles_rad),
            "shift_xyz": result.shift_xyz,
            "score": result.score,
        }

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        # The refinement differentiates the score; predict runs in inference mode, so leave it (and copy the
        # batch out of it) for the alignment.
        with torch.inference_mode(False), torch.enable_grad():
            output = self(batch["volume"].clone())
        if "index" in batch:
            output["index"] = batch["index"]
        return output
