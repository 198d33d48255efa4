"""MR motion QA data: k-space motion simulation and SSIM (:mod:`.simulate`), and the export
of motion-corrupted slices of real volumes labelled by SSIM (:mod:`.export`)."""

from medres.datasets.motion.export import (
    CSV_COLUMNS,
    MotionExportSummary,
    MotionSource,
    export_motion,
)
from medres.datasets.motion.simulate import simulate_motion, ssim

__all__ = [
    "CSV_COLUMNS",
    "MotionExportSummary",
    "MotionSource",
    "export_motion",
    "simulate_motion",
    "ssim",
]
