"""LUNA16 nodule vs non-nodule classification from CT cutouts (LunaModel, balanced sampling).

Default (built-in synthetic LUNA-format CT: 24 .mhd/.raw scans + candidates/annotations CSVs;
16x32x32 cutouts, 10 epochs of 320 balanced cutouts):
    python launch.py --config=configs/luna.py --workdir=runs/luna
  Measured 2026-11-23 from an empty cache on 2 idle CPU cores: 5.8 minutes wall in all
  (generation, cutouts, 10 epochs, evaluation); best validation ROC AUC 0.942 (Zero-Rule
  accuracy 0.84), FROC CPM 0.76 on the 6 validation scans.
Eval mode writes LUNA16's results.csv, the
  FROC plot and numbers. ``:full`` is the seed's 32x48x48 cutout setting (for a GPU).

Real LUNA16 (subset0..9 + CSVs in one folder; fold k validates on subset k):
    python launch.py --config=configs/luna.py --config.data.root=/data/luna16 \
        --config.data.luna.fold=9
Then fine-tune malignancy from this run: see configs/luna_malignancy.py.
"""

from configs import common
from medjax import config_lib


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, variant="default", tiny=False, full=False)
    c = common.base_config()
    c.task = "luna"
    # CPU-sized cutouts: XLA's CPU 3D convolutions run LunaModel at about 2 samples/s on 2 cores
    # at the seed's 32x48x48 (`:full`); 16x32x32 keeps the default run to minutes.
    c.data.luna.cutout_size_vox = (16, 32, 32)
    c.data.luna.label_mode = "nodule"
    c.data.luna.ratio = (1, 1)
    c.data.luna.epoch_length = 320
    c.data.luna.synthetic_kwargs = {"num_scans": 24, "num_subsets": 4}
    c.data.val_fraction = 0.25
    c.data.num_workers = 2
    c.model.name = "luna"
    c.model.in_channels = 1
    c.model.num_classes = 2
    c.model.kwargs = {"channels": 8}
    c.loss.name = "ce"
    c.loss.kwargs = {}
    # The seed's cutout augmentation: flips, +-0.1 offset, +-0.2 per-axis scale, in-plane
    # rotation, 25 HU noise (images are HU / 1000) -- one resampling per sample.
    c.augment = [
        "flip(p=0.5)",
        "affine(p=1.0, rotation=180, in_plane=True, scale=(0.8, 1.2), per_axis_scale=True, "
        "translation=0.1)",
        "gaussian_noise(p=1.0, sigma=0.025)",
    ]
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 10
    c.train.epochs = 10
    c.train.batch_size = 16
    c.train.log_every_steps = 8
    c.eval.batch_size = 64
    c.ckpt.monitor = "val/auc"
    c.ckpt.mode = "max"
    if args.full or args.variant == "full":  # the seed's setting (a GPU or patience)
        c.data.luna.cutout_size_vox = (32, 48, 48)
        c.data.luna.epoch_length = 4096
        c.train.batch_size = 32
        c.train.epochs = 20
    if args.tiny or args.variant == "tiny":
        c.data.luna.synthetic_kwargs = {
            "num_scans": 4,
            "num_subsets": 2,
            "shape": (32, 64, 64),
            "negatives_per_scan": 10,
        }
        c.data.luna.cutout_size_vox = (16, 16, 16)
        c.data.luna.epoch_length = 32
        c.data.num_workers = 0
        c.data.preprocess_workers = 0
        c.data.val_fraction = 0.5
        c.model.kwargs.channels = 4
        c.train.epochs = 2
        c.train.batch_size = 8
        c.train.log_every_steps = 2
        c.eval.batch_size = 8
    return c
