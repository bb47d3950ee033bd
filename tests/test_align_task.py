"""SubtomogramAligner under trainer.predict recovers planted poses."""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from aitom.geometry import rotation_angle_between
from aitom.tasks.align import SubtomogramAligner
from tests.align_fixtures import blob_volume, posed_subtomograms


def test_aligner_predict_recovers_poses():
    reference = blob_volume(24)
    volumes, rotations, shifts = posed_subtomograms(reference, 2, seed=9, max_shift=2.0)
    items = [{"volume": volume[None], "index": torch.tensor(index)} for index, volume in enumerate(volumes)]
    model = SubtomogramAligner(reference, angular_step_deg=20.0, max_shift_voxels=4, refine_steps=30)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False)
    (output,) = trainer.predict(model, DataLoader(items, batch_size=2))
    assert torch.equal(output["index"], torch.tensor([0, 1]))
    error_deg = torch.rad2deg(rotation_angle_between(output["rotation"], rotations))
    assert float(error_deg.max()) < 2.0
    assert float((output["shift_xyz"] - shifts).norm(dim=1).max()) < 0.5
    assert output["angles_deg"].shape == (2, 3)
