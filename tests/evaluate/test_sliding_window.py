"""Tests of medjax.evaluate.sliding_window against hand-computed and numpy float64 references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from medjax import errors
from medjax.evaluate import blending
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
@pytest.mark.parametrize("blend", ["device", "host"])
def test_identity_model_reproduces_input(shape, tile, frac, blend):
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    out = sw.sliding_window_predict(
        _identity,
        image,
        tile_size=tile,
        num_classes=shape[-1],
        step_fraction=frac,
        batch_size=4,
        blend=blend,
    )
    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blend", ["device", "host"])
def test_blend_matches_numpy_reference(blend):
    """A window-dependent model: each window predicts its own mean (so overlaps disagree)."""
    image = np.random.default_rng(1).normal(size=(21, 30, 1)).astype(np.float32)
    tile = (8, 12)

    @jax.jit
    def window_mean(w):
        return jnp.broadcast_to(w.mean(axis=(1, 2), keepdims=True), w.shape[:-1] + (2,))

    out = sw.sliding_window_predict(
        window_mean,
        image,
        tile_size=tile,
        num_classes=2,
        step_fraction=0.5,
        batch_size=3,
        blend=blend,
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
@pytest.mark.parametrize("blend", ["device", "host"])
def test_accumulated_weights_positive_everywhere(shape, tile, frac, blend):
    image = np.zeros(shape, np.float32)
    _, wsum = _numpy_blend(image, tile, frac, lambda w: w)
    assert wsum.min() > 0
    ones = sw.sliding_window_predict(
        jax.jit(lambda w: jnp.ones_like(w)),
        image,
        tile_size=tile,
        num_classes=1,
        step_fraction=frac,
        blend=blend,
    )
    # Any voxel with zero total weight would come out as 0/0 = nan.
    np.testing.assert_allclose(ones, 1.0, rtol=1e-6)


@pytest.mark.parametrize("blend", ["device", "host"])
def test_mirroring_equals_no_mirroring_for_flip_equivariant_model(blend):
    @jax.jit
    def box_filter(w):  # symmetric 3x3x3 sum with zero padding commutes with every flip
        return jax.lax.reduce_window(w, 0.0, jax.lax.add, (1, 3, 3, 3, 1), (1,) * 5, "SAME")

    image = np.random.default_rng(2).normal(size=(13, 11, 18, 1)).astype(np.float32)
    kwargs = dict(tile_size=(8, 8, 8), num_classes=1, step_fraction=0.5, batch_size=4, blend=blend)
    plain = sw.sliding_window_predict(box_filter, image, **kwargs)
    mirrored = sw.sliding_window_predict(box_filter, image, mirror_axes=(0, 1, 2), **kwargs)
    np.testing.assert_allclose(mirrored, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blend", ["device", "host"])
def test_mirroring_averages_flipped_predictions(blend):
    """For a model that is not flip-equivariant, TTA is the mean over flip-conjugated models."""
    ramp = jnp.arange(8.0)[None, :, None, None]

    @jax.jit
    def skewed(w):
        return w * ramp

    @jax.jit
    def skewed_flipped(w):  # flip, predict, flip back along spatial axis 0
        return jnp.flip(skewed(jnp.flip(w, 1)), 1)

    image = np.random.default_rng(3).normal(size=(20, 13, 2)).astype(np.float32)
    kwargs = dict(tile_size=(8, 8), num_classes=2, step_fraction=0.5, batch_size=2, blend=blend)
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


@pytest.mark.parametrize("blend", ["device", "host"])
def test_sharded_over_mesh_equals_unsharded(blend):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    kernel = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3)), jnp.float32)

    @jax.jit
    def model(w):
        return jnp.tanh(w @ kernel)

    image = np.random.default_rng(5).normal(size=(30, 19, 2)).astype(np.float32)
    kwargs = dict(tile_size=(8, 8), num_classes=3, step_fraction=0.5, batch_size=8)
    sharded = sw.sliding_window_predict(model, image, mesh=mesh, blend=blend, **kwargs)
    plain = sw.sliding_window_predict(model, image, blend="host", **kwargs)
    np.testing.assert_allclose(sharded, plain, rtol=1e-6, atol=1e-6)
    with pytest.raises(errors.ConfigError):
        sw.sliding_window_predict(
            model, image, mesh=mesh, blend=blend, **{**kwargs, "batch_size": 4}
        )


@pytest.mark.parametrize("blend", ["device", "host"])
def test_bad_inputs_raise(blend):
    image = np.zeros((16, 16, 1), np.float32)
    with pytest.raises(ValueError, match="predict_fn returned"):
        sw.sliding_window_predict(_identity, image, tile_size=(8, 8), num_classes=3, blend=blend)
    with pytest.raises(ValueError, match="spatial axes"):
        sw.sliding_window_predict(_identity, image, tile_size=(8, 8, 8), num_classes=1, blend=blend)
    with pytest.raises(ValueError, match="mirror_axes"):
        sw.sliding_window_predict(
            _identity, image, tile_size=(8, 8), num_classes=1, mirror_axes=(2,), blend=blend
        )


@pytest.mark.parametrize("blend", ["device", "host"])
def test_runs_under_transfer_guard(blend):
    """The trainer's loop runs with implicit transfers disallowed; every copy here is explicit."""
    image = np.random.default_rng(6).normal(size=(12, 10, 1)).astype(np.float32)
    with jax.transfer_guard("disallow"):
        out = sw.sliding_window_predict(
            _identity, image, tile_size=(8, 8), num_classes=1, blend=blend
        )
    np.testing.assert_allclose(out, image, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blend", ["device", "host"])
def test_out_dtype(blend):
    image = np.ones((9, 9, 1), np.float32)
    out = sw.sliding_window_predict(
        _identity, image, tile_size=(8, 8), num_classes=1, out_dtype=np.float16, blend=blend
    )
    assert out.dtype == np.float16 and out.shape == (9, 9, 1)


# --- blend="device" vs "host" vs a float64 reference ---------------------------------------------

_KERNEL = np.random.default_rng(7).normal(size=(3, 2))


def _skewed_jax(w):
    """Neither flip-equivariant nor local: a ramp along tile axis 0 times the window mean."""
    c = w.shape[-1]
    ramp = jnp.arange(w.shape[1], dtype=jnp.float32).reshape((1, -1) + (1,) * (w.ndim - 2))
    mean = w.mean(axis=tuple(range(1, w.ndim)), keepdims=True)
    return jnp.tanh(w @ jnp.asarray(_KERNEL[:c], jnp.float32)) + ramp * mean


def _skewed_numpy(w):
    """``_skewed_jax`` for one float64 window ``[*tile, C]``."""
    ramp = np.arange(w.shape[0], dtype=np.float64).reshape((-1,) + (1,) * (w.ndim - 1))
    return np.tanh(w @ _KERNEL[: w.shape[-1]]) + ramp * w.mean()


def _reference_predict(image, tile, frac, mirror_axes, gaussian):
    """Independent float64 sliding window: centred padding, mirroring, blend, crop."""
    nd = len(tile)
    spatial = image.shape[:nd]
    pads = [
        ((t - n) // 2, (t - n) - (t - n) // 2) if n < t else (0, 0)
        for n, t in zip(spatial, tile, strict=True)
    ]
    padded = np.pad(image.astype(np.float64), [*pads, (0, 0)])
    g = np.asarray(sw.gaussian_importance_map(tile), np.float64) if gaussian else np.ones(tile)
    acc = np.zeros(padded.shape[:nd] + (2,))
    wsum = np.zeros(padded.shape[:nd])
    subsets = [
        c for r in range(len(mirror_axes) + 1) for c in itertools.combinations(mirror_axes, r)
    ]
    for corner in itertools.product(*sw.window_starts(padded.shape[:nd], tile, frac)):
        region = tuple(slice(s, s + t) for s, t in zip(corner, tile, strict=True))
        w = padded[region]
        pred = np.mean([np.flip(_skewed_numpy(np.flip(w, axes)), axes) for axes in subsets], axis=0)
        acc[region] += g[..., None] * pred
        wsum[region] += g
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, spatial, strict=True))
    return acc[crop] / wsum[crop][..., None]


