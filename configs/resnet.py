"""Lesion vs no-lesion classification of sagittal spine MR slices with a ResNet (He et al. 2016).

Data: the built-in ``synthetic.spine2d_cls`` folder (``<class>/<case>.png``, 300 slices per
class at 128x128, generated on first use), read by the ``classification_folder`` crawler,
z-scored and resized to 64x64; 20% of the cases (by a hash of the id) validate and also serve
as the test split. ``lesion`` is class 1, the positive class of precision, recall and AUC.

Default (ResNet-18 at width 16, ImageNet stem, batch norm, 15 epochs of 14 steps of 32):
    python launch.py --config=configs/resnet.py --workdir=runs/resnet
  Measured 2026-11-23 on 2 CPU cores shared with other jobs (load 2.5-6), data already
  generated: 106 s wall (3 steps/s); validation ROC AUC 0.92, balanced accuracy 0.84 (0.73 /
  0.63 after 6 epochs), against a Zero-Rule accuracy of 0.46. Generating the 600 slices and
  preprocessing them adds a few seconds.
Your own folder: ``--config.data.root=/path/to/folder`` and
``--config.data.crawler_kwargs.class_names='("a", "b", "c")' --config.model.num_classes=3``
(or empty ``class_names``: the sorted folder names).

LUNA16 nodule classification (task=luna: 3D cutouts of the built-in LUNA-format CT, balanced
sampling, FROC; the data and schedule of ``configs/luna.py``) with a 3D ResNet-18:
    python launch.py --config=configs/resnet.py:luna --workdir=runs/resnet_luna
  (not measured yet; the model is checked to map the cutouts to logits in tests/test_configs.py)

Tiny (tests, seconds): ``configs/resnet.py:tiny`` and ``configs/resnet.py:luna,tiny``.
"""

import ml_collections

from configs import common
from configs import luna as luna_config
from medjax import config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The experiment config; ``arg`` takes ``tiny`` and ``luna`` (``luna,tiny`` both)."""
    args = config_lib.parse_arg(arg, variant="default", tiny=False, luna=False)
    tiny = args.tiny or args.variant == "tiny"
    if args.luna or args.variant == "luna":
        c = luna_config.get_config("tiny" if tiny else None)
        c.model.name = "resnet"
        # small_input: a 3x3 stride-1 stem, since the ImageNet stem would shrink a 16x32x32
        # cutout 4x before the first stage.
        c.model.in_channels = 1
        c.model.num_classes = 2
        c.model.kwargs = {
            "depth": 18,
            "width": 4 if tiny else 8,
            "small_input": True,
        }
        return c
    c = spine_classification(tiny)
    c.model.name = "resnet"
    c.model.in_channels = 1
    c.model.num_classes = 2
    c.model.kwargs = {"depth": 18, "width": 16}
    if tiny:
        c.model.kwargs.width = 4
    return c


def spine_classification(tiny: bool) -> ml_collections.ConfigDict:
    """Data, loss, augmentation and schedule of the spine lesion classification experiments."""
    c = common.base_config()
    c.task = "classification"
    c.data.synthetic = "spine2d_cls"
    c.data.crawler = "classification_folder"
    c.data.crawler_kwargs = {"class_names": ("no_lesion", "lesion")}
    c.data.preprocess.target_size = (64, 64)
    c.data.preprocess.normalization = {"name": "zscore"}
    c.data.patch_size = (64, 64)
    # The classes are balanced on disk; for a skewed folder set e.g. ratio=(1, 1) and
    # epoch_length to draw class-balanced epochs.
    c.data.classification.ratio = ()
    c.loss.name = "ce"
    c.loss.kwargs = {}
    # Image-only: the label is one class per slice, which every op passes through. Flips run
    # superior-inferior only (a mirrored anterior-posterior axis is no anatomy).
    c.augment = (
        "flip(p=0.5, axes=(0,))",
        "affine(p=0.5, rotation=10, scale=(0.9, 1.1), translation=0.05)",
        "brightness_contrast(p=0.5, brightness_limit=0.1, contrast_limit=0.2)",
        "gaussian_noise(p=0.3, sigma=(0.0, 0.1))",
    )
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 20
    c.train.epochs = 15
    c.train.batch_size = 32
    c.train.log_every_steps = 5
    c.eval.batch_size = 64
    c.ckpt.monitor = "val/auc"
    c.ckpt.mode = "max"
    if tiny:
        c.data.synthetic_kwargs = {"size": 64, "num_per_class": 16}
        c.data.preprocess.target_size = (32, 32)
        c.data.patch_size = (32, 32)
        c.data.val_fraction = 0.3
        c.data.num_workers = 0
        c.data.preprocess_workers = 0
        c.train.epochs = 2
        c.train.batch_size = 8
        c.train.log_every_steps = 2
        c.eval.batch_size = 8
    return c
