"""medjax: a functional JAX/Flax framework for medical-image segmentation and classification."""

__version__ = "0.1.0"

# The public IO API: ``medjax.read_volume(path) -> Volume`` and ``medjax.write_volume``.
from medjax.data.io import Volume, read_volume, write_volume  # noqa: E402

__all__ = ["Volume", "read_volume", "write_volume"]
