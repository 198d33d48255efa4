"""Adapters that turn public datasets into scan folders plus ``labels.csv``."""

from medres.datasets.medmnist import ExportSummary, export_medmnist

__all__ = ["ExportSummary", "export_medmnist"]
