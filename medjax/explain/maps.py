"""``--mode=explain``: saliency maps of a trained run's chosen cases, for a viewer and TensorBoard.

For each case (``explain.cases`` ids, else the first ``explain.num_cases`` of ``explain.split``)
the best checkpoint's score is explained by:

- ``gradient``: |d score / d x| summed over channels,
- ``integrated_gradients``: IG from a zero baseline (``explain.ig_steps`` intervals), summed
  over channels (signed: red pushes the score up),
- ``gradcam``: Grad-CAM at the last convolution, classification models only (not ViT).

The score is the class logit for classifiers (``explain.target_class``, -1: the predicted
class) and, for segmentation, the chosen class's logit summed over its predicted region
(``explain.target_class``, -1: class 1). 3D cases are written as NIfTI (the input and each map,
same grid, to overlay in a viewer), 2D cases as PNG overlays (input in gray, map in red/blue),
to ``<workdir>/explain/<split>-step<N>/``; each map's overlay (3D: the slice of largest
attribution) also goes to TensorBoard (and any tracker enabled in ``log``) as
``explain/<case>/<map>``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from medjax import errors, progress
from medjax.explain import attribution


def case_inputs(task: Any, split: str) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """``(id, image float32[*spatial, C], props)`` of every case of ``split``, as the model sees it.

    A task may define ``explain_cases(split)`` yielding the same; otherwise segmentation and
    classification stores (``task.data.source``) and LUNA cutouts (``task.sources``, in HU
    scaled as the task feeds them) are read here.
    """
    if hasattr(task, "explain_cases"):
        yield from task.explain_cases(split)
    elif hasattr(task, "sources"):  # LUNA cutouts: no case ids, the row number names them
        from medjax.tasks import luna

        source = task.sources[split]
        for i in range(len(source)):
            rec = source[i]
            image = np.asarray(rec["image"], np.float32) * np.float32(luna.HU_SCALE)
            yield f"{split}{i:05d}_label{int(rec['label'])}", image, {}
    else:
        source = task.data.source(split)
        entries = task.data.splits[split]
        for i, case_id in enumerate(source.ids):
            yield case_id, np.asarray(source[i]["image"], np.float32), entries[i].get("props", {})


def fit_to(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Centre-crops / zero-pads ``image [*spatial, C]`` to ``[*shape, C]`` (the model's patch)."""
    out = image
    for axis, size in enumerate(shape):
        n = out.shape[axis]
        if n > size:
            start = (n - size) // 2
            out = np.take(out, np.arange(start, start + size), axis=axis)
        elif n < size:
            pad = [(0, 0)] * out.ndim
            pad[axis] = ((size - n) // 2, size - n - (size - n) // 2)
            out = np.pad(out, pad)
    return out


def make_explainer(
    apply_fn: Any, variables: Any, x_shape: tuple[int, ...], cfg: ml_collections.ConfigDict
):
    """A jitted ``(variables, x) -> {map name: float32[*spatial]}`` for ``x [*x_shape]``.

    ``apply_fn(variables, x[None]) -> logits`` (``[1, K]`` classification, ``[1, *spatial, K]``
    segmentation). The variables are an argument, not a closure: jit would embed closed-over
    weights in the program as constants. ``variables`` here only fixes the model's structure.
    """
    x0 = jax.ShapeDtypeStruct((1, *x_shape), jnp.float32)
    out_shape = jax.eval_shape(apply_fn, variables, x0).shape
    segmentation = len(out_shape) > 2
    target = cfg.target_class

    def score_of(v: Any, x: jax.Array, cls: jax.Array | int) -> jax.Array:
        out = apply_fn(v, x[None])[0]
        if segmentation:
            return attribution.region_score(out, cls)
        return attribution.class_score(out, cls)

    layer = None
    if not segmentation:
        try:
            layer = attribution.last_conv_path(
                lambda xb: apply_fn(variables, xb), jnp.zeros((1, *x_shape), jnp.float32)
            )
        except ValueError:
            logging.info("explain: no convolution in the model, no Grad-CAM")

    @jax.jit
    def explain(v: Any, x: jax.Array) -> dict[str, jax.Array]:
        if segmentation:
            cls = target if target >= 0 else 1
        elif target >= 0:
            cls = target
        else:
            logits = apply_fn(v, x[None])[0]
            cls = (logits[0] > 0).astype(jnp.int32) if logits.shape[-1] == 1 else logits.argmax()

        def f(xi):
            return score_of(v, xi, cls)

        maps = {
            "gradient": jnp.abs(attribution.input_gradient(f, x)).sum(-1),
            "integrated_gradients": attribution.integrated_gradients(
                f, x, steps=cfg.ig_steps, batch_size=cfg.ig_batch_size
            ).sum(-1),
        }
        if layer is not None:
            maps["gradcam"] = attribution.grad_cam(
                lambda xb: apply_fn(v, xb), x, lambda o: attribution.class_score(o[0], cls), layer
            )
        return maps

    return explain


def overlay(image: np.ndarray, amap: np.ndarray) -> np.ndarray:
    """``uint8[H, W, 3]``: the image's first channel in gray, the map in red (+) / blue (-)."""
    gray = image[..., 0].astype(np.float64)
    lo, hi = np.percentile(gray, [1, 99])
    gray = np.clip((gray - lo) / max(hi - lo, 1e-12), 0, 1)
    m = amap / max(float(np.abs(amap).max()), 1e-12)
    rgb = np.stack([gray] * 3, axis=-1) * (1 - 0.6 * np.abs(m)[..., None])
    rgb[..., 0] += 0.6 * np.clip(m, 0, None)
    rgb[..., 2] += 0.6 * np.clip(-m, 0, None)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def write_case(
    out_dir: str,
    case_id: str,
    image: np.ndarray,
    maps: dict[str, np.ndarray],
    props: dict[str, Any],
) -> dict[str, np.ndarray]:
    """Writes one case's maps to ``out_dir``; returns its overlays by TensorBoard tag.

    Args:
      image: ``float32[*spatial, C]`` as the model saw it.
      maps: name -> ``float32[*spatial]``.
      props: the case's preprocessing props (``spacing_mm`` gives the NIfTI voxel size).
    """
    from medjax.data import io

    images = {}
    if image.ndim == 4:  # 3D: NIfTI on one grid, and the slice with the most attribution
        spacing = tuple(props.get("spacing_mm", (1.0, 1.0, 1.0)))
        grid = dict(spacing=spacing, origin=(0.0, 0.0, 0.0), direction=np.eye(3))
        io.write_volume(
            io.Volume(image[..., 0], **grid), os.path.join(out_dir, f"{case_id}_image.nii.gz")
        )
        z = int(np.abs(maps["integrated_gradients"]).sum(axis=(1, 2)).argmax())
        for name, m in maps.items():
            path = os.path.join(out_dir, f"{case_id}_{name}.nii.gz")
            io.write_volume(io.Volume(m.astype(np.float32), **grid), path)
            images[f"explain/{case_id}/{name}"] = overlay(image[z], m[z])
    else:
        from PIL import Image

        for name, m in maps.items():
            rgb = overlay(image, m)
            Image.fromarray(rgb).save(os.path.join(out_dir, f"{case_id}_{name}.png"))
            images[f"explain/{case_id}/{name}"] = rgb
    return images


def explain(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the saliency maps of the chosen cases; returns the output folder."""
    from medjax import distributed
    from medjax.train import loop, metric_writer
    from medjax.train import step as step_lib

    run = loop._Run(config, workdir, for_training=False)
    step = run.ckpt.best_step() if config.eval.step < 0 else config.eval.step
    if step is None:
        raise errors.CheckpointError(f"No checkpoint in {run.ckpt.directory}: train first.")
    state, _ = run.ckpt.restore(step, run.abstract_state)
    # One example at a time, on the default device: the weights as host arrays.
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    run.ckpt.close()
    cfg = config.explain
    split = cfg.split
    wanted = list(cfg.cases)
    patch = tuple(run.task.input_shape()[1:-1])

    def apply_fn(v, xb):
        return step_lib.predict_logits(
            state.replace(params=v["params"], batch_stats=v["batch_stats"]), xb, precision="float32"
        )

    out_dir = os.path.join(run.workdir, "explain", f"{split}-step{step}")
    writer = metric_writer.MetricWriter(run.workdir, config)
    explainer = None
    done = []
    total = len(wanted) or cfg.num_cases
    bar = progress.Progress(total, f"explain {split}", unit="case")
    for case_id, image, props in case_inputs(run.task, split):
        if (wanted and case_id not in wanted) or (not wanted and len(done) >= cfg.num_cases):
            continue
        x = fit_to(image, patch)
        if explainer is None:
            explainer = make_explainer(apply_fn, variables, x.shape, cfg)
        maps = {
            k: np.asarray(m, np.float32) for k, m in explainer(variables, jnp.asarray(x)).items()
        }
        if distributed.is_main():
            os.makedirs(out_dir, exist_ok=True)
            writer.write_images(step, write_case(out_dir, str(case_id), x, maps, props))
        done.append(case_id)
        bar.update()
        if len(done) >= total:
            break
    bar.close()
    writer.close()
    missing = sorted(set(wanted) - set(done))
    if missing:
        raise errors.ConfigError(
            f"explain.cases: {missing} are not cases of split {split!r} (explain.split)."
        )
    return out_dir
