"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests must not write into the user's cache.
os.environ.setdefault("MEDJAX_CACHE", os.path.join(os.path.dirname(__file__), ".cache"))

import jax  # noqa: E402
import pytest  # noqa: E402

import medjax  # noqa: E402, F401 - its XLA defaults go into XLA_FLAGS before any backend starts

jax.config.update("jax_threefry_partitionable", True)
# Tests run tiny programs a few times: compile time dominates, so compile fast (STYLE.md sec. 10).
jax.config.update("jax_disable_most_optimizations", True)


def pytest_collection_modifyitems(config, items):
    del config
    on_gpu = any(d.platform == "gpu" for d in jax.devices())
    skip_gpu = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "gpu" in item.keywords and not on_gpu:
            item.add_marker(skip_gpu)


# Compiled programs are cached across the many short runs of the suite.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.environ["MEDJAX_CACHE"], "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
