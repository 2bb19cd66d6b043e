"""Lesion vs no-lesion classification of sagittal spine MR slices with EfficientNet (Tan & Le 2019).

The data, loss, augmentations and schedule of ``configs/resnet.py``; the model is EfficientNet-B0
at half width (stem 16 channels, head 640), batch norm. Default:
    python launch.py --config=configs/efficientnet.py --workdir=runs/efficientnet
  MEASURED_DEFAULT

LUNA16 nodule classification (task=luna, 3D cutouts of the built-in LUNA-format CT) with a 3D
EfficientNet-B0 at quarter width:
    python launch.py --config=configs/efficientnet.py:luna --workdir=runs/efficientnet_luna

Tiny (tests, seconds): ``configs/efficientnet.py:tiny`` and ``:luna,tiny`` (quarter width, one
block per stage).
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
    c.model.name = "efficientnet"
    c.model.kwargs = {
        "num_classes": 2,
        "in_channels": 1,
        "variant": "b0",
        "width_scale": 0.25 if luna or tiny else 0.5,
    }
    if tiny:
        c.model.kwargs.depth_scale = 0.34  # ceil(n * 0.34) = 1 block in every B0 stage
    return c
