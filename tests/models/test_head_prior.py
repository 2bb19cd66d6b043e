"""``model.kwargs.head_prior``: every segmentation model's heads start at the given foreground
probability (UNet, Attention UNet, UNet++, DeepLabV3+)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import errors, registry

MODELS = ("unet", "attention_unet", "unetpp", "deeplab")


def _head_biases(
    num_classes: int, prior: float, deep_supervision: bool = False, name: str = "unet"
) -> dict:
    if name == "deeplab":
        shape = {"resnet_depth": 10, "aspp_features": 8, "low_level_features": 4}
    else:
        shape = {"depth": 3, "deep_supervision": deep_supervision}
    model = registry.lookup(
        "models",
        name,
        num_classes=num_classes,
        features=4,
        norm="instance",
        head_prior=prior,
        **shape,
    )
    params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), train=False)["params"]
    return {
        k: np.asarray(v["bias"], np.float64)
        for k, v in params.items()
        if "head" in k or k.startswith("ds")
    }


@pytest.mark.parametrize("name", MODELS)
def test_sigmoid_head_starts_at_the_prior(name):
    biases = _head_biases(1, 0.01, deep_supervision=name != "deeplab", name=name)
    # The deep-supervision heads too (DeepLabV3+ has one output scale).
    assert set(biases) == ({"head"} if name == "deeplab" else {"head", "ds1"})
    for bias in biases.values():
        # sigmoid(bias) == prior, against the float64 logit of 0.01.
        np.testing.assert_allclose(bias, [np.log(0.01 / 0.99)], rtol=1e-6)
        np.testing.assert_allclose(1.0 / (1.0 + np.exp(-bias)), [0.01], rtol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_softmax_head_gives_background_one_minus_the_prior(name):
    (bias,) = _head_biases(3, 0.02, name=name).values()
    probs = np.exp(bias) / np.exp(bias).sum()
    np.testing.assert_allclose(probs, [0.98, 0.01, 0.01], rtol=1e-6)


def test_no_prior_keeps_a_zero_bias():
    (bias,) = _head_biases(1, 0.0).values()
    np.testing.assert_array_equal(bias, [0.0])


def test_a_prior_outside_zero_one_is_refused():
    with pytest.raises(errors.ConfigError, match="head_prior"):
        _head_biases(1, 1.5)
