"""The MONAI/PyTorch side of ``benchmarks/accuracy.py``: medjax's 3D recipe written in MONAI.

The same preprocessed cases (medjax's store, read through ``pipeline.prepare_data``), the same
train/val/test split, and the recipe of the medjax config translated term by term:

* network: MONAI ``DynUNet`` (nnU-Net's UNet in MONAI) with medjax's widths and depth, 3x3x3
  kernels, instance norm with affine parameters, ReLU, a transposed 2x2x2 convolution with bias
  to upsample, a 1x1x1 head (its bias at ``model.kwargs.head_prior`` when the config sets one,
  sigmoid heads only). The one difference: DynUNet downsamples with a stride-2
  convolution where medjax's UNet max-pools (so DynUNet has a few more parameters; both counts
  are printed);
* loss: ``DiceCELoss(sigmoid=True)`` (soft Dice, smooth 1e-5, per example or ``batch`` as
  ``loss.kwargs.dice``, + binary CE: MONAI uses BCE-with-logits for one channel), with the
  weights of ``losses.dice_ce``;
* optimiser and schedule: ``torch.optim.Adam`` (same lr, betas, eps) with a ``LambdaLR`` of
  optax's ``warmup_cosine_decay_schedule`` (linear warmup from 0, cosine to 0 at the last step);
* data: shuffled epochs of the training cases, batch ``train.batch_size``, one patch per case
  by ``RandCropByPosNegLabeld`` with ``pos = round(fg_oversample * B) / B`` (medjax forces
  foreground in exactly that many rows of each batch, e.g. 1 of 2 for ``1/3`` at batch 2;
  MONAI draws it per sample);
* augmentation: MONAI's nearest equivalents of the config's ops (``_augmentations``);
* evaluation: ``sliding_window_inference`` with Gaussian blending at the same overlap, scored by
  medjax's own evaluation accumulator, so both sides share one metric code.

torch and MONAI are imported inside the functions: ``benchmarks/accuracy.py --only=medjax``
runs without them.
"""

from __future__ import annotations

import copy
import math
import os
import time
from typing import Any

import numpy as np


def available() -> str | None:
    """None when torch and monai import; else the reason they do not."""
    try:
        import monai  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        return f"{e} (pip install -e '.[bench]')"
    return None


def lr_lambda(step: int, *, warmup: int, total: int) -> float:
    """optax ``warmup_cosine_decay_schedule(0, 1, warmup, total, 0)`` at ``step`` (a factor)."""
    if warmup and step < warmup:
        return step / warmup
    decay = max(total, warmup + 1) - warmup
    t = min(max(step - warmup, 0), decay) / decay
    return 0.5 * (1.0 + math.cos(math.pi * t))


def _augmentations(config: Any) -> list:
    """MONAI transforms for the config's ``augment`` specs (the unet3d recipe; others raise).

    medjax ``spatial`` draws rotation and scaling each with ``p * p_part``; MONAI gets one
    ``RandRotated`` about the D axis (in the H, W plane) and one ``RandZoomd`` with those
    probabilities. ``contrast`` is nnU-Net's scaling around the mean:
    ``RandScaleIntensityFixedMeand``.
    """
    from monai import transforms as mt

    from medjax import registry

    keys, out = ("image", "label"), []
    for spec in config.augment:
        name, kw = registry.parse_spec(spec)
        p = float(kw.get("p", 1.0))
        if name == "spatial":
            rot = float(kw.get("rotation", 0.0))
            lo, hi = kw.get("scale", (1.0, 1.0))
            out.append(
                mt.RandRotated(
                    keys,
                    range_x=math.radians(rot),
                    prob=p * float(kw.get("p_rotation", 1.0)),
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                )
            )
            out.append(
                mt.RandZoomd(
                    keys,
                    prob=p * float(kw.get("p_scale", 1.0)),
                    min_zoom=lo,
                    max_zoom=hi,
                    mode=("trilinear", "nearest"),
                    padding_mode="constant",
                    keep_size=True,
                )
            )
        elif name == "flip":
            for axis in kw.get("axes", (0, 1, 2)):
                out.append(mt.RandFlipd(keys, prob=p, spatial_axis=int(axis)))
        elif name == "gaussian_noise":
            out.append(mt.RandGaussianNoised("image", prob=p, std=float(kw["sigma"][1])))
        elif name == "brightness":
            lo, hi = kw["range"]
            out.append(mt.RandScaleIntensityd("image", factors=(lo - 1, hi - 1), prob=p))
        elif name == "contrast":
            lo, hi = kw["range"]
            out.append(
                mt.RandScaleIntensityFixedMeand(
                    "image", factors=(lo - 1, hi - 1), prob=p, preserve_range=True
                )
            )
        elif name == "gamma":
            out.append(mt.RandAdjustContrastd("image", prob=p, gamma=tuple(kw["range"])))
        else:
            raise ValueError(f"no MONAI translation for augment op {spec!r}")
    return out


def _cases(source: Any) -> list[dict[str, np.ndarray]]:
    """The split's cases channel-first, as MONAI wants them: image [C, *S], label [1, *S]."""
    out = []
    for i in range(len(source)):
        rec = source[i]
        image = np.moveaxis(np.asarray(rec["image"], np.float32), -1, 0)
        label = np.asarray(rec["label"], np.float32)[None]
        out.append({"image": image, "label": label, "index": i})
    return out


