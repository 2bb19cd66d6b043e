"""Whole-image evaluation path: mirroring TTA (vs a numpy float64 reference) and HD95/ASSD."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medjax import registry
from medjax.data import sources, store
from medjax.evaluate import segmentation as seg_eval
from medjax.evaluate import sliding_window as sw
from medjax.metrics import surface
from medjax.train import state as state_lib
from medjax.train import step as step_lib

SHAPE = (16, 12)
SPACINGS = [(1.0, 0.5), (2.0, 1.0), (0.7, 0.7), (1.5, 3.0), (1.0, 1.0)]


def _skewed_jnp(x):
    """A model that is not flip-equivariant: a ramp along both axes and a one-sided shift."""
    ramp = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] - 0.3 * jnp.arange(x.shape[2])
    return jnp.concatenate([x * ramp[None, :, :, None], jnp.roll(x, 1, axis=1) - 0.5], -1)


def _skewed_numpy(x):
    ramp = np.arange(x.shape[1], dtype=np.float64)[:, None] - 0.3 * np.arange(x.shape[2])
    return np.concatenate([x * ramp[None, :, :, None], np.roll(x, 1, axis=1) - 0.5], -1)


def _mirror_reference(fn, image, axes):
    """Mean over every subset of ``axes`` of flip -> fn -> flip back, in float64."""
    subsets = [()] + [(a,) for a in axes] + ([tuple(axes)] if len(axes) == 2 else [])
    outs = []
    for sub in subsets:
        batch_axes = tuple(a + 1 for a in sub)
        outs.append(np.flip(fn(np.flip(image, batch_axes)), batch_axes))
    return np.mean(outs, axis=0)


@pytest.mark.parametrize("axes", [(0,), (0, 1)])
def test_mirror_logits_equals_numpy_reference(axes):
    image = np.random.default_rng(0).standard_normal((3, *SHAPE, 1))
    got = np.asarray(jax.jit(lambda x: sw.mirror_logits(_skewed_jnp, x, axes))(image))
    want = _mirror_reference(_skewed_numpy, image, axes)
    # Sums of 2-4 float32 terms: tolerance from the reference's magnitude.
    atol = 8 * np.finfo(np.float32).eps * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    plain = np.asarray(sw.mirror_logits(_skewed_jnp, jnp.asarray(image, jnp.float32), ()))
    np.testing.assert_allclose(plain, _skewed_numpy(image), rtol=0, atol=atol)
    assert np.abs(got - plain).max() > 1.0  # the skewed model's prediction changes
    with pytest.raises(ValueError, match="mirror_axes"):
        sw.mirror_logits(_skewed_jnp, jnp.zeros((1, *SHAPE, 1)), (2,))


def _store(tmp_path):
    """Five real store cases (image, label, locations) of one shape; case 4 has no foreground."""
    rng = np.random.default_rng(1)
    entries = []
    for i in range(5):
        image = rng.standard_normal((*SHAPE, 1)).astype(np.float32)
        label = np.zeros(SHAPE, np.uint8)
        if i < 4:
            label[2 + i : 9 + i, 3 : 7 + i] = 1
            image[..., 0] += 2.0 * label
        folder = store.case_dir(str(tmp_path), f"c{i}")
        (tmp_path / "cases" / f"c{i}").mkdir(parents=True)
        np.save(f"{folder}/image.npy", image)
        np.save(f"{folder}/label.npy", label)
        np.savez(f"{folder}/locations.npz")
        entries.append({"id": f"c{i}", "shape": list(SHAPE), "has_label": True})
    return sources.StoreSource(str(tmp_path), entries)


def _evaluate(state, source, mirror_axes, mesh):
    loss = registry.lookup("losses", "dice_ce")
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    fn = jax.jit(step_lib.make_eval_step(loss, mirror_axes=mirror_axes))
    return seg_eval.evaluate_split(
        fn,
        state,
        source,
        batch_size=4,
        sharding=sharding,
        keep_predictions=True,
        spacings=SPACINGS,
        num_classes=1,
    )


def test_whole_image_path_applies_mirroring_and_surface_metrics(tmp_path):
    source = _store(tmp_path)
    mesh = jax.make_mesh(
        (1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1]
    )
    model = registry.lookup("models", "unet", depth=2, features=4)
    state = state_lib.create_train_state(model, optax.sgd(0.1), (1, *SHAPE, 1), jax.random.key(3))
    images = np.stack([np.asarray(source[i]["image"]) for i in range(5)])
    logits_fn = jax.jit(lambda s, x: step_lib.predict_logits(s, x, precision="float32"))
    # Centre the random UNet's head so that it predicts about half of the voxels.
    params = dict(state.params)
    median = float(np.median(np.asarray(logits_fn(state, images))))
    params["head"] = {**params["head"], "bias": params["head"]["bias"] - median}
    state = state.replace(params=params)
    plain, plain_rows, plain_pred = _evaluate(state, source, (), mesh)
    tta, tta_rows, tta_pred = _evaluate(state, source, (0, 1), mesh)

    # Reference: the un-mirrored logits of each flipped image, flipped back, averaged in float64.
    ref_logits = _mirror_reference(
        lambda x: np.asarray(logits_fn(state, x), np.float64), images, (0, 1)
    )
    ref_pred = ref_logits[..., 0] > 0
    sure = np.abs(ref_logits[..., 0]) > 1e-4 * max(np.abs(ref_logits).max(), 1.0)
    got_pred = np.stack([tta_pred[i] for i in range(5)]).astype(bool)
    np.testing.assert_array_equal(got_pred[sure], ref_pred[sure])
    # The random UNet is not flip-equivariant: mirroring changes the result.
    assert any(not np.array_equal(plain_pred[i], tta_pred[i]) for i in range(5))
    assert plain["loss"] != tta["loss"] and plain["assd_mm"] != tta["assd_mm"]

    # HD95/ASSD on the whole-image path, per case with each case's own spacing.
    labels = [np.asarray(source[i]["label"]) for i in range(5)]
    for row, i in zip(tta_rows, range(5), strict=True):
        want = surface.case_surface(tta_pred[i], labels[i], SPACINGS[i], num_classes=1)
        assert {k: row[k] for k in want} == pytest.approx(want, nan_ok=True)
    assert tta_rows[4]["surface"] in ("one_empty", "both_empty")
    ok = [r["hd95"] for r in tta_rows if r["surface"] == "ok"]
    assert ok and tta["hd95_mm"] == pytest.approx(np.mean(ok))

    # A model that predicts nothing (all-zero parameters: logits 0, sigmoid 0.5, no voxel set).
    zero = state.replace(params=jax.tree.map(jnp.zeros_like, state.params))
    nothing, rows, _ = _evaluate(zero, source, (), mesh)
    assert math.isnan(nothing["hd95_mm"]) and math.isnan(nothing["assd_mm"])
    assert nothing["hd95_empty_cases"] == 4 and nothing["hd95_both_empty_cases"] == 1
    assert all(math.isnan(r["hd95"]) for r in rows)
