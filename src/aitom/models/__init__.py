"""Network architectures: plain ``nn.Module`` classes that tasks (``aitom.tasks``) train."""

from aitom.models.autoencoder import SubtomogramAutoencoder
from aitom.models.classifiers import CB3D, RB3D, BottleneckBlock, DSRF3Dv2, SubtomogramClassifierNet

__all__ = [
    "CB3D",
    "RB3D",
    "BottleneckBlock",
    "DSRF3Dv2",
    "SubtomogramAutoencoder",
    "SubtomogramClassifierNet",
]
