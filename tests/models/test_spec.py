"""models.spec: every config's model builds with the same parameters as before the shared
options moved to the top of the model section; the accessors; misplaced options are errors."""

import hashlib
import importlib
import math

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

from medjax import errors
from medjax.models import spec

# Recorded with jax.eval_shape from the model built by `loop.build_model` before the shared
# options moved (model.kwargs held in_channels / out_channels / num_classes / deep_supervision
# then): the number of variables (params and batch statistics) and a hash of every
# "path:shape", sorted.
BEFORE = [
    ("attention_unet:tiny", 7927, "652f192be927"),
    ("deeplab:tiny", 33021, "3ba8a5c34d84"),
    ("efficientnet:tiny", 199320, "ee5db2e3f7e6"),
    ("luna:tiny", 55162, "fae5d9c53fba"),
    ("resnet:tiny", 45046, "a2906fa87043"),
    ("unet3d:full", 5602883, "156d72fb3ee5"),  # deep supervision on
    ("unet3d:tiny", 4785, "d7ab93e77a9b"),
    ("unet:tiny", 1753, "f729803c7ec3"),
    ("unetpp:tiny", 8425, "95f039bca3db"),
    ("vit:tiny", 5842, "ece394fc6e31"),
]


def _config(name_arg):
    name, arg = name_arg.split(":")
    return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.parametrize(("name_arg", "count", "digest"), BEFORE)
def test_every_config_builds_the_same_parameters(name_arg, count, digest):
    config = _config(name_arg)
    spatial = config.data.luna.cutout_size_vox if config.task == "luna" else config.data.patch_size
    model = spec.build(config)
    x = jnp.zeros((1, *spatial, spec.in_channels(config)))
    variables = jax.eval_shape(lambda k: model.init(k, x, train=False), jax.random.key(0))
    flat = traverse_util.flatten_dict(variables, sep="/")
    text = ";".join(f"{p}:{tuple(flat[p].shape)}" for p in sorted(flat))
    assert sum(math.prod(v.shape) for v in flat.values()) == count
    assert hashlib.sha1(text.encode()).hexdigest()[:12] == digest


def test_accessors_read_the_top_level_options():
    config = _config("unet3d:full")
    assert (spec.in_channels(config), spec.num_classes(config)) == (1, 1)
    assert spec.deep_supervision(config) is True
    assert spec.num_classes(_config("luna:tiny")) == 2
    assert "conv_impl" not in spec.factory_kwargs(_config("resnet:tiny"))  # plain nn.Conv
    assert spec.factory_kwargs(_config("unet:tiny"))["conv_impl"] == "auto"


def test_shared_options_in_model_kwargs_are_config_errors():
    config = _config("unet:tiny")
    config.model.kwargs.out_channels = 3
    with pytest.raises(errors.ConfigError, match="model.kwargs.out_channels.*model.num_classes"):
        spec.build(config)
    config = _config("resnet:tiny")
    config.model.deep_supervision = True
    with pytest.raises(errors.ConfigError, match="deep_supervision"):
        spec.build(config)
