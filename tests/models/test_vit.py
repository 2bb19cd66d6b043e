"""ViT: ViT-B/16 parameter count, 2D and 3D patch embedding, pooling, odd sizes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import errors
from medjax.models import classifiers, vit


def _abstract_variables(model, shape):
    init = functools.partial(model.init, train=False)
    return jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.mark.parametrize("pool, expected", [("cls", 86_567_656), ("mean", 86_567_656 - 2 * 768)])
def test_b16_param_count_equals_timm(pool, expected):
    # Mean pooling drops the class token and its position embedding: 2 * 768 fewer.
    model = vit.get_vit(num_classes=1000, pool=pool)
    params = _abstract_variables(model, (1, 224, 224, 3))["params"]
    assert classifiers.count_params(params) == expected


def test_3d_patch_embedding_and_odd_sizes():
    model = vit.get_vit(patch_size=(3, 4, 5), width=8, depth=1, num_heads=2, mlp_dim=16)
    params = _abstract_variables(model, (1, 9, 16, 15, 2))["params"]
    assert params["patch_embed"]["kernel"].shape == (3, 4, 5, 2, 8)
    assert params["pos_embed"].shape == (1, 3 * 4 * 3 + 1, 8)  # patches + the class token
    with pytest.raises(ValueError, match="multiple of the patch"):
        _abstract_variables(model, (1, 10, 16, 15, 2))
    with pytest.raises(errors.ConfigError, match="num_heads"):
        vit.get_vit(width=10, num_heads=4)
    with pytest.raises(errors.ConfigError, match="pool"):
        vit.get_vit(pool="max")


def test_mean_pool_is_permutation_invariant_over_patches():
    """Without position embeddings, mean pooling makes the logits ignore where patches are."""
    model = vit.get_vit(patch_size=4, width=8, depth=1, num_heads=2, mlp_dim=16, pool="mean")
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 1)).astype(np.float32)
    fast = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    variables = jax.jit(model.init, compiler_options=fast)(jax.random.key(0, impl="rbg"), x)
    variables["params"]["pos_embed"] = jnp.zeros_like(variables["params"]["pos_embed"])
    variables["params"]["head"]["kernel"] = jnp.ones_like(variables["params"]["head"]["kernel"])
    swapped = x.copy()
    swapped[:, :4, :4], swapped[:, 4:, 4:] = x[:, 4:, 4:], x[:, :4, :4]  # swap two patches
    forward = jax.jit(model.apply)
    a, b = forward(variables, x), forward(variables, swapped)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(a)).max() > 0
