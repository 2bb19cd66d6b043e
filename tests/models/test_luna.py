"""LunaModel: parameter count against the torch model, 2D variant, batch statistics."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import errors, registry
from medjax.models import classifiers, luna


def _abstract_params(model, shape):
    init = functools.partial(model.init, train=False)
    return jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))[
        "params"
    ]


def test_param_count_equals_torch():
    params = _abstract_params(luna.get_luna(), (1, 32, 48, 48, 1))
    # Hand count of the torch model: k^3*cin*cout + cout per conv, BatchNorm3d(1) weight + bias,
    # Linear(1152, 2).
    chans = [1, 8, 16, 32, 64]
    convs = sum(27 * a * b + b + 27 * b * b + b for a, b in zip(chans, chans[1:], strict=False))
    assert classifiers.count_params(params) == 2 + convs + 1152 * 2 + 2 == 222_220
    assert params["head_linear"]["kernel"].shape == (1152, 2)
    assert params["block1"]["conv1"]["kernel"].shape == (3, 3, 3, 1, 8)


def test_2d_count_and_batch_stats_momentum():
    model = luna.get_luna(channels=4, in_channels=2)
    chans = [2, 4, 8, 16, 32]
    convs = sum(9 * a * b + b + 9 * b * b + b for a, b in zip(chans, chans[1:], strict=False))
    params = _abstract_params(model, (2, 16, 16, 2))
    assert classifiers.count_params(params) == 2 * 2 + convs + 32 * 2 + 2

    # Only the input batch norm runs: its running mean moves as torch's (momentum 0.1).
    x = jnp.full((2, 16, 16, 2), 4.0)
    variables = {
        "params": jax.tree.map(lambda s: jnp.zeros(s.shape), params),
        "batch_stats": {"tail_batchnorm": {"mean": jnp.zeros(2), "var": jnp.ones(2)}},
    }
    _, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    np.testing.assert_allclose(updates["batch_stats"]["tail_batchnorm"]["mean"], 0.4, rtol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["tail_batchnorm"]["var"], 0.9, rtol=1e-6)


def test_channel_check_and_registry_alias():
    model = luna.get_luna(in_channels=1)
    with pytest.raises(errors.ConfigError, match="in_channels"):
        _abstract_params(model, (2, 16, 16, 16, 3))
    assert isinstance(registry.lookup("models", "LunaModel(channels=4)"), luna.LunaModel)


def test_num_blocks_changes_depth_and_head_size():
    # 3 blocks on the book's 32x48x48 cutout: the head sees 32 channels x (4 * 6 * 6) voxels;
    # 1,960 + 10,400 + 41,536 (the docstring's first three blocks) + 2 + 4608 * 2 + 2.
    params = _abstract_params(luna.get_luna(num_blocks=3), (1, 32, 48, 48, 1))
    chans = [1, 8, 16, 32]
    convs = sum(27 * a * b + b + 27 * b * b + b for a, b in zip(chans, chans[1:], strict=False))
    assert classifiers.count_params(params) == 2 + convs + 4608 * 2 + 2 == 63_116
    assert sorted(k for k in params if k.startswith("block")) == ["block1", "block2", "block3"]
    # 5 blocks in 2D (64x64 -> 2x2, 4 * 2**4 = 64 channels): another hand count.
    params = _abstract_params(luna.get_luna(channels=4, num_blocks=5), (2, 64, 64, 1))
    chans = [1, 4, 8, 16, 32, 64]
    convs = sum(9 * a * b + b + 9 * b * b + b for a, b in zip(chans, chans[1:], strict=False))
    assert classifiers.count_params(params) == 2 + convs + 64 * 4 * 2 + 2


@pytest.mark.parametrize("num_blocks", [0, 5])
def test_num_blocks_too_deep_for_the_input_names_the_key(num_blocks):
    with pytest.raises(errors.ConfigError, match=f"num_blocks={num_blocks}"):
        _abstract_params(luna.get_luna(num_blocks=num_blocks), (1, 16, 16, 16, 1))
