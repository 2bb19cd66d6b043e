"""Tests of medjax.evaluate.sliding_window against hand-computed and numpy float64 references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from medjax import errors
from medjax.evaluate import sliding_window as sw


@jax.jit
def _identity(w):
    return w


def _numpy_blend(image, tile, step_fraction, window_fn, gaussian=True):
    """Independent float64 re-implementation of the blend (no padding: image >= tile)."""
    nd = len(tile)
    starts = sw.window_starts(image.shape[:nd], tile, step_fraction)
    g = np.asarray(sw.gaussian_importance_map(tile), np.float64) if gaussian else np.ones(tile)
    acc = np.zeros(
        image.shape[:nd] + (window_fn(image[tuple(slice(0, t) for t in tile)]).shape[-1],)
    )
    wsum = np.zeros(image.shape[:nd])
    for corner in itertools.product(*starts):
        region = tuple(slice(s, s + t) for s, t in zip(corner, tile, strict=True))
        acc[region] += g[..., None] * window_fn(image[region].astype(np.float64))
        wsum[region] += g
    return acc / wsum[..., None], wsum


# --- window_starts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, tile, frac, expected",
    [
        (110, 64, 0.5, [0, 23, 46]),  # the example in nnU-Net's own comment
        (64, 64, 0.5, [0]),
        (40, 16, 1.0, [0, 12, 24]),  # no overlap still needs ceil(24/16)+1 = 3 windows
        (37, 16, 0.5, [0, 7, 14, 21]),
        (21, 8, 0.5, [0, 3, 6, 10, 13]),  # steps 3.25: 6.5 rounds half-to-even to 6
        (10, 16, 0.5, [0]),  # smaller than the tile: padded to the tile first
        (17, 16, 0.25, [0, 1]),
    ],
)
def test_window_starts_hand_computed(size, tile, frac, expected):
    assert sw.window_starts([size], [tile], frac) == [expected]


def test_window_starts_per_axis_and_cover():
    starts = sw.window_starts((110, 10, 40), (64, 16, 16), 0.5)
    assert starts == [[0, 23, 46], [0], [0, 8, 16, 24]]
    for n, t, s in zip((110, 16, 40), (64, 16, 16), starts, strict=True):
        covered = np.zeros(n, bool)
        for a in s:
            covered[a : a + t] = True
        assert covered.all() and s[-1] + t == n


def test_window_starts_rejects_bad_fraction():
    with pytest.raises(ValueError):
        sw.window_starts((32,), (16,), 0.0)
    with pytest.raises(ValueError):
        sw.window_starts((32, 32), (16,), 0.5)


# --- gaussian_importance_map -------------------------------------------------------------------


@pytest.mark.parametrize("tile", [(16, 16), (15, 8, 12)])
def test_gaussian_matches_closed_form(tile):
    g = sw.gaussian_importance_map(tile)
    # scipy truncates at 4 sigma = tile/2, which the centred tile never exceeds, so the map is the
    # untruncated Gaussian exp(-d^2 / 2 sigma^2) scaled to 10 at the centre.
    grids = np.meshgrid(*[np.arange(t) - t // 2 for t in tile], indexing="ij")
    expo = sum(
        d.astype(np.float64) ** 2 / (2 * (t / 8) ** 2) for d, t in zip(grids, tile, strict=True)
    )
    np.testing.assert_allclose(g, 10.0 * np.exp(-expo), rtol=1e-5)
    assert g.dtype == np.float32 and g.min() > 0
    assert g[tuple(t // 2 for t in tile)] == pytest.approx(10.0)


def test_gaussian_clamps_zeros_and_is_cached_read_only():
    # sigma 1/64 of 64 is 1: the truncation radius (4) leaves exact zeros far from the centre.
    g = sw.gaussian_importance_map((64,), sigma_scale=1 / 64)
    nonzero_min = 10.0 * np.exp(-(4**2) / 2)
    assert g.min() == pytest.approx(nonzero_min, rel=1e-4)
    assert g[0] == g.min()
    assert sw.gaussian_importance_map((64,), sigma_scale=1 / 64) is g
    with pytest.raises(ValueError):
        g[0] = 1.0


# --- sliding_window_predict -------------------------------------------------------------------


@pytest.mark.parametrize("frac", [1.0, 0.5, 0.25])
@pytest.mark.parametrize(
    "shape, tile",
    [
        ((37, 29, 2), (16, 16)),  # 2D, not multiples of the tile
        ((10, 23, 3), (16, 8)),  # 2D, first axis smaller than the tile
        ((19, 9, 17, 1), (8, 8, 8)),  # 3D
        ((5, 6, 7, 2), (8, 8, 8)),  # 3D, smaller than the tile on every axis
    ],
)
def test_identity_model_reproduces_input(shape, tile, frac):
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = sw.sliding_window_predict(
        _identity, image, tile_size=tile, num_classes=shape[-1], step_fraction=frac, batch_size=4
    )
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-5)


def test_blend_matches_numpy_reference():
    """A window-dependent model: each window predicts its own mean (so overlaps disagree)."""
    image = np.random.default_rng(1).normal(size=(21, 30, 1)).astype(np.float32)
    tile = (8, 12)

    @jax.jit
    def window_mean(w):
        return jnp.broadcast_to(w.mean(axis=(1, 2), keepdims=True), w.shape[:-1] + (2,))

    out = sw.sliding_window_predict(
        window_mean, image, tile_size=tile, num_classes=2, step_fraction=0.5, batch_size=3
    )
    ref, wsum = _numpy_blend(
        image, tile, 0.5, lambda w: np.broadcast_to(w.mean(keepdims=True), w.shape[:-1] + (2,))
    )
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    # Windows overlap, so the blended output is not piecewise constant per window.
    assert len(np.unique(np.round(out[..., 0], 5))) > 20
    # Accumulated Gaussian weights are positive everywhere, the volume corners included.
    assert wsum.min() > 0 and wsum[0, 0] > 0 and wsum[-1, -1] > 0


@pytest.mark.parametrize(
    "shape, tile, frac", [((33, 17, 1), (16, 16), 0.5), ((9, 20, 11, 1), (8, 8, 8), 1.0)]
)
def test_accumulated_weights_positive_everywhere(shape, tile, frac):
    image = np.zeros(shape, np.float32)
    _, wsum = _numpy_blend(image, tile, frac, lambda w: w)
    assert wsum.min() > 0
    ones = sw.sliding_window_predict(
        jax.jit(lambda w: jnp.ones_like(w)),
        image,
        tile_size=tile,
        num_classes=1,
        step_fraction=frac,
    )
    # Any voxel with zero total weight would come out as 0/0 = nan.
    np.testing.assert_allclose(ones, 1.0, rtol=1e-6)


def test_mirroring_equals_no_mirroring_for_flip_equivariant_model():
    @jax.jit
    def box_filter(w):  # symmetric 3x3x3 sum with zero padding commutes with every flip
        return jax.lax.reduce_window(w, 0.0, jax.lax.add, (1, 3, 3, 3, 1), (1,) * 5, "SAME")

    image = np.random.default_rng(2).normal(size=(13, 11, 18, 1)).astype(np.float32)
    kwargs = dict(tile_size=(8, 8, 8), num_classes=1, step_fraction=0.5, batch_size=4)
    plain = sw.sliding_window_predict(box_filter, image, **kwargs)
    mirrored = sw.sliding_window_predict(box_filter, image, mirror_axes=(0, 1, 2), **kwargs)
    np.testing.assert_allclose(mirrored, plain, rtol=1e-5, atol=1e-5)


def test_mirroring_averages_flipped_predictions():
    """For a model that is not flip-equivariant, TTA is the mean over flip-conjugated models."""
    ramp = jnp.arange(8.0)[None, :, None, None]

    @jax.jit
    def skewed(w):
        return w * ramp

    @jax.jit
    def skewed_flipped(w):  # flip, predict, flip back along spatial axis 0
        return jnp.flip(skewed(jnp.flip(w, 1)), 1)

    image = np.random.default_rng(3).normal(size=(20, 13, 2)).astype(np.float32)
    kwargs = dict(tile_size=(8, 8), num_classes=2, step_fraction=0.5, batch_size=2)
    tta = sw.sliding_window_predict(skewed, image, mirror_axes=(0,), **kwargs)
    a = sw.sliding_window_predict(skewed, image, **kwargs)
    b = sw.sliding_window_predict(skewed_flipped, image, **kwargs)
    np.testing.assert_allclose(tta, (a + b) / 2, rtol=1e-5, atol=1e-5)
    assert not np.allclose(a, b)


def test_single_compile_for_many_volume_sizes():
    traces = []

    @jax.jit
    def model(w):
        traces.append(w.shape)  # runs only while tracing
        return 2.0 * w

    for shape in [(16, 16, 16, 1), (20, 9, 31, 1), (5, 5, 5, 1), (40, 17, 16, 1)]:
        image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        out = sw.sliding_window_predict(
            model, image, tile_size=(8, 8, 8), num_classes=1, batch_size=3, mirror_axes=(1,)
        )
        np.testing.assert_allclose(out, 2.0 * image, rtol=1e-5, atol=1e-5)
    assert traces == [(3, 8, 8, 8, 1)]


def test_sharded_over_mesh_equals_unsharded():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    kernel = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3)), jnp.float32)

    @jax.jit
    def model(w):
        return jnp.tanh(w @ kernel)

    image = np.random.default_rng(5).normal(size=(30, 19, 2)).astype(np.float32)
    kwargs = dict(tile_size=(8, 8), num_classes=3, step_fraction=0.5, batch_size=8)
    sharded = sw.sliding_window_predict(model, image, mesh=mesh, **kwargs)
    plain = sw.sliding_window_predict(model, image, **kwargs)
    np.testing.assert_allclose(sharded, plain, rtol=1e-6, atol=1e-6)
    with pytest.raises(errors.ConfigError):
        sw.sliding_window_predict(model, image, mesh=mesh, **{**kwargs, "batch_size": 4})


def test_bad_inputs_raise():
    image = np.zeros((16, 16, 1), np.float32)
    with pytest.raises(ValueError, match="predict_fn returned"):
        sw.sliding_window_predict(_identity, image, tile_size=(8, 8), num_classes=3)
    with pytest.raises(ValueError, match="spatial axes"):
        sw.sliding_window_predict(_identity, image, tile_size=(8, 8, 8), num_classes=1)
    with pytest.raises(ValueError, match="mirror_axes"):
        sw.sliding_window_predict(
            _identity, image, tile_size=(8, 8), num_classes=1, mirror_axes=(2,)
        )


def test_runs_under_transfer_guard():
    """The trainer's loop runs with implicit transfers disallowed; every copy here is explicit."""
    image = np.random.default_rng(6).normal(size=(12, 10, 1)).astype(np.float32)
    with jax.transfer_guard("disallow"):
        out = sw.sliding_window_predict(_identity, image, tile_size=(8, 8), num_classes=1)
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-5)


def test_out_dtype():
    image = np.ones((9, 9, 1), np.float32)
    out = sw.sliding_window_predict(
        _identity, image, tile_size=(8, 8), num_classes=1, out_dtype=np.float16
    )
    assert out.dtype == np.float16 and out.shape == (9, 9, 1)
