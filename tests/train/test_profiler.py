"""``train.profile_steps``: a JAX profiler trace of the train step in the workdir, and bad
windows rejected with the key's name before any work."""

import glob
import os

import pytest

from medjax import errors
from medjax.testing import configs
from medjax.train import loop


def _config(**overrides):
    config = configs.tiny_unet(**overrides)
    config.train.epochs = 1
    config.train.steps_per_epoch = 3
    config.log.num_images = 0
    return config


def test_profile_steps_write_a_trace_of_the_train_step(tmp_path):
    summary = loop.train_and_evaluate(_config(train__profile_steps=(1, 3)), str(tmp_path))
    assert summary["final_step"] == 3
    # TensorBoard's profile tab reads <logdir>/plugins/profile/<run>/<host>.xplane.pb.
    traces = glob.glob(os.path.join(tmp_path, "profile", "plugins", "profile", "*", "*.xplane.pb"))
    assert len(traces) == 1, traces
    data = open(traces[0], "rb").read()
    assert len(data) > 1000
    assert b"train_step" in data  # the jitted step's XLA module (jit_train_step) was traced


@pytest.mark.parametrize("window", [(2, 2), (3, 1), (0, 4), (-1, 2), (1, 2, 3), (0.5, 2)])
def test_bad_profile_window_is_a_config_error(tmp_path, window):
    # 1 epoch x 3 steps: a window must lie within steps 0..3 and start before it stops.
    with pytest.raises(errors.ConfigError, match=r"train\.profile_steps"):
        loop.train_and_evaluate(_config(train__profile_steps=window), str(tmp_path))
    assert not os.path.exists(os.path.join(tmp_path, "metrics.jsonl"))  # failed before work
