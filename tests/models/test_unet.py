"""UNet: shapes in 2D/3D, the matmul upsampling equals a transposed convolution, options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import errors, registry
from medjax.models import layers


@pytest.mark.parametrize("shape", [(2, 32, 32, 1), (2, 16, 16, 16, 2)])
def test_unet_shapes_2d_and_3d(shape):
    model = registry.lookup("models", "unet", depth=3, features=4, num_classes=3)
    variables = model.init(jax.random.key(0), jnp.zeros(shape))
    out, _ = model.apply(variables, jnp.ones(shape), train=True, mutable=["batch_stats"])
    assert out.shape == (*shape[:-1], 3) and out.dtype == jnp.float32


def test_unet_parameter_count_matches_hand_count():
    # depth 2, features 4, 1 input channel, 1 output, no norm (conv biases):
    # enc0: 3x3 conv 1->4 (36+4) + 4->4 (144+4) = 188
    # enc1: 4->8 (288+8) + 8->8 (576+8) = 880
    # up0: dense 8 -> 4*4 (128+16) = 144
    # dec0: 8->4 (288+4) + 4->4 (144+4) = 440
    # head: 4->1 (4+1) = 5            total 1657
    model = registry.lookup("models", "unet", depth=2, features=4, use_batch_norm=False)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
    assert sum(x.size for x in jax.tree.leaves(params)) == 1657


@pytest.mark.parametrize("nd", [2, 3])
def test_upsample_matmul_equals_transposed_conv(nd):
    x = jax.random.normal(jax.random.key(1), (2, *(3,) * nd, 5))
    up = layers.UpsampleMatmul(4)
    v = up.init(jax.random.key(2), x)
    ours = up.apply(v, x)
    kernel = np.asarray(v["params"]["Dense_0"]["kernel"]).reshape(5, *(2,) * nd, 4)
    bias = np.asarray(v["params"]["Dense_0"]["bias"]).reshape(*(2,) * nd, 4)
    # Independent float64 reference: each input voxel writes kernel[c, offset] into its 2^nd block.
    xn = np.asarray(x, np.float64)
    ref = np.zeros((2, *(6,) * nd, 4))
    for idx in np.ndindex(*(3,) * nd):
        for off in np.ndindex(*(2,) * nd):
            out_idx = tuple(2 * i + o for i, o in zip(idx, off, strict=True))
            ref[(slice(None), *out_idx)] = (
                xn[(slice(None), *idx)] @ kernel[(slice(None), *off)] + bias[off]
            )
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_unet_rejects_indivisible_size_and_bad_names():
    model = registry.lookup("models", "unet", depth=3, features=4)
    with pytest.raises(errors.ConfigError, match="divisible by 4"):
        model.init(jax.random.key(0), jnp.zeros((1, 30, 30, 1)))
    with pytest.raises(errors.ConfigError, match="unknown keyword.*last_activation"):
        registry.lookup("models", "unet", last_activation="tanh")
    with pytest.raises(errors.ConfigError, match="Registered models: .*unet"):
        registry.lookup("models", "unetx")


def test_unet_options_residual_deep_supervision_remat_bf16():
    model = registry.lookup(
        "models",
        "unet",
        depth=3,
        features=4,
        norm="instance",
        residual=True,
        deep_supervision=True,
        remat=True,
    )
    x = jnp.ones((2, 16, 16, 16, 1))
    variables = model.init(jax.random.key(0), x)
    outs = model.apply(variables, x, train=True)
    assert [o.shape for o in outs] == [(2, 16, 16, 16, 1), (2, 8, 8, 8, 1)]
    assert model.apply(variables, x, train=False).shape == (2, 16, 16, 16, 1)
    bf16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), variables)
    out = model.apply(bf16, x.astype(jnp.bfloat16), train=False)
    assert out.dtype == jnp.float32  # logits always float32
    np.testing.assert_allclose(out, model.apply(variables, x, train=False), atol=0.1, rtol=0.1)
