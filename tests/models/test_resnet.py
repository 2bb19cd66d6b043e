"""ResNet: torchvision parameter counts, 2D -> 3D kernels, norms and stems (all abstract)."""

import functools
import math

import jax
import jax.numpy as jnp
import pytest

from medjax import errors, registry
from medjax.models import classifiers, resnet


def _abstract_variables(model, shape):
    init = functools.partial(model.init, train=False)
    return jax.eval_shape(init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


@pytest.mark.parametrize("depth, expected", [(18, 11_689_512), (50, 25_557_032)])
def test_imagenet_param_counts_equal_torchvision(depth, expected):
    model = resnet.get_resnet(depth=depth, num_classes=1000)
    params = _abstract_variables(model, (1, 224, 224, 3))["params"]
    assert classifiers.count_params(params) == expected


def test_3d_count_scales_conv_kernels():
    """Each 2D conv kernel [k, k, in, out] gains a factor k in 3D; norms and the head do not."""
    model = resnet.get_resnet(depth=34, width=8, num_classes=2, in_channels=1)
    p2 = _abstract_variables(model, (1, 32, 32, 1))["params"]
    p3 = _abstract_variables(model, (1, 32, 32, 32, 1))["params"]
    expected = sum(
        math.prod(leaf.shape) * (leaf.shape[0] if leaf.ndim == 4 else 1)
        for leaf in jax.tree_util.tree_leaves(p2)
    )
    assert classifiers.count_params(p3) == expected
    # ResNet-34 stages: 3, 4, 6, 3 basic blocks.
    assert sum(k.startswith("stage3_") for k in p3) == 6


@pytest.mark.parametrize("norm", ["batch", "group", "instance"])
def test_norms_and_stems(norm):
    x = jax.ShapeDtypeStruct((2, 16, 16, 16, 1), jnp.float32)
    for small, stem_kernel, stage1_size in [(False, 7, 4), (True, 3, 16)]:
        model = resnet.get_resnet(depth=18, width=8, norm=norm, small_input=small)
        variables = _abstract_variables(model, x.shape)
        assert ("batch_stats" in variables) == (norm == "batch")
        assert variables["params"]["stem_conv"]["kernel"].shape == (stem_kernel,) * 3 + (1, 8)
        _, state = jax.eval_shape(
            functools.partial(model.apply, capture_intermediates=True), variables, x
        )
        # The ImageNet stem divides the resolution by 4 before stage 1; the small stem keeps it.
        block = state["intermediates"]["stage1_block1"]["__call__"][0]
        assert block.shape == (2,) + (stage1_size,) * 3 + (8,)


def test_bottleneck_widths():
    variables = _abstract_variables(resnet.get_resnet(depth=50, width=4), (1, 32, 32, 3))
    block = variables["params"]["stage4_block1"]
    assert block["conv3"]["kernel"].shape == (1, 1, 32, 128)  # width * 8 * expansion 4
    assert block["proj_conv"]["kernel"].shape == (1, 1, 64, 128)
    assert variables["params"]["head"]["kernel"].shape == (128, 2)


def test_bad_config():
    with pytest.raises(errors.ConfigError, match="depth"):
        registry.lookup("models", "resnet(depth=19)")
    with pytest.raises(errors.ConfigError, match="norm"):
        registry.lookup("models", "resnet(norm='layer')")
