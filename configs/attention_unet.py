"""2D spinal-cord lesion segmentation with an Attention UNet (Oktay et al. 2018).

The UNet experiment of ``configs/unet.py`` (same data, loss, schedule and variants) with
attention gates on the skips. Default (built-in synthetic sagittal T2w slices, 64x64):
    python launch.py --config=configs/attention_unet.py
  a little slower than ``configs/unet.py`` (the gates add 1x1 convs and a resize per level).

The seed's full setting on your data:
    python launch.py --config=configs/attention_unet.py:full --config.data.root=/path/to/pairs

Tiny (tests, seconds): ``configs/attention_unet.py:tiny`` (depth 3, features 4, 32x32).
"""

from configs import unet as unet_config
from medjax import config_lib


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, variant="default", tiny=False, full=False)
    c = unet_config.get_config(arg)
    c.model.name = "attention_unet"
    if args.tiny or args.variant == "tiny":
        c.model.kwargs.depth = 3  # UNet's tiny depth 2 would leave a single gate
    return c
