"""``loss.deep_supervision_weights``: the config's weights reach the training loss (checked
against the model's outputs), and UNet / UNet++ train with deep supervision on."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import errors
from medjax.testing import configs
from medjax.train import loop, optim
from medjax.train import state as state_lib
from medjax.train import step as step_lib


def _unet_ds(weights=()):
    config = configs.tiny_unet()
    config.model.kwargs.depth = 3  # two training outputs: full and half resolution
    config.model.deep_supervision = True
    config.loss.deep_supervision_weights = weights
    return config


def _logits_and_labels():
    key0, key1, key2 = jax.random.split(jax.random.key(0), 3)
    full = jax.random.normal(key0, (2, 8, 8, 1))
    half = jax.random.normal(key1, (2, 4, 4, 1))
    labels = (jax.random.uniform(key2, (2, 8, 8)) > 0.6).astype(jnp.int32)
    return full, half, labels


def test_config_weights_weigh_the_levels(caplog):
    full, half, labels = _logits_and_labels()
    # Jitted: one compilation each instead of one per eager op.
    inner = jax.jit(loop.build_loss(_unet_ds(), train=False))  # never wrapped: evaluation's
    # The half-resolution level sees every 2nd label (nearest), written out by hand here.
    per_level = [inner(full, labels), inner(half, labels[:, ::2, ::2])]
    got = jax.jit(loop.build_loss(_unet_ds((0.7, 0.3))))([full, half], labels)
    np.testing.assert_allclose(got, 0.7 * per_level[0] + 0.3 * per_level[1], rtol=1e-5)
    assert "does nothing" not in caplog.text
    # (): nnU-Net's default, 1/2**i with the lowest level 0 -> (1, 0) for two levels: deep
    # supervision then does nothing, and the user is told so.
    got = jax.jit(loop.build_loss(_unet_ds()))([full, half], labels)
    np.testing.assert_allclose(got, per_level[0], rtol=1e-5)
    assert "model.deep_supervision=True with 2 outputs does nothing" in caplog.text


def test_bad_weights_are_config_errors_naming_the_key():
    full, half, labels = _logits_and_labels()
    loss = loop.build_loss(_unet_ds((0.5, 0.3, 0.2)))
    with pytest.raises(errors.ConfigError, match=r"deep_supervision_weights has 3 .* 2 outputs"):
        loss([full, half], labels)
    for weights in ((0.5, -0.5), (0.0, 0.0)):
        with pytest.raises(errors.ConfigError, match=r"loss\.deep_supervision_weights"):
            loop.build_loss(_unet_ds(weights))


@pytest.mark.parametrize(("name", "weights"), [("unet", (1.0, 0.0)), ("unetpp", (0.0, 1.0))])
def test_a_train_step_follows_the_weights_of_each_head(name, weights):
    config = configs.load_config(name, "tiny")
    if name == "unet":
        config.model.kwargs.depth = 3  # outputs: "head" (full), "ds1" (half resolution)
    config.model.deep_supervision = True  # unetpp depth 3: "head" (X02), "ds1" (X01)
    config.loss.deep_supervision_weights = weights
    config.schedule.name, config.schedule.warmup_steps = "constant", 0  # a rate > 0 at step 0
    tx, schedule = optim.make_optimizer(config, 10)
    model = loop.build_model(config)
    state = state_lib.create_train_state(model, tx, (1, 32, 32, 1), jax.random.key(0))
    step = jax.jit(step_lib.make_train_step(loop.build_loss(config), None, schedule))
    key_image, key_label = jax.random.split(jax.random.key(1))
    batch = {
        "image": jax.random.normal(key_image, (8, 32, 32, 1)),
        "label": (jax.random.uniform(key_label, (8, 32, 32)) > 0.7).astype(jnp.int32),
    }
    new, metrics = step(state, batch, jax.random.key(2))
    assert np.isfinite(float(metrics["loss"]))
    # A head with weight 0 gets a zero gradient, and Adam leaves it exactly where it was;
    # the order of the weights is the order of the outputs (full resolution / final first).
    for head, weight in zip(("head", "ds1"), weights, strict=True):
        same = all(
            np.array_equal(new.params[head][k], state.params[head][k]) for k in ("kernel", "bias")
        )
        assert same == (weight == 0.0), head


def test_unetpp_config_trains_and_validates_with_deep_supervision(tmp_path):
    config = configs.load_config("unetpp", "tiny")
    config.model.deep_supervision = True
    assert tuple(config.loss.deep_supervision_weights) == (0.5, 0.5)  # the config's own
    config.train.epochs = 1
    config.train.steps_per_epoch = 2
    config.log.num_images = 0
    summary = loop.train_and_evaluate(config, str(tmp_path))
    lines = [json.loads(x) for x in open(os.path.join(tmp_path, "metrics.jsonl"))]
    losses = [x["train/loss"] for x in lines if "train/loss" in x]
    assert summary["final_step"] == 2 and losses and np.all(np.isfinite(losses))
    # Validation runs the single full-resolution output through the unwrapped loss.
    assert 0.0 <= summary["val/dice"] <= 1.0 and np.isfinite(summary["val/loss"])
