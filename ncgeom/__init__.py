"""ncgeom: the geometry of neural collapse for class-imbalanced classifiers."""

__version__ = "0.1.0"

__all__ = ["__version__"]
