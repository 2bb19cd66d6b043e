"""medjax: a functional JAX/Flax framework for medical-image segmentation and classification."""

__version__ = "0.1.0"

# XLA reads XLA_FLAGS when its first backend starts: set medjax's defaults before that.
from medjax import xla_env  # noqa: E402

xla_env.apply_xla_defaults()

# The public IO API: ``medjax.read_volume(path) -> Volume`` and ``medjax.write_volume``.
from medjax.data.io import Volume, read_volume, write_volume  # noqa: E402

__all__ = ["Volume", "read_volume", "write_volume"]
