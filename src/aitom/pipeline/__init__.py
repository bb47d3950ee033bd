"""``aitom pipeline``: tomogram in, structural map out — denoise, pick, extract, classify, align and average.

Python API: ``run_pipeline(tomogram_path, out_dir, load_pipeline_config("configs/pipeline.yaml"))``.
"""

from __future__ import annotations

from aitom.pipeline.config import (
    AverageConfig,
    ClassifyConfig,
    DenoiseConfig,
    ExtractConfig,
    PickConfig,
    PipelineConfig,
    WedgeConfig,
    box_size_voxels,
    config_to_yaml,
    load_pipeline_config,
    validate_config,
)
from aitom.pipeline.run import PipelineResult, run_pipeline

__all__ = [
    "AverageConfig",
    "ClassifyConfig",
    "DenoiseConfig",
    "ExtractConfig",
    "PickConfig",
    "PipelineConfig",
    "PipelineResult",
    "WedgeConfig",
    "box_size_voxels",
    "config_to_yaml",
    "load_pipeline_config",
    "run_pipeline",
    "validate_config",
]
