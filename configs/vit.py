"""Lesion vs no-lesion classification of sagittal spine MR slices with a ViT (Dosovitskiy 2021).

The data, loss, augmentations and schedule of ``configs/resnet.py``; the model is a small ViT
(8x8 patches of the 64x64 slices: 64 tokens, width 96, depth 6, 4 heads, MLP 192, class token)
with AdamW and gradient clipping, as transformers like. Default:
    python launch.py --config=configs/vit.py --workdir=runs/vit
  Measured 2026-11-23 on 2 CPU cores shared with other jobs (load 3-6), data already
  generated: 115 s wall (4 steps/s); validation ROC AUC 0.94, balanced accuracy 0.87 (0.70 /
  0.61 after 6 epochs).

LUNA16 nodule classification (task=luna, 3D cutouts of the built-in LUNA-format CT) with 4x8x8
3D patches (4x4x4 in ``:luna,tiny``):
    python launch.py --config=configs/vit.py:luna --workdir=runs/vit_luna

Tiny (tests, seconds): ``configs/vit.py:tiny`` and ``:luna,tiny`` (width 16, depth 2).
"""

import ml_collections

from configs import resnet
from medjax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The experiment config; ``arg`` takes ``tiny`` and ``luna`` (``luna,tiny`` both)."""
    args = config_lib.parse_arg(arg, variant="default", tiny=False, luna=False)
    tiny = args.tiny or args.variant == "tiny"
    luna = args.luna or args.variant == "luna"
    c = resnet.get_config(arg)
    c.model.name = "vit"
    c.model.in_channels = 1
    c.model.num_classes = 2
    c.model.kwargs = {
        "patch_size": ((4, 4, 4) if tiny else (4, 8, 8)) if luna else (8, 8),
        "width": 96,
        "depth": 6,
        "num_heads": 4,
        "mlp_dim": 192,
        "pool": "cls",
    }
    c.optim.name = "adamw"
    c.optim.weight_decay = 0.05
    c.optim.grad_clip_norm = 1.0
    if tiny:
        c.model.kwargs.update({"width": 16, "depth": 2, "num_heads": 2, "mlp_dim": 32})
    return c
