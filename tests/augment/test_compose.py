"""Tests of medjax.augment.compose: spec forms, chaining, and batch application."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from medjax import errors
from medjax.augment import compose, intensity

KEY = jax.random.key(0)


def _sample(spatial=(6, 5)):
    rng = np.random.default_rng(0)
    return {
        "image": jnp.asarray(rng.normal(size=(*spatial, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 3, spatial), jnp.int32),
    }


def test_spec_forms_agree():
    sample = _sample()
    direct = jax.random.split(KEY, 1)[0]
    ref = intensity.get_brightness(p=1.0, range=(0.8, 1.2))(direct, sample)["image"]
    specs = [
        "brightness(p=1.0, range=(0.8, 1.2))",
        {"name": "brightness", "p": 1.0, "range": (0.8, 1.2)},
        {"name": "brightness", "kwargs": {"p": 1.0, "range": [0.8, 1.2]}},
        ml_collections.ConfigDict({"name": "brightness", "p": 1.0, "range": (0.8, 1.2)}),
    ]
    for spec in specs:
        out = compose.compose([spec])(KEY, sample)["image"]
        np.testing.assert_array_equal(out, ref)


def test_chain_applies_in_order_with_own_keys():
    sample = {"image": jnp.ones((3, 3, 1))}
    fn = compose.compose(
        ["brightness(p=1.0, range=(2.0, 2.0))", "brightness_additive(p=1.0, range=(1.0, 1.0))"]
    )
    np.testing.assert_allclose(fn(KEY, sample)["image"], 3.0)  # (1 * 2) + 1, not (1 + 1) * 2.
    # Two copies of the same random op draw different factors (each op gets its own key).
    twice = compose.compose(["brightness(p=1.0, range=(0.5, 1.5))"] * 2)(KEY, sample)["image"]
    once = compose.compose(["brightness(p=1.0, range=(0.5, 1.5))"])(KEY, sample)["image"]
    assert not np.allclose(twice, once**2)


@pytest.mark.parametrize("specs", [[], None, ()])
def test_empty_is_identity(specs):
    sample = _sample()
    out = compose.compose(specs)(KEY, sample)
    assert out is sample


def test_unknown_name_lists_registered_ops():
    with pytest.raises(errors.ConfigError, match="brightness.*gamma"):
        compose.compose(["no_such_op(p=1)"])
    with pytest.raises(errors.ConfigError, match="name"):
        compose.compose([{"p": 1.0}])
    with pytest.raises(errors.ConfigError, match="mapping"):
        compose.compose([3])


def test_apply_batch_under_jit_matches_per_example_loop():
    fn = compose.compose(
        ["brightness(p=1.0, range=(0.5, 1.5))", "gaussian_noise(p=0.5, sigma=0.1)"]
    )
    image = jnp.ones((4, 6, 5, 1))
    batch = {
        "image": image,
        "label": jnp.zeros((4, 6, 5), jnp.int32),
        "valid": jnp.array([True, True, False, True]),
    }
    out = jax.jit(lambda k, b: compose.apply_batch(fn, k, b))(KEY, batch)
    assert out["image"].shape == image.shape and out["image"].dtype == image.dtype
    assert out["valid"] is batch["valid"] or np.array_equal(out["valid"], batch["valid"])
    np.testing.assert_array_equal(out["label"], batch["label"])
    # Identical inputs get different augmentations: each example has its own key.
    assert len({float(out["image"][i, 0, 0, 0]) for i in range(4)}) == 4
    # And those keys are the split of the batch key, example by example.
    for i, k in enumerate(jax.random.split(KEY, 4)):
        one = jax.jit(fn)(k, {"image": image[i], "label": batch["label"][i]})
        np.testing.assert_allclose(out["image"][i], one["image"], rtol=1e-6)


def test_apply_batch_classification_labels_pass_through():
    fn = compose.compose(["brightness(p=1.0)"])
    batch = {"image": jnp.ones((2, 4, 4, 4, 1), jnp.bfloat16), "label": jnp.array([0, 1])}
    out = compose.apply_batch(fn, KEY, batch)
    assert out["image"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(out["label"], [0, 1])


def test_apply_batch_sharded_equals_single_device():
    # The train step sees a global batch sharded over "data"; per-example keys must not depend
    # on the layout (threefry_partitionable is on in conftest).
    fn = compose.compose(
        ["brightness(p=0.5, range=(0.5, 1.5))", "affine(p=1.0, rotation=20, translation=0.1)"]
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 3, (8, 8, 8)), jnp.int32),
    }
    traces = []

    def step(k, b):
        traces.append(1)  # Runs once per trace, not per call.
        return compose.apply_batch(fn, k, b)

    jitted = jax.jit(step)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(
        batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    )
    out_sharded = jitted(KEY, sharded)
    out_single = jax.jit(lambda k, b: compose.apply_batch(fn, k, b))(KEY, batch)
    np.testing.assert_allclose(out_sharded["image"], out_single["image"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out_sharded["label"], out_single["label"])
    # New keys do not retrace.
    for seed in range(1, 3):
        jitted(jax.random.key(seed), sharded)
    assert len(traces) == 1
