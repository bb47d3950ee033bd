"""LightningModules, one per method, each wrapping a plain network or an op."""

from aitom.tasks.align import SubtomogramAligner
from aitom.tasks.classify import Classifier, PredictionWriter, confusion_matrix_image, prediction_table

__all__ = [
    "Classifier",
    "PredictionWriter",
    "SubtomogramAligner",
    "confusion_matrix_image",
    "prediction_table",
]
