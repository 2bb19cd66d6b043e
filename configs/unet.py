"""2D spinal-cord lesion segmentation with a UNet (the seed's experiment).

Default (built-in synthetic sagittal T2w slices, 64x64, CPU-sized, 6 epochs):
    python launch.py --config=configs/unet.py
  Measured 2026-11-23 from an empty cache on 2 CPU cores that a test run was also using:
  6.6 minutes wall for everything (data generation, preprocessing, training, validation, test
  evaluation); validation Dice 0.92 (0.78 after the first epoch), test Dice 0.92; the best
  global intensity threshold scores 0.05 on the same slices (both logged).

The seed's full setting (320x320, depth 4, features 16, batch 64) on your data:
    python launch.py --config=configs/unet.py:full --config.data.root=/path/to/pairs

Tiny (tests, seconds): ``configs/unet.py:tiny``.
"""

from configs import common
from medjax import config_lib


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, variant="default", tiny=False, full=False)
    c = common.base_config()
    c.data.synthetic = "spine2d"
    c.data.crawler = "segmentation_file"
    c.data.preprocess.target_size = (64, 64)
    c.data.preprocess.normalization = {"name": "zscore"}
    c.data.patch_size = (64, 64)
    c.model.name = "unet"
    c.model.in_channels = 1
    c.model.num_classes = 1
    c.model.kwargs = {"depth": 4, "features": 16, "use_batch_norm": True}
    c.loss.name = "dice_ce"
    c.loss.kwargs = {"dice_weight": 1.0, "ce_weight": 1.0}
    c.augment = ["brightness_contrast(p=0.5, brightness_limit=0.2, contrast_limit=0.2)"]
    c.optim.name = "adam"
    c.optim.lr = 3e-3
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 20
    c.train.epochs = 6
    c.train.batch_size = 16
    c.train.log_every_steps = 10
    c.eval.batch_size = 16
    c.ckpt.monitor = "val/dice"
    c.ckpt.mode = "max"
    if args.full or args.variant == "full":
        c.data.preprocess.target_size = (320, 320)
        c.data.patch_size = (320, 320)
        c.data.synthetic_kwargs = {"size": 320}
        c.train.batch_size = 64
        c.eval.batch_size = 64
        c.train.epochs = 200
    if args.tiny or args.variant == "tiny":
        c.data.synthetic_kwargs = {"size": 64, "num_train": 32, "num_val": 16, "num_test": 16}
        c.data.preprocess.target_size = (32, 32)
        c.data.patch_size = (32, 32)
        c.data.num_workers = 0
        c.data.preprocess_workers = 0
        c.model.kwargs.depth = 2
        c.model.kwargs.features = 4
        c.train.epochs = 2
        c.train.batch_size = 8
        c.train.log_every_steps = 2
        c.eval.batch_size = 8
        c.log.num_images = 2
    return c
