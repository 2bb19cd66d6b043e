"""Tests of medjax.augment.spatial: exactness, image/label alignment, scipy references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from medjax import errors
from medjax.augment import compose, spatial, warp

KEY = jax.random.key(0)
LABEL_VALUES = {0, 2, 5}

# Ops that always change a generic input when applied (p=1).
OPS = {
    "flip": lambda: spatial.get_flip(p=1.0),
    "rot90": lambda: spatial.get_rot90(p=1.0),
    "affine": lambda: spatial.get_affine(
        p=1.0, rotation=20, scale=(0.8, 1.2), per_axis_scale=True, translation=0.1
    ),
    "elastic": lambda: spatial.get_elastic(p=1.0, alpha=(1.0, 2.0), sigma=(2.0, 3.0)),
    "spatial": lambda: spatial.get_spatial(
        p=1.0, p_rotation=1.0, p_scale=1.0, elastic_alpha=1.5, elastic_sigma=2.0, p_elastic=1.0
    ),
}


@functools.cache
def _jitted(name):
    # One jitted function per op, shared by the tests below, which use the same shapes
    # (2D (12, 12) and 3D (12, 12, 12), two channels), so each op compiles twice at most.
    return jax.jit(OPS[name]())


def _random_sample(spatial_shape, seed=0, channels=2):
    rng = np.random.default_rng(seed)
    return {
        "image": jnp.asarray(rng.normal(size=(*spatial_shape, channels)), jnp.float32),
        "label": jnp.asarray(rng.choice(sorted(LABEL_VALUES), spatial_shape), jnp.int32),
        "case_id": jnp.int32(3),
    }


def _cube_sample(spatial_shape):
    """A bright cube off the centre, its label 2, and a second channel of noise."""
    label = np.zeros(spatial_shape, np.int32)
    label[tuple(slice(s // 4, s // 4 + 4) for s in spatial_shape)] = 2
    noise = np.random.default_rng(1).normal(size=spatial_shape) * 0.01
    image = np.stack([(label > 0).astype(np.float32), noise], axis=-1)
    return {
        "image": jnp.asarray(image, jnp.float32),
        "label": jnp.asarray(label),
        "case_id": jnp.int32(3),
    }


def _centroid(weights):
    weights = np.asarray(weights, np.float64)
    grids = np.meshgrid(*[np.arange(s) for s in weights.shape], indexing="ij")
    return np.array([(g * weights).sum() / weights.sum() for g in grids])


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("spatial_shape", [(12, 12), (12, 12, 12)])
def test_op_properties(name, spatial_shape):
    fn = _jitted(name)
    sample = _random_sample(spatial_shape)
    out = fn(KEY, sample)
    # Same key -> same output; another key -> another output; p=1 changes the image.
    np.testing.assert_array_equal(out["image"], fn(KEY, sample)["image"])
    assert not np.array_equal(out["image"], sample["image"])
    if name != "flip":  # flip(p=1) mirrors every axis: nothing random is left.
        others = [fn(jax.random.key(s), sample)["image"] for s in (1, 2)]
        assert any(not np.array_equal(out["image"], o) for o in others)
    # Labels only ever take values the input had; other keys pass through.
    assert set(np.unique(out["label"]).tolist()) <= LABEL_VALUES
    assert out["label"].dtype == jnp.int32 and out["label"].shape == spatial_shape
    assert out["case_id"] == 3


@pytest.mark.parametrize("name", sorted(OPS))
def test_image_and_label_stay_aligned(name):
    sample = _cube_sample((12, 12, 12))
    for seed in range(2):
        out = _jitted(name)(jax.random.key(seed), sample)
        label = np.asarray(out["label"])
        assert label.sum() > 0  # The cube stayed in the field of view.
        moved = _centroid(label == 2)
        np.testing.assert_allclose(_centroid(out["image"][..., 0]), moved, atol=0.5)
        if name in ("flip", "rot90"):  # Exact permutations: the cube moves voxel for voxel.
            np.testing.assert_array_equal(np.asarray(out["image"][..., 0]) * 2, label)


def test_p_zero_is_identity():
    sample = _random_sample((6, 7, 8))
    for fn in [
        spatial.get_flip(p=0.0),
        spatial.get_rot90(p=0.0),
        spatial.get_affine(p=0.0, rotation=30),
        spatial.get_elastic(p=0.0),
        spatial.get_spatial(p=0.0),
    ]:
        out = fn(KEY, sample)
        np.testing.assert_array_equal(out["image"], sample["image"])
        np.testing.assert_array_equal(out["label"], sample["label"])


@pytest.mark.parametrize("spatial_shape", [(7, 6), (5, 6, 4)])
def test_flip_twice_is_identity_and_matches_numpy(spatial_shape):
    sample = _random_sample(spatial_shape)
    fn = spatial.get_flip(p=0.5)
    for seed in range(3):
        key = jax.random.key(seed)
        twice = fn(key, fn(key, sample))
        np.testing.assert_array_equal(twice["image"], sample["image"])
        np.testing.assert_array_equal(twice["label"], sample["label"])
    out = spatial.get_flip(p=1.0, axes=(-1,))(KEY, sample)
    axis = len(spatial_shape) - 1
    np.testing.assert_array_equal(out["image"], np.flip(sample["image"], axis))
    np.testing.assert_array_equal(out["label"], np.flip(sample["label"], axis))


def test_flip_probability_is_per_axis():
    fn = jax.jit(jax.vmap(spatial.get_flip(p=0.5, axes=(0, 1))))
    n = 200
    ramp = jnp.broadcast_to(jnp.arange(2.0)[:, None] * 2 + jnp.arange(2.0)[None, :], (n, 2, 2))
    out = np.asarray(fn(jax.random.split(KEY, n), {"image": ramp[..., None]})["image"][..., 0])
    flipped0 = out[:, 0, 0] >= 2
    flipped1 = out[:, 0, 0] % 2 == 1
    assert 0.35 < flipped0.mean() < 0.65 and 0.35 < flipped1.mean() < 0.65
    assert 0.15 < (flipped0 & flipped1).mean() < 0.35  # Independent: about 0.25.


def test_rot90_matches_numpy_and_rejects_non_square():
    sample = _random_sample((3, 6, 6))
    out = spatial.get_rot90(p=1.0)(KEY, sample)
    matches = [
        k
        for k in (1, 2, 3)
        if np.array_equal(out["image"], np.rot90(sample["image"], k, axes=(1, 2)))
        and np.array_equal(out["label"], np.rot90(sample["label"], k, axes=(1, 2)))
    ]
    assert len(matches) == 1
    with pytest.raises(errors.ConfigError, match="square"):
        spatial.get_rot90(p=1.0)(KEY, _random_sample((6, 5)))


@pytest.mark.parametrize("spatial_shape", [(9, 8), (6, 7, 5)])
def test_affine_identity_reproduces_input_exactly(spatial_shape):
    sample = _random_sample(spatial_shape)
    out = jax.jit(spatial.get_affine(p=1.0))(KEY, sample)
    np.testing.assert_array_equal(out["image"], sample["image"])
    np.testing.assert_array_equal(out["label"], sample["label"])


def _rotation_reference(angle_deg, ndim, in_plane=False):
    """R = R_(H,W)(a) [R_(D,W)(a) R_(D,H)(a)] in array axis order, float64."""
    a = np.deg2rad(angle_deg)
    planes = [(ndim - 2, ndim - 1)] if ndim == 2 or in_plane else [(1, 2), (0, 2), (0, 1)]
    rot = np.eye(ndim)
    for i, j in planes:
        r = np.eye(ndim)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        rot = rot @ r
    return rot


def _fixed_affine(angle_deg, scale, shift_frac, in_plane):
    """Anisotropic fixed parameters (no config range yields them): built from public pieces."""
    ndim = len(scale)

    def fn(key, sample):
        del key
        n_angles = 1 if (ndim == 2 or in_plane) else 3
        angles = jnp.full((n_angles,), np.deg2rad(angle_deg), jnp.float32)
        inverse_linear = warp.rotation_matrix(angles, ndim).T / jnp.asarray(scale)[:, None]
        shape = sample["image"].shape[:-1]
        shift = shift_frac * jnp.asarray(shape, jnp.float32)
        coords = warp.coordinate_map(shape, inverse_linear.astype(jnp.float32), shift)
        return warp.resample(sample, coords)

    return fn


@pytest.mark.parametrize(
    ("spatial_shape", "in_plane", "anisotropic"),
    [
        ((13, 11), False, False),
        ((9, 10, 11), False, False),
        ((9, 10, 11), True, False),
        ((13, 11), False, True),
        ((9, 10, 11), False, True),
    ],
)
def test_affine_matches_scipy(spatial_shape, in_plane, anisotropic):
    ndim = len(spatial_shape)
    x = np.random.default_rng(2).normal(size=spatial_shape)
    scale = np.array([1.25, 0.8, 1.1][:ndim]) if anisotropic else np.full(ndim, 1.25)
    angle, shift_frac = 25.0, 0.1
    rot = _rotation_reference(angle, ndim, in_plane)
    # Output o reads input M o + offset, M = S^-1 R^T, offset = c - M (c + t).
    matrix = np.diag(1 / scale) @ rot.T
    centre = (np.array(spatial_shape) - 1) / 2
    offset = centre - matrix @ (centre + shift_frac * np.array(spatial_shape))
    # JAX's map_coordinates "constant" treats each tap on its own, like scipy's "grid-constant".
    ref = scipy.ndimage.affine_transform(x, matrix, offset, order=1, mode="grid-constant")
    label = (x > 0.5).astype(np.int32) * 5
    ref_label = scipy.ndimage.affine_transform(label, matrix, offset, order=0, mode="grid-constant")
    if anisotropic:
        fn = _fixed_affine(angle, scale, shift_frac, in_plane)
    else:  # The registered op, with degenerate ranges.
        fn = jax.jit(
            spatial.get_affine(
                p=1.0,
                rotation=(angle, angle),
                in_plane=in_plane,
                scale=1.25,
                translation=(shift_frac, shift_frac),
            )
        )
    out = fn(KEY, {"image": jnp.asarray(x[..., None], jnp.float32), "label": jnp.asarray(label)})
    np.testing.assert_allclose(out["image"][..., 0], ref, atol=2e-5)
    # Nearest neighbour may differ only where a coordinate is within rounding of a .5 tie.
    assert np.mean(np.asarray(out["label"]) != ref_label) < 0.01


def _ramp_image(shape):
    """``[*shape, n]``: channel i holds coordinate i, so a resampled ramp shows where it read."""
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    return np.stack(grid, axis=-1)


def test_affine_ranges_respected():
    # On a ramp, out(o) = (o - c - t) / s + c per axis (no rotation): the slope along axis i is
    # 1 / s_i, and at the centre voxel c, out(c) - c = -t / s.
    shape = (21, 11)
    op = spatial.get_affine(
        p=1.0, scale=(0.8, 1.2), per_axis_scale=True, translation=0.1, border_mode="nearest"
    )
    n = 32
    images = jnp.broadcast_to(jnp.asarray(_ramp_image(shape)), (n, *shape, 2))
    out = np.asarray(jax.jit(jax.vmap(op))(jax.random.split(KEY, n), {"image": images})["image"])
    centre = np.array([10, 5])
    slopes = np.stack([out[:, 11, 5, 0] - out[:, 10, 5, 0], out[:, 10, 6, 1] - out[:, 10, 5, 1]])
    scales = 1.0 / slopes.T  # [n, 2]
    shifts = -(out[:, 10, 5] - centre) * scales
    assert np.all((scales > 0.8 - 1e-4) & (scales < 1.2 + 1e-4))
    assert np.all(np.abs(scales[:, 0] - scales[:, 1]) > 0)  # One factor per axis.
    assert np.all(np.abs(shifts) <= 0.1 * np.array(shape) + 1e-3)
    assert np.all(np.abs(shifts).max(axis=0) > 0.05 * np.array(shape))  # Spreads over the range.


def test_spatial_part_probabilities():
    # Rotation drawn with probability 0.5 and nothing else: on a ramp an example is either
    # reproduced exactly (not drawn) or rotated.
    shape = (9, 9)
    op = spatial.get_spatial(p=1.0, rotation=(30, 30), p_rotation=0.5, p_scale=0.0)
    n = 64
    ramp = jnp.asarray(_ramp_image(shape))
    images = jnp.broadcast_to(ramp, (n, *shape, 2))
    out = np.asarray(jax.jit(jax.vmap(op))(jax.random.split(KEY, n), {"image": images})["image"])
    unchanged = np.all(out == np.asarray(ramp), axis=(1, 2, 3))
    assert 0.3 < unchanged.mean() < 0.7
    # A rotated example reads voxel (5, 4) = c + (1, 0) from c + R^T (1, 0) = c + (cos, -sin).
    a = np.deg2rad(30)
    expected = np.array([4.0 + np.cos(a), 4.0 - np.sin(a)])
    np.testing.assert_allclose(
        out[~unchanged][:, 5, 4], expected[None].repeat((~unchanged).sum(), 0), atol=1e-5
    )


def test_elastic_displacement_bounded_by_alpha():
    image = jnp.asarray(_ramp_image((24, 24)))
    op = spatial.get_elastic(p=1.0, alpha=2.0, sigma=3.0, border_mode="nearest")
    out = np.asarray(jax.jit(op)(KEY, {"image": image})["image"])
    displacement = np.linalg.norm(out - np.asarray(image), axis=-1)
    assert displacement.max() <= 2.0 * np.sqrt(2) + 1e-4
    assert np.abs(out - np.asarray(image)).max() > 1.0  # The largest component reaches alpha.
    # Smooth: neighbouring displacements differ far less than alpha (away from the border,
    # where "nearest" clamps the ramp).
    inner = (out - np.asarray(image))[4:-4, 4:-4]
    assert np.abs(np.diff(inner, axis=0)).max() < 1.0
    # alpha = 0 is the identity.
    still = spatial.get_elastic(p=1.0, alpha=0.0)(KEY, {"image": image})["image"]
    np.testing.assert_array_equal(still, image)


# Two of the four (ndim, dtype) pairs keep compiles down; test_op_properties runs every op in 2D
# and 3D float32 already, and the intensity sweep covers all four pairs.
@pytest.mark.parametrize(
    ("spatial_shape", "dtype"), [((8, 8), jnp.bfloat16), ((6, 8, 8), jnp.float32)]
)
def test_batch_shape_dtype_sweep(spatial_shape, dtype):
    fn = compose.compose(
        [
            "flip(p=0.5)",
            "rot90(p=0.5)",
            "affine(p=0.5, rotation=15, scale=(0.9, 1.1), translation=0.1)",
            "elastic(p=0.5, alpha=1.0, sigma=2.0)",
            {"name": "gaussian_noise", "p": 0.5, "sigma": 0.1},
        ]
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(4, *spatial_shape, 1)), dtype),
        "label": jnp.asarray(rng.choice([0, 2, 5], (4, *spatial_shape)), jnp.int32),
        "valid": jnp.ones((4,), bool),
    }
    out = jax.jit(lambda k, b: compose.apply_batch(fn, k, b))(KEY, batch)
    for k in batch:
        assert out[k].shape == batch[k].shape and out[k].dtype == batch[k].dtype
    assert np.isfinite(np.asarray(out["image"], np.float32)).all()
    assert set(np.unique(out["label"]).tolist()) <= LABEL_VALUES


def test_luna_cutout_specs():
    # Issue 5: random flip per axis, offset +-0.1 of the size, per-axis scale +-0.2, in-plane
    # rotation, noise sigma 25 HU; classification labels are one class per cutout.
    fn = compose.compose(
        [
            "flip(p=0.5)",
            "affine(p=1.0, rotation=180, in_plane=True, scale=(0.8, 1.2), per_axis_scale=True,"
            " translation=0.1)",
            "gaussian_noise(p=1.0, sigma=25)",
        ]
    )
    batch = {
        "image": jnp.full((2, 8, 12, 12, 1), -1000.0, jnp.float32),
        "label": jnp.array([0, 1], jnp.int32),
    }
    out = jax.jit(lambda k, b: compose.apply_batch(fn, k, b))(KEY, batch)
    assert out["image"].shape == batch["image"].shape
    np.testing.assert_array_equal(out["label"], [0, 1])


def test_bad_config_raises():
    with pytest.raises(errors.ConfigError, match="border_mode"):
        spatial.get_affine(border_mode="bogus")
    with pytest.raises(errors.ConfigError, match="axes"):
        spatial.get_flip(axes=(0, 3))(KEY, _random_sample((4, 4)))
