"""medjax: a functional JAX/Flax framework for medical-image segmentation and classification."""

__version__ = "0.1.0"
