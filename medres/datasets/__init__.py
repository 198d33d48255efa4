"""Adapters that turn public datasets into scan folders plus ``labels.csv``: MedMNIST
arrays, 2D slices cut from 3D volumes, motion-corrupted MR slices labelled by SSIM."""

from medres.datasets.medmnist import ExportSummary, export_medmnist
from medres.datasets.motion import MotionExportSummary, MotionSource, export_motion
from medres.datasets.slices import SliceExportSummary, export_slices

__all__ = [
    "ExportSummary",
    "MotionExportSummary",
    "MotionSource",
    "SliceExportSummary",
    "export_medmnist",
    "export_motion",
    "export_slices",
]
