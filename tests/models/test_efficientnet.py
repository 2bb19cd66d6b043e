"""EfficientNet: torchvision B0 parameter count, compound scaling, stochastic depth."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import errors, registry
from medjax.models import classifiers, efficientnet


def _abstract_variables(model, shape):
    init = functools.partial(model.init, train=False)
    return jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


def test_b0_param_count_equals_torchvision():
    model = efficientnet.get_efficientnet(variant="b0", num_classes=1000)
    params = _abstract_variables(model, (1, 224, 224, 3))["params"]
    assert classifiers.count_params(params) == 5_288_548


@pytest.mark.parametrize(
    "channels, expected",
    [
        (32, 32),
        (32 * 1.1, 32),  # 35.2 -> 32, which is >= 0.9 * 35.2
        (16 * 1.2, 24),  # 19.2 -> 16, which is < 0.9 * 19.2, so one step up
        (40 * 1.1, 48),
        (1280 * 1.2, 1536),
        (10, 16),  # 10 -> 8 < 9 -> 16
    ],
)
def test_round_channels(channels, expected):
    assert efficientnet.round_channels(channels) == expected


def test_b3_compound_scaling_3d():
    model = efficientnet.get_efficientnet(variant="b3", num_classes=2)
    params = _abstract_variables(model, (1, 16, 16, 16, 1))["params"]
    blocks = [k for k in params if k.startswith("stage")]
    # Depth 1.4: ceil(1.4 * [1, 2, 2, 3, 3, 4, 1]) = [2, 3, 3, 5, 5, 6, 2] = 26 blocks.
    assert len(blocks) == 26 and "stage4_block5" in params
    # Width 1.2: stem 32 -> 40, last stage 320 -> 384, head 1280 -> 1536; 3D kernels.
    assert params["stem_conv"]["kernel"].shape == (3, 3, 3, 1, 40)
    assert params["stage7_block2"]["project_conv"]["kernel"].shape[-1] == 384
    assert params["head"]["kernel"].shape == (1536, 2)
    # MBConv: depthwise kernel 5 in stage 6; squeeze width is a quarter of the block input.
    block = params["stage6_block2"]
    assert block["dw_conv"]["kernel"].shape == (5, 5, 5, 1, 232 * 6)
    assert block["se_reduce"]["kernel"].shape == (1, 1, 1, 232 * 6, 232 // 4)
    assert math.ceil(4 * 1.4) == 6


def test_stochastic_depth_only_in_training():
    # Depth 0.5 leaves stages 4-6 with two blocks; each second block is residual, so droppable.
    model = efficientnet.get_efficientnet(
        width_scale=0.25, depth_scale=0.5, stochastic_depth=0.5, norm="group"
    )
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 1)), jnp.float32)
    fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    variables = jax.jit(model.init, compiler_options=fast)(jax.random.key(0, impl="rbg"), x)

    @functools.partial(jax.jit, static_argnums=1)
    def forward(key, train):
        return model.apply(variables, x, train=train, rngs={"dropout": key})

    train = [forward(jax.random.key(i, impl="rbg"), True) for i in (0, 1)]
    assert not np.allclose(train[0], train[1])  # blocks are dropped at random in training
    evals = [forward(jax.random.key(i, impl="rbg"), False) for i in (0, 1)]
    np.testing.assert_array_equal(evals[0], evals[1])
    with pytest.raises(errors.ConfigError, match="variant"):
        registry.lookup("models", "efficientnet(variant='b7')")
