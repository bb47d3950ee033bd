"""LightningModules, one per method, each wrapping a plain network or an op."""

from aitom.tasks.align import SubtomogramAligner
from aitom.tasks.classify import Classifier, PredictionWriter, confusion_matrix_image, prediction_table
from aitom.tasks.pick import DoGPicker, PickWriter, SaliencyPicker, TemplateMatchingPicker, tile_core_mask

__all__ = [
    "Classifier",
    "DoGPicker",
    "PickWriter",
    "PredictionWriter",
    "SaliencyPicker",
    "SubtomogramAligner",
    "TemplateMatchingPicker",
    "confusion_matrix_image",
    "prediction_table",
    "tile_core_mask",
]
