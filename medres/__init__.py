"""medres: calibrated, uncertainty-aware ResNet classifiers for medical scans."""

__version__ = "0.1.0"
