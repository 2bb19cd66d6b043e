"""Every config under configs/ loads, and runs a short training on its built-in data (tiny).

Configs that other test files already train are not trained twice (``TRAINED_ELSEWHERE``);
configs that are no single training run are only listed (``NOT_A_TRAINING_RUN``). A new config
in neither list is trained here, so it cannot be added without a CI-sized run.
"""

import functools
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import registry
from medjax.testing import configs
from medjax.train import loop

NAMES = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(configs.REPO, "configs", "*.py"))
    if os.path.basename(p) not in ("common.py", "__init__.py")
)
TRAINED_ELSEWHERE = {
    "unet": "tests/train/test_loop.py, tests/test_launch.py",
    "unet3d": "tests/train/test_loop3d.py",
    "luna": "tests/tasks/test_luna_task.py",
    "luna_malignancy": "tests/tasks/test_luna_task.py",
    "vit": "tests/tasks/test_classification_task.py",
}
NOT_A_TRAINING_RUN = {"luna_tune": "a Ray Tune sweep of many runs"}
CLASSIFIERS = ("resnet", "efficientnet", "vit")


def _short(config):
    """One epoch of two steps on one device: the point is that the config runs.

    One device, because compiling for 8 costs more, and the checkpoint of a state replicated
    over 8 devices compiles a slice per array and device (a second per config on 2 cores);
    sharding is tested in tests/train.
    """
    config.train.epochs = 1
    config.train.steps_per_epoch = 2
    config.mesh.data = 1
    return config


@pytest.mark.parametrize("name", NAMES)
def test_config_trains_briefly_on_builtin_data(name, tmp_path):
    if name in TRAINED_ELSEWHERE:
        pytest.skip(f"trained by {TRAINED_ELSEWHERE[name]}")
    if name in NOT_A_TRAINING_RUN:
        pytest.skip(NOT_A_TRAINING_RUN[name])
    config = _short(configs.load_config(name, "tiny"))
    assert not config.data.root  # the built-in data
    summary = loop.train_and_evaluate(config, str(tmp_path))
    assert summary["final_step"] == 2
    monitor = summary[config.ckpt.monitor]
    assert np.isfinite(monitor) and 0.0 <= monitor <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_default_config_is_consistent(name):
    config = configs.load_config(name)
    registry.get(f"tasks.{config.task}")  # a registered task
    registry.get(f"models.{config.model.name}")
    registry.get(f"losses.{config.loss.name}")
    if config.task == "classification":
        # Whole images are fed: the model input is the preprocessed size.
        assert tuple(config.data.patch_size) == tuple(config.data.preprocess.target_size)


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("arg", ["luna", "luna,tiny"])
def test_luna_variant_builds_a_3d_model_for_the_cutouts(name, arg):
    config = configs.load_config(name, arg)
    assert config.task == "luna" and config.model.name == name
    model = loop.build_model(config)
    x = jax.ShapeDtypeStruct((2, *config.data.luna.cutout_size_vox, 1), jnp.float32)
    # Shapes only (nothing compiles): the 3D kernels themselves are tested in tests/models.
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    assert logits.shape == (2, config.model.num_classes)
