"""Batch prediction over scan folders (``medres predict``).

:func:`predict_folder` runs a bundle over a folder; :mod:`medres.predict.store` keeps its
output crash-safe and resumable; :mod:`medres.predict.scans` decodes and checks scans.
"""

from medres.predict.job import PredictOptions, PredictRun, predict_folder

__all__ = ["PredictOptions", "PredictRun", "predict_folder"]
