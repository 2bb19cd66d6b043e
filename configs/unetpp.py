"""2D spinal-cord lesion segmentation with UNet++ (Zhou et al. 2018).

The UNet experiment of ``configs/unet.py`` (same data, loss, schedule and variants) with nested
dense skips. Default (built-in synthetic sagittal T2w slices, 64x64):
    python launch.py --config=configs/unetpp.py
  slower than ``configs/unet.py``: depth 4 adds six nested conv blocks at full-size levels.

Deep supervision (``--config.model.deep_supervision=True``) is off by default. Its
``depth - 1`` outputs are all full resolution, so this config sets equal
``loss.deep_supervision_weights`` (the paper averages the heads' losses; nnU-Net's default,
made for outputs of falling resolution, would give the shallowest one, X^{0,1}, weight 0).
With another ``model.kwargs.depth`` give matching weights, e.g. depth 5:
``--config.loss.deep_supervision_weights='(0.25, 0.25, 0.25, 0.25)'``.

Tiny (tests, seconds): ``configs/unetpp.py:tiny`` (depth 3, features 4, 32x32).
"""

from configs import unet as unet_config
from medjax import config_lib


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, variant="default", tiny=False, full=False)
    c = unet_config.get_config(arg)
    c.model.name = "unetpp"
    if args.tiny or args.variant == "tiny":
        c.model.kwargs.depth = 3  # UNet's tiny depth 2 would leave no nesting: UNet++ = UNet
    heads = c.model.kwargs.depth - 1  # used only with deep supervision on
    c.loss.deep_supervision_weights = (1.0 / heads,) * heads
    return c
