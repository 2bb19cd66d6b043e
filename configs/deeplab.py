"""2D spinal-cord lesion segmentation with DeepLabV3+ (Chen et al. 2018).

The UNet experiment of ``configs/unet.py`` (same data, loss, schedule and variants) with a
ResNet-18 DeepLabV3+ at output stride 8 (64x64 slices give an 8x8 ASPP grid; at 16 it would be
4x4). Widths start at 16 instead of the paper's 64 and ASPP has 64 channels instead of 256,
which suits 64x64 single-channel slices on a CPU. Default:
    python launch.py --config=configs/deeplab.py

The seed's full setting (320x320) on your data, at the paper's widths and output stride 16:
    python launch.py --config=configs/deeplab.py:full --config.data.root=/path/to/pairs

Tiny (tests, seconds): ``configs/deeplab.py:tiny`` (ResNet-10, widths from 4, ASPP 8).
"""

from configs import unet as unet_config
from medjax import config_lib


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, variant="default", tiny=False, full=False)
    c = unet_config.get_config(arg)
    c.model.name = "deeplab"
    c.model.in_channels = 1
    c.model.num_classes = 1
    c.model.kwargs = {
        "resnet_depth": 18,
        "features": 16,
        "output_stride": 8,
        "aspp_features": 64,
        "low_level_features": 48,
        "use_batch_norm": True,
    }
    if args.full or args.variant == "full":
        c.model.kwargs.features = 64
        c.model.kwargs.output_stride = 16
        c.model.kwargs.aspp_features = 256
    if args.tiny or args.variant == "tiny":
        c.model.kwargs.resnet_depth = 10
        c.model.kwargs.features = 4
        c.model.kwargs.aspp_features = 8
    return c
