"""calibmonai: MONAI bundles and building blocks for well-calibrated medical image segmentation."""

__version__ = "0.1.0"
