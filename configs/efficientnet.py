"""Lesion vs no-lesion classification of sagittal spine MR slices with EfficientNet (Tan & Le 2019).

The data, loss, augmentations and schedule of ``configs/resnet.py``; the model is EfficientNet-B0
at quarter width (stem 8 channels, head 320) with group norm. Default:
    python launch.py --config=configs/efficientnet.py --workdir=runs/efficientnet
  Measured 2026-11-23 on 2 CPU cores shared with other jobs (load 5-7), data already
  generated: 5.2 minutes wall (1.4 steps/s; the depthwise convolutions are slow on XLA:CPU and
  the train step takes about a minute to compile); validation ROC AUC 0.70, balanced accuracy
  0.61 -- EfficientNet learns this data slowest of the three families from scratch. Tried and
  worse: batch norm (the paper's, momentum 0.99: validation stayed at chance, its running
  statistics lag the weights over 210 steps), and a 3x higher learning rate (AUC 0.67).

LUNA16 nodule classification (task=luna, 3D cutouts of the built-in LUNA-format CT) with a 3D
EfficientNet-B0 at quarter width:
    python launch.py --config=configs/efficientnet.py:luna --workdir=runs/efficientnet_luna

Tiny (tests, seconds): ``configs/efficientnet.py:tiny`` and ``:luna,tiny`` (one block per stage).
"""

import ml_collections

from configs import resnet
from medjax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The experiment config; ``arg`` takes ``tiny`` and ``luna`` (``luna,tiny`` both)."""
    args = config_lib.parse_arg(arg, variant="default", tiny=False, luna=False)
    tiny = args.tiny or args.variant == "tiny"
    c = resnet.get_config(arg)
    c.model.name = "efficientnet"
    c.model.in_channels = 1
    c.model.num_classes = 2
    c.model.kwargs = {
        "variant": "b0",
        "width_scale": 0.25,
        # Group norm: batch norm's running statistics (momentum 0.99) lagged the weights so
        # far over the default's 210 steps that validation stayed at chance.
        "norm": "group",
    }
    if tiny:
        c.model.kwargs.depth_scale = 0.34  # ceil(n * 0.34) = 1 block in every B0 stage
    return c
