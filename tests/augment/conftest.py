"""Fast compiles for the augmentation tests (STYLE.md sec. 10).

The root conftest does not set ``jax_disable_most_optimizations`` yet; the random draws of the
augmentation graphs compile about 7x faster with it. The setting is switched on only while a test
in this folder runs, and restored afterwards, so other folders' tests are not affected.
"""

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _fast_compiles():
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
