"""--mode=explain end to end (tiny 2D segmentation run) and the explainer on a small classifier."""

import glob
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from medjax.explain import maps
from medjax.testing import configs
from medjax.train import loop


def test_explain_mode_writes_overlays_and_tensorboard_images(tmp_path):
    workdir = str(tmp_path)
    config = configs.tiny_unet(train__epochs=1, log__num_images=0)
    loop.train_and_evaluate(config, workdir)
    config.explain.ig_steps = 4
    config.explain.cases = ("val_0001",)
    out = maps.explain(config, workdir)
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "*.png")))
    assert files == ["val_0001_gradient.png", "val_0001_integrated_gradients.png"]
    png = np.asarray(Image.open(os.path.join(out, files[0])))
    assert png.shape == (*config.data.patch_size, 3) and png.dtype == np.uint8
    tags = set()
    for f in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        acc = event_accumulator.EventAccumulator(f, size_guidance={"images": 0})
        acc.Reload()
        tags |= set(acc.Tags()["images"])
    assert {"explain/val_0001/gradient", "explain/val_0001/integrated_gradients"} <= tags
    config.explain.cases = ("no_such_case",)
    with pytest.raises(Exception, match="explain.cases"):
        maps.explain(config, workdir)


def test_explainer_of_a_cnn_classifier_has_gradcam_and_complete_ig():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.tanh(nn.Conv(3, (3, 3))(x))
            return nn.Dense(2)(x.mean(axis=(1, 2)))

    net = Net()
    x = np.random.default_rng(0).normal(size=(6, 6, 2)).astype(np.float32)
    variables = net.init(jax.random.key(1), x[None])

    def apply_fn(v, xb):
        return net.apply(v, xb)

    cfg = configs.tiny_unet().explain
    cfg.ig_steps, cfg.target_class = 32, 1
    explain = maps.make_explainer(apply_fn, variables, x.shape, cfg)
    out = {k: np.asarray(v) for k, v in explain(variables, x).items()}
    assert set(out) == {"gradient", "integrated_gradients", "gradcam"}
    assert out["gradcam"].shape == (6, 6) and 0 <= out["gradcam"].min() <= out["gradcam"].max() <= 1
    gap = float(net.apply(variables, x[None])[0, 1] - net.apply(variables, 0 * x[None])[0, 1])
    assert out["integrated_gradients"].astype(np.float64).sum() == pytest.approx(gap, abs=2e-3)


def test_explainer_of_a_sigmoid_classifier_explains_its_predicted_class():
    w = np.random.default_rng(3).normal(size=(4, 4, 1)).astype(np.float32)

    def apply_fn(v, xb):  # K = 1: logit = sum(w * x), no convolution (no Grad-CAM)
        return jnp.sum(v["w"] * xb, axis=(1, 2, 3))[:, None]

    cfg = configs.tiny_unet().explain
    cfg.ig_steps = 2
    explain = maps.make_explainer(apply_fn, {"w": w}, w.shape, cfg)
    for sign in (1.0, -1.0):  # predicted class 1 (logit > 0), then class 0 (score = -logit)
        x = sign * np.sign(w) * np.float32(0.5)
        out = explain({"w": w}, x)
        assert set(out) == {"gradient", "integrated_gradients"}
        np.testing.assert_allclose(out["integrated_gradients"], sign * (w * x)[..., 0], rtol=1e-5)


def test_write_case_3d_gives_nifti_on_the_input_grid_and_the_busiest_slice(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 6, 8, 1)).astype(np.float32)
    ig = np.zeros((4, 6, 8), np.float32)
    ig[2, 1:3, 2:5] = [[1.0, -2.0, 0.5], [0.0, 3.0, 0.0]]  # slice 2 holds all attribution
    images = maps.write_case(
        str(tmp_path), "c1", image, {"integrated_gradients": ig}, {"spacing_mm": (2.5, 1.0, 0.5)}
    )
    for name, ref in (("image", image[..., 0]), ("integrated_gradients", ig)):
        nii = nib.load(tmp_path / f"c1_{name}.nii.gz")
        # NIfTI's axes are (x, y, z) = our (W, H, D) reversed
        np.testing.assert_allclose(nii.get_fdata().transpose(2, 1, 0), ref, rtol=1e-6)
        np.testing.assert_allclose(nii.header.get_zooms(), (0.5, 1.0, 2.5))
    rgb = images["explain/c1/integrated_gradients"]
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    red, blue = rgb[..., 0].astype(int), rgb[..., 2].astype(int)
    assert red[2, 3] > blue[2, 3] + 100  # the largest positive attribution is red
    assert blue[1, 3] > red[1, 3] + 100  # the negative one blue
