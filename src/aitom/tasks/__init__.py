"""LightningModules: one per method (classification, ...), each wrapping a plain network or an op."""

from aitom.tasks.classify import Classifier, PredictionWriter, confusion_matrix_image, prediction_table

__all__ = ["Classifier", "PredictionWriter", "confusion_matrix_image", "prediction_table"]
