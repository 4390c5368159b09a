"""corrseg3d: the Pixel-Embedded Affinity model library (network, correlation heads, targets,
losses, augmentation, training). It never imports ``pipeline``."""

__version__ = "0.1.0"
