"""The evaluation runner with a task that is none of the built-in ones: unlabelled cases in
padded batches over 8 devices, and whole cases by sliding windows; the accumulator sees host
arrays equal to a numpy float64 reference."""

import jax
import numpy as np
import pytest

from medjax.evaluate import runner
from medjax.tasks import base
from medjax.train import mesh as mesh_lib


class _Mean:
    """Per-case mean intensity of unlabelled images (no ``label`` anywhere)."""

    def __init__(self, images, windows=False):
        self.images = images
        if windows:
            self.inputs = base.Windows(
                lambda: enumerate(images), tile_size=(8, 8), num_classes=1, fn="logits"
            )
        else:
            self.inputs = base.Batches(self._batches, fn="mean")
        self.result = base.EvalResult()

    def _batches(self, batch_size):  # unpadded: the runner pads the last one
        for start in range(0, len(self.images), batch_size):
            chunk = self.images[start : start + batch_size]
            yield {"image": chunk, "index": np.arange(start, start + len(chunk))}

    def accumulate(self, out, batch):
        key = "mean" if "mean" in out else "logits"
        for row in np.flatnonzero(batch["valid"]):
            self.result.predictions[int(batch["index"][row])] = np.asarray(out[key][row])

    def finalize(self):
        return self.result


class _Task:
    def __init__(self, images, windows=False):
        self.images, self.windows = images, windows

    def evaluation(self, split, *, keep_predictions=False):
        del split, keep_predictions
        return _Mean(self.images, self.windows)


@pytest.fixture(scope="module")
def setup():
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
    batch_sh, repl = mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)
    fns = {
        "mean": lambda state, b: {"mean": b["image"].mean(axis=(1, 2, 3)) * state},
        "logits": lambda state, w: w[..., :1] * state,
    }
    jitted = {
        k: jax.jit(f, in_shardings=(repl, batch_sh), out_shardings=batch_sh) for k, f in fns.items()
    }
    return batch_sh, jitted, jax.device_put(np.float32(2.0), repl)


def test_unlabelled_batches_are_sharded_gathered_and_unpadded(setup):
    batch_sh, fns, state = setup
    images = np.random.default_rng(0).normal(size=(11, 6, 6, 2)).astype(np.float32)
    result = runner.evaluate(
        _Task(images), fns, state, "new", batch_sharding=batch_sh, batch_size=8
    )
    assert sorted(result.predictions) == list(range(11))  # padding rows dropped
    expected = 2.0 * images.astype(np.float64).mean(axis=(1, 2, 3))
    got = np.array([result.predictions[i] for i in range(11)])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def test_windows_blend_whole_cases(setup):
    batch_sh, fns, state = setup
    rng = np.random.default_rng(1)
    images = [rng.normal(size=(s, 12, 1)).astype(np.float32) for s in (12, 9)]
    task = _Task(images, windows=True)
    result = runner.evaluate(task, fns, state, "new", batch_sharding=batch_sh, batch_size=8)
    for i, image in enumerate(images):
        # Every window predicts 2 * image: any weighted blend of them is 2 * image again.
        np.testing.assert_allclose(result.predictions[i], 2.0 * image, rtol=1e-5, atol=1e-5)
