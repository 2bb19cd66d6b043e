"""``loop.build_model``: ``model.conv_impl`` reaches the jitted train step (same parameters,
same step to float tolerance, XLA's 3D convolution traced only when forced); unknown values are
ConfigErrors naming the key."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import unet3d
from medjax import errors
from medjax.testing import jaxprs
from medjax.train import loop
from medjax.train import state as state_lib
from medjax.train import step as step_lib


def _step_once(config):
    model = loop.build_model(config)
    shape = (2, 8, 16, 16, 1)
    state = state_lib.create_train_state(model, optax.sgd(0.1), shape, jax.random.key(0))
    step = step_lib.make_train_step(loop.build_loss(config), None, optax.constant_schedule(0.1))
    image = jax.random.normal(jax.random.key(1), shape)
    batch = {"image": image, "label": (image[..., 0] > 1.0).astype(jnp.int32)}
    ranks = jaxprs.conv_input_ranks(jax.make_jaxpr(step)(state, batch, jax.random.key(2)).jaxpr)
    new_state, metrics = jax.jit(step)(state, batch, jax.random.key(2))
    return state, new_state, metrics, ranks


def test_conv_impl_reaches_the_train_step():
    config = unet3d.get_config("tiny")
    config.model.kwargs.depth = 2
    before_auto, after_auto, m_auto, ranks_auto = _step_once(config)
    config.model.conv_impl = "xla"
    before_xla, after_xla, m_xla, ranks_xla = _step_once(config)
    # auto on the CPU: no 3D convolution primitive (depth2d / im2col); forced: only 3D ones.
    assert jax.default_backend() == "cpu"
    assert 5 not in ranks_auto
    assert ranks_xla and set(ranks_xla) == {5}
    for a, b in zip(
        jax.tree.leaves(before_auto.params), jax.tree.leaves(before_xla.params), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(m_auto["loss"], m_xla["loss"], rtol=1e-5)
    for a, b in zip(
        jax.tree.leaves(after_auto.params), jax.tree.leaves(after_xla.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_unknown_conv_impl_names_the_key():
    config = unet3d.get_config("tiny")
    config.model.conv_impl = "winograd"
    with pytest.raises(errors.ConfigError, match=r"model\.conv_impl='winograd'.*depth2d"):
        loop.build_model(config)
