"""LightningModules, one per method, each wrapping a plain network or an op."""

from aitom.tasks.align import SubtomogramAligner
from aitom.tasks.autoencoder import AutoencoderClustering
from aitom.tasks.classify import Classifier, PredictionWriter, confusion_matrix_image, prediction_table
from aitom.tasks.domain_adaptation import AdversarialDomainAdaptation, DomainDiscriminator
from aitom.tasks.open_set import ClassifierTrunk, OpenSetClassifier
from aitom.tasks.pick import DoGPicker, PickWriter, SaliencyPicker, TemplateMatchingPicker, tile_core_mask
from aitom.tasks.semi_supervised import AutoencoderClassifier3D, SemiSupervisedClassifier

__all__ = [
    "AdversarialDomainAdaptation",
    "AutoencoderClassifier3D",
    "AutoencoderClustering",
    "Classifier",
    "ClassifierTrunk",
    "DoGPicker",
    "DomainDiscriminator",
    "OpenSetClassifier",
    "PickWriter",
    "PredictionWriter",
    "SaliencyPicker",
    "SemiSupervisedClassifier",
    "SubtomogramAligner",
    "TemplateMatchingPicker",
    "confusion_matrix_image",
    "prediction_table",
    "tile_core_mask",
]