def make_network(config: Any):
    """MONAI ``DynUNet`` with the medjax UNet's widths, depth and norm (see the docstring)."""
    from monai.networks.nets import DynUNet

    from medjax.models import segmentation

    kw = config.model.kwargs
    widths = segmentation.level_features(kw.features, kw.depth, kw.get("max_features", 320))
    depth = len(widths)
    return DynUNet(
        spatial_dims=len(config.data.patch_size),
        in_channels=config.model.in_channels,
        out_channels=config.model.num_classes,
        kernel_size=[3] * depth,
        strides=[1] + [2] * (depth - 1),
        upsample_kernel_size=[2] * (depth - 1),
        filters=list(widths),
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("relu", {"inplace": True}),
        trans_bias=True,
    )


def _evaluate(model, task: Any, split: str, config: Any) -> dict[str, float]:
    """Sliding-window predictions of every case of ``split``, scored by medjax's accumulator."""
    import torch
    from monai.inferers import sliding_window_inference

    from medjax.evaluate import segmentation as seg_eval

    # The accumulator medjax's task builds for volumes (the same for a whole-image split).
    source, ndim = task.data.source(split), len(config.data.patch_size)
    spacings = [tuple(e["props"].get("spacing_mm", (1.0,) * ndim)) for e in task.data.splits[split]]
    evaluation = seg_eval.VolumeEvaluation(
        source,
        spacings,
        tile_size=tuple(config.data.patch_size),
        num_classes=config.model.num_classes,
        step_fraction=config.eval.step_fraction,
        connectivity=config.eval.get("surface_connectivity", "face"),
    )
    model.eval()
    with torch.no_grad():
        for case in _cases(source):
            logits = sliding_window_inference(
                torch.from_numpy(case["image"])[None],
                roi_size=tuple(config.data.patch_size),
                sw_batch_size=config.eval.batch_size,
                predictor=model,
                overlap=1.0 - config.eval.step_fraction,
                mode="gaussian",
            )
            out = {"logits": np.moveaxis(logits[0].numpy(), 0, -1)[None]}
            evaluation.accumulate(out, {"index": np.array([case["index"]])})
    model.train()
    return evaluation.finalize().metrics


def train_and_evaluate(config: Any, task: Any, total_steps: int, val_every_steps: int) -> dict:
    """Trains the MONAI side for ``total_steps``, validating every ``val_every_steps`` and at
    the end; the best validation Dice's weights are then tested (as medjax's best checkpoint).

    Returns:
      ``val_dice`` (best), ``best_step``, ``test_dice``, ``test_dice_per_case``,
      ``test_hd95_mm``, ``params``, ``wall_s``, ``steps``.
    """
    import monai
    import torch
    from monai import transforms as mt
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceCELoss

    t0 = time.time()
    seed = int(config.seed)
    monai.utils.set_determinism(seed=seed)
    torch.set_num_threads(os.cpu_count() or 1)
    # medjax forces foreground in round(fg_oversample * B) rows of each batch: that share.
    batch = int(config.train.batch_size)
    fg = round(float(config.data.fg_oversample) * batch) / batch
    pos, neg = fg, 1.0 - fg
    transforms = mt.Compose(
        [
            mt.RandCropByPosNegLabeld(
                ("image", "label"),
                label_key="label",
                spatial_size=tuple(config.data.patch_size),
                pos=pos,
                neg=neg,
                num_samples=1,
            ),
            *_augmentations(config),
            mt.ToTensord(("image", "label")),
        ]
    ).set_random_state(seed=seed)
    train = _cases(task.data.source(config.data.train_split))
    for case in train:
        case.pop("index")
    loader = DataLoader(
        Dataset(train, transforms),
        batch_size=config.train.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=0,  # as medjax's data.num_workers=0: the same cores for everything
        generator=torch.Generator().manual_seed(seed),
    )
    model = make_network(config)
    prior = float(config.model.kwargs.get("head_prior", 0.0))
    if prior:  # medjax's head_prior (segmentation.head), on DynUNet's 1x1 output convolution
        with torch.no_grad():
            model.output_block.conv.conv.bias.fill_(math.log(prior / (1.0 - prior)))
    params = sum(p.numel() for p in model.parameters())
    loss_kw = config.loss.kwargs
    dice_kw = dict(loss_kw.get("dice", None) or {})
    loss_fn = DiceCELoss(
        sigmoid=True,
        lambda_dice=float(loss_kw.get("dice_weight", 1.0)),
        lambda_ce=float(loss_kw.get("ce_weight", 1.0)),
        smooth_nr=float(dice_kw.get("smooth_nr", 1e-5)),
        smooth_dr=float(dice_kw.get("smooth_dr", 1e-5)),
        batch=bool(dice_kw.get("batch", False)),
    )
    opt = torch.optim.Adam(
        model.parameters(), lr=config.optim.lr, betas=(config.optim.b1, config.optim.b2)
    )
    warmup = int(config.schedule.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, warmup=warmup, total=total_steps)
    )
    best, best_step, best_state, step = -1.0, 0, None, 0
    model.train()
    while step < total_steps:
        for batch in loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % val_every_steps == 0 or step == total_steps:
                dice = _evaluate(model, task, config.data.val_split, config)["dice"]
                print(f"  monai step {step}: val dice {dice:.4f} (loss {loss.item():.4f})")
                if dice > best:
                    best, best_step, best_state = dice, step, copy.deepcopy(model.state_dict())
            if step >= total_steps:
                break
    model.load_state_dict(best_state)
    test = _evaluate(model, task, config.eval.split, config)
    return {
        "val_dice": best,
        "best_step": best_step,
        "test_dice": test["dice"],
        "test_dice_per_case": test["dice_per_case"],
        "test_hd95_mm": test.get("hd95_mm", float("nan")),
        "params": params,
        "wall_s": time.time() - t0,
        "steps": step,
    }