@pytest.mark.parametrize(
    "shape, tile, frac, batch, mirror, gaussian",
    # Window counts not a multiple of the batch leave a padded last batch (all but the first).
    [
        ((37, 29, 2), (16, 16), 0.5, 3, (), True),  # 2D, 12 windows in 4 full batches
        ((37, 29, 2), (16, 16), 0.25, 8, (0, 1), True),  # 2D, 35 windows, 4 flips
        ((10, 23, 3), (16, 8), 0.5, 4, (1,), False),  # 2D, one axis smaller than the tile
        ((19, 9, 17, 1), (8, 8, 8), 0.5, 5, (0, 2), True),  # 3D, 32 windows
        ((21, 12, 10, 1), (8, 8, 8), 1.0, 5, (), False),  # 3D, no overlap, 12 windows
        ((5, 6, 7, 2), (8, 8, 8), 0.5, 2, (2,), True),  # 3D, smaller than the tile everywhere
    ],
)
def test_device_equals_host_equals_float64_reference(shape, tile, frac, batch, mirror, gaussian):
    image = np.random.default_rng(8).normal(size=shape).astype(np.float32)
    kwargs = dict(
        tile_size=tile,
        num_classes=2,
        step_fraction=frac,
        batch_size=batch,
        mirror_axes=mirror,
        gaussian=gaussian,
    )
    model = jax.jit(_skewed_jax)
    device = sw.sliding_window_predict(model, image, blend="device", **kwargs)
    host = sw.sliding_window_predict(model, image, blend="host", **kwargs)
    ref = _reference_predict(image, tile, frac, mirror, gaussian)
    assert device.shape == host.shape == shape[:-1] + (2,)
    np.testing.assert_allclose(device, host, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(device, ref, rtol=1e-4, atol=1e-4)


def test_device_blend_over_mesh_with_mirroring_equals_host():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    image = np.random.default_rng(9).normal(size=(13, 20, 11, 3)).astype(np.float32)
    kwargs = dict(tile_size=(8, 8, 8), num_classes=2, batch_size=8, mirror_axes=(0, 2))
    model = jax.jit(_skewed_jax)
    sharded = sw.sliding_window_predict(model, image, mesh=mesh, blend="device", **kwargs)
    host = sw.sliding_window_predict(model, image, blend="host", **kwargs)
    np.testing.assert_allclose(sharded, host, rtol=1e-5, atol=1e-5)


def test_device_blend_compiles_once_per_padded_shape():
    traces = []

    @jax.jit
    def model(w):
        traces.append(w.shape)  # runs only while tracing
        return 2.0 * w

    kwargs = dict(tile_size=(16, 8, 8), num_classes=1, batch_size=3, mirror_axes=(1,))
    # (10, ...) pads to (16, ...): the same padded shape as (16, ...), so the same blend program.
    shapes = [(16, 20, 12, 1), (10, 20, 12, 1), (16, 20, 12, 1), (13, 20, 12, 1)]
    cut_before, acc_before = blending._cut_windows._cache_size(), blending._accumulate._cache_size()
    for seed, shape in enumerate(shapes):
        image = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
        out = sw.sliding_window_predict(model, image, blend="device", **kwargs)
        np.testing.assert_allclose(out, 2.0 * image, rtol=1e-5, atol=1e-5)
    assert blending._cut_windows._cache_size() - cut_before <= 1
    assert blending._accumulate._cache_size() - acc_before <= 1
    # The model itself compiles once for every volume size, as on the host path.
    image = np.ones((40, 9, 30, 1), np.float32)
    sw.sliding_window_predict(model, image, blend="device", **kwargs)
    assert traces == [(3, 16, 8, 8, 1)]


def test_auto_picks_device_when_small_and_host_when_too_large(monkeypatch):
    chosen = []
    for name in ("predict_device", "predict_host"):
        real = getattr(blending, name)
        monkeypatch.setattr(
            blending,
            name,
            lambda *a, _real=real, _name=name, **k: chosen.append(_name) or _real(*a, **k),
        )
    image = np.random.default_rng(10).normal(size=(12, 10, 1)).astype(np.float32)
    kwargs = dict(tile_size=(8, 8), num_classes=1)
    out = sw.sliding_window_predict(_identity, image, **kwargs)
    assert chosen == ["predict_device"]
    # 12 * 10 voxels * (1 + 1 + 1) channels * 4 bytes = 1440 bytes: over a 1000-byte budget
    # (the tests run on the CPU backend).
    monkeypatch.setattr(sw, "_CPU_BUDGET_BYTES", 1000)
    out_host = sw.sliding_window_predict(_identity, image, **kwargs)
    assert chosen == ["predict_device", "predict_host"]
    np.testing.assert_allclose(out, out_host, rtol=1e-6)


def test_auto_uses_a_quarter_of_the_reported_device_memory():
    class FakeGpu:
        def memory_stats(self):
            return {"bytes_limit": 4000}

    assert sw._resolve_blend("auto", 1000, FakeGpu()) == "device"
    assert sw._resolve_blend("auto", 1001, FakeGpu()) == "host"
    assert sw._resolve_blend("host", 1, FakeGpu()) == "host"
    assert sw._resolve_blend("device", 10**15, FakeGpu()) == "device"
    assert sw._device_path_bytes((10, 20, 30), 1, 3) == 6000 * 5 * 4
    with pytest.raises(ValueError, match="blend"):
        sw._resolve_blend("gpu", 1, FakeGpu())


def test_auto_on_a_cpu_backend_blends_large_volumes_on_the_host():
    """On CPU the device's memory is the host's: above 256 MiB (a 64 MiB one-channel volume with
    two classes) device blending would hold a second copy, so ``auto`` blends on the host, for
    evaluation and prediction alike."""

    class FakeCpu:
        platform = "cpu"

        def memory_stats(self):
            return None

    class FakeGpuWithoutLimit:
        platform = "gpu"

        def memory_stats(self):
            return None

    volume = (256, 256, 256)  # 64 MiB as float32
    assert sw._device_path_bytes(volume, 1, 2) == 256 * 1024**2
    assert sw._resolve_blend("auto", sw._device_path_bytes(volume, 1, 2), FakeCpu()) == "device"
    assert sw._resolve_blend("auto", sw._device_path_bytes(volume, 1, 3), FakeCpu()) == "host"
    assert sw._resolve_blend("device", 10**12, FakeCpu()) == "device"  # asked for explicitly
    assert sw._resolve_blend("auto", 2 * 1024**3, FakeGpuWithoutLimit()) == "device"
    assert sw._resolve_blend("auto", 2 * 1024**3 + 1, FakeGpuWithoutLimit()) == "host"
    assert jax.devices()[0].platform == "cpu"
    assert sw._resolve_blend("auto", 256 * 1024**2 + 1, jax.devices()[0]) == "host"


def test_device_blend_as_segmentation_eval_calls_it():
    """A plain lambda over a jitted ``logits_fn(state, windows)``, under the loop's mesh context
    and transfer guard, as ``medjax/evaluate/segmentation.py`` calls it with ``blend="auto"``."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = jax.device_put({"kernel": np.asarray(_KERNEL[:1], np.float32)}, replicated)
    logits_fn = jax.jit(lambda s, w: jnp.tanh(w @ s["kernel"]))
    image = np.random.default_rng(11).normal(size=(9, 21, 14, 1)).astype(np.float32)
    kwargs = dict(tile_size=(8, 8, 8), num_classes=2, batch_size=8, mirror_axes=(1,), mesh=mesh)
    with jax.set_mesh(mesh), jax.transfer_guard("disallow"):
        device = sw.sliding_window_predict(lambda w: logits_fn(state, w), image, **kwargs)
        host = sw.sliding_window_predict(
            lambda w: logits_fn(state, w), image, blend="host", **kwargs
        )
    np.testing.assert_allclose(device, host, rtol=1e-5, atol=1e-5)
