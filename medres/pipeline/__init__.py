"""Domain pipelines: ``medres run pipelines/NAME`` (configuration in, results table out)."""

from medres.pipeline.config import PipelineConfig, load_pipeline
from medres.pipeline.run import PipelineRun, run_pipeline

__all__ = ["PipelineConfig", "PipelineRun", "load_pipeline", "run_pipeline"]
