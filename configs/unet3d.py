"""3D spinal-cord lesion segmentation with a UNet (instance norm) on anisotropic MR volumes.

Data: the built-in ``synthetic.lesion3d`` Decathlon folder (axial T2w, 2.0 x 0.8 x 0.8 mm,
oblique and partly flipped affines; generated into the cache on first use, about 10 s), read by
the ``nifti_volume`` crawler (dataset.json training/validation lists, imagesTs + labelsTs),
reoriented to LPS, z-scored and resampled to 2.0 x 1.0 x 1.0 mm: 24 x 64 x 64 voxels.

Default (CPU-sized: 16x48x48 patches, 8 base features, depth 3, batch 2, 20 epochs of 20 steps;
validation by Gaussian sliding windows over whole volumes, with HD95/ASSD in mm):
    python launch.py --config=configs/unet3d.py --workdir=runs/unet3d
  Measured 2026-12-03 (``benchmarks/accuracy.py --steps=400 --seeds=0,1,2``: this default,
  400 steps; 2 shared CPU cores, load 4-11, 3.5-7 minutes each): validation / test Dice
  0.79 / 0.77, 0.81 / 0.79 and 0.82 / 0.78 for seeds 0, 1 and 2, against 0.026 for the best
  global threshold on the same cases (logged as the baseline): lesions are 0.15% of the voxels
  and their intensity overlaps CSF, discs and fat. Test-split predictions are written as NIfTI
  with each input's affine.

  Seed robustness: ``model.kwargs.head_prior=0.01`` (the head starts at a 1% lesion
  probability) is what makes it. Without it (a zero head bias, before 2026-12-03) the same runs
  gave test Dice 0.30, 0.71 and 0.27 for seeds 0, 1, 2: seed 2 still had validation Dice 0.00
  after 200 of its 400 steps, and in a 200-step run it never found a lesion (test 0.00; with
  the prior: 0.70, validation Dice 0.33 after 40 steps). With sigmoid + Dice/CE, Adam moves each
  weight by about the learning rate per step, so a head that starts at p = 0.5 spends hundreds
  of steps pushing every voxel's logit down before the Dice term can lift the lesions above
  0.5. The same recipe in MONAI (DynUNet) behaves the same: seed 0 test Dice 0.00 without the
  prior, 0.79 with it. Neither batch Dice nor deep supervision changed the early curve (at
  depth 3 deep supervision is a no-op: nnU-Net's weights give the one coarser output 0).
  Ten seeds (0-9, 400 steps each, 74-83 s per run on 2 idle cores): test Dice 0.76-0.81 on
  every seed, mean 0.783 (benchmarks/RESULTS.md). Not yet measured: ``:long`` with the prior.

Planned (nnU-Net style, ``--config.plan.auto=True``; ``--mode=plan`` prints the plan first):
    python launch.py --config=configs/unet3d.py --config.plan.auto=True --workdir=runs/planned
  The planner measures the compiled train step against the CPU's 8 GiB default budget and
  picks whole 24x64x64 volumes as the patch, batch 2, depth 5 with widths 8..128
  (``plan.base_features=8``, this variant's CPU width; nnU-Net's 32 took 16 min per run),
  in-plane-only pooling and 1x3x3 kernels for the 2 mm axis first. Measured 2026-12-03 on 2
  idle CPU cores through launch.py, seeds 0-9 (``benchmarks/seeds.py``): test Dice 0.789-0.825
  on every seed, mean 0.806 (sd 0.013), 3.3-5 minutes per run including planning.

Long (``:long``: whole 24x64x64 volumes as patches, 16 features, depth 4, 400 steps):
    python launch.py --config=configs/unet3d.py:long
  Measured 2026-11-23 (seed 0, before ``head_prior``) through launch.py on 2 idle CPU cores:
  17.5 minutes wall (0.41 steps/s);
  validation Dice 0.23 / 0.31 / 0.63 / 0.79 after 5 / 10 / 15 / 20 epochs (100 steps each),
  test Dice 0.74 (per case 0.80). (An H100 ran this model's
  400 steps in under a minute, measured outside launch.py.)

Full (more cases and features, deep supervision, elastic deformation; for a GPU):
    python launch.py --config=configs/unet3d.py:full
  On your own Decathlon folder add ``--config.data.root=/path/to/Task_xx`` and set the target
  spacing and patch size to fit it.

Tiny (tests, seconds): ``configs/unet3d.py:tiny``.

Multi-class (``:multiclass``, combines with the others, e.g. ``:tiny,multiclass``): the same
volumes labelled 1 = cord, 2 = lesion (``synthetic.lesion3d`` with ``labels="cord_lesion"``),
3 softmax classes; Dice/IoU/HD95/ASSD are reported per class (``val/dice/cord``,
``val/dice/lesion``, columns of per_case.csv) and ``val/dice`` is their foreground mean:
    python launch.py --config=configs/unet3d.py:multiclass --workdir=runs/unet3d_mc
  Measured 2026-12-03 on 2 shared CPU cores (nice 19, load ~6): 4.5 minutes wall including
  generating and preprocessing the data; validation Dice 0.82 after 400 steps (cord 0.94,
  lesion 0.69); test Dice 0.80 (cord 0.95, lesion 0.66; HD95 cord 1.0 mm, lesion 3.3 mm).

Regions (``:regions``): the same labels trained nnU-Net's region way, one sigmoid per
overlapping region, ``data.regions=((1, 2), (2,))`` (whole cord incl. lesions, lesion), as
BraTS' whole tumour / tumour core / enhancing; predictions are painted back into 0/1/2 maps:
    python launch.py --config=configs/unet3d.py:regions --workdir=runs/unet3d_regions
  Measured 2026-12-03 the same way: 3.7 minutes wall from the cached data; validation Dice
  0.75 (cord region 0.96, lesion 0.55); test Dice 0.73 (cord 0.97, lesion 0.48).
"""

from configs import common
from medjax import config_lib


def get_config(arg: str | None = None):
    """The experiment config; ``arg`` picks ``variant=default|long|tiny|full``, and
    ``multiclass`` or ``regions`` the cord + lesion labels (see the module docstring)."""
    args = config_lib.parse_arg(
        arg,
        variant="default",
        tiny=False,
        full=False,
        long=False,
        multiclass=False,
        regions=False,
    )
    c = common.base_config()
    c.data.synthetic = "lesion3d"
    c.data.synthetic_kwargs = {"num_train": 40, "num_val": 10, "num_test": 10, "seed": 0}
    c.data.crawler = "nifti_volume"
    c.data.preprocess.grayscale = False
    # Cases are stored with different voxel orders (flipped axes); one canonical order makes the
    # anatomy line up across cases, so flips become an augmentation choice, not a data accident.
    c.data.preprocess.reorient = "LPS"
    c.data.preprocess.target_spacing_mm = (2.0, 1.0, 1.0)  # keep the thick slices, 1 mm in-plane
    # The spacing alone gives 24 x 64 x 64 for the built-in data; target_size pins the shape
    # (``:long`` trains on whole volumes; the default samples smaller patches).
    c.data.preprocess.target_size = (24, 64, 64)
    c.data.preprocess.normalization = {"name": "zscore"}
    c.data.preprocess.label_mode = "binary"
    c.data.patch_size = (24, 64, 64)  # divisible by 2**(depth-1) = 8
    c.data.fg_oversample = 1.0 / 3.0
    c.data.num_workers = 0  # a whole-volume patch is a memory-mapped read: workers cost more
    c.data.preprocess_workers = 2
    c.model.name = "unet"
    c.model.in_channels = 1
    c.model.num_classes = 1
    c.model.kwargs = {
        "depth": 4,
        "features": 16,
        "norm": "instance",  # small 3D batches: batch statistics would be noisy
        # The head starts at a 1% lesion probability instead of 50%. With a zero bias the first
        # hundreds of Adam steps go into pushing every voxel's logit down, and some seeds never
        # got the lesions above 0.5 (test Dice 0.00); the docstring gives the measured runs.
        "head_prior": 0.01,
    }
    c.loss.name = "dice_ce"
    c.loss.kwargs = {"dice_weight": 1.0, "ce_weight": 1.0}
    # Anisotropic voxels: rotate only in the fine (H, W) plane, as nnU-Net does for thick slices.
    # Left-right (W) and superior-inferior (D) mirrors keep the anatomy plausible; an
    # anterior-posterior mirror would put the vertebral body behind the cord.
    c.augment = [
        "spatial(p=0.3, rotation=15.0, p_rotation=0.5, in_plane=True, scale=(0.85, 1.2), "
        "p_scale=0.5, translation=0.0)",
        "flip(p=0.5, axes=(0, 2))",
        "gaussian_noise(p=0.15, sigma=(0.0, 0.1))",
        "brightness(p=0.15, range=(0.75, 1.25))",
        "contrast(p=0.15, range=(0.75, 1.25))",
        "gamma(p=0.3, range=(0.7, 1.5))",
    ]
    c.optim.name = "adam"
    c.optim.lr = 3e-3
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = 20
    c.train.epochs = 20
    # Batch 2 halves the CPU cost per step and, over the same 400 steps, scored as well as 4.
    c.train.batch_size = 2
    c.train.log_every_steps = 10
    c.train.val_every = 5
    c.eval.batch_size = 2
    c.eval.split = "test"  # imagesTs + labelsTs
    c.ckpt.monitor = "val/dice"
    c.ckpt.mode = "max"
    c.ckpt.every_epochs = 5
    c.log.num_images = 4
    if args.long or args.variant == "long":
        pass  # the settings above: whole 24x64x64 volumes, 16 features (measured Dice ~0.8)
    elif not (args.full or args.tiny or args.variant in ("full", "tiny")):
        # CPU default: 16x48x48 patches from the 24x64x64 volumes (sliding-window validation),
        # 8 base features; minutes on 2 cores instead of ~40.
        c.data.preprocess.target_size = None
        c.data.patch_size = (16, 48, 48)
        c.model.kwargs.features = 8
        c.model.kwargs.depth = 3
        # With --config.plan.auto=True the planner sizes patch, batch, depth and pooling; the
        # width stays CPU-sized too (nnU-Net's 32 took 16 min for 400 steps on 2 cores).
        c.plan.base_features = 8
    if args.full or args.variant == "full":
        c.data.synthetic_kwargs = {"num_train": 200, "num_val": 40, "num_test": 40, "seed": 0}
        c.data.num_workers = 4
        c.model.kwargs.features = 32
        c.model.kwargs.depth = 4
        c.model.deep_supervision = True
        c.augment = list(c.augment) + ["elastic(p=0.2, alpha=(0.0, 4.0), sigma=(4.0, 6.0))"]
        c.optim.lr = 1e-3
        c.train.batch_size = 8
        c.train.epochs = 200
        c.train.val_every = 10
        c.eval.batch_size = 8
        c.ckpt.every_epochs = 10
    if args.tiny or args.variant == "tiny":
        c.data.synthetic_kwargs = {
            "num_train": 8,
            "num_val": 8,
            "num_test": 2,
            "shape": (16, 40, 40),
            "seed": 0,
        }
        c.data.preprocess.target_size = (16, 32, 32)
        c.data.patch_size = (16, 32, 32)
        c.data.preprocess_workers = 0
        c.model.kwargs.depth = 2
        c.model.kwargs.features = 4
        c.augment = ["flip(p=0.5, axes=(0, 2))", "gamma(p=0.3, range=(0.7, 1.5))"]
        c.train.epochs = 2
        c.train.batch_size = 8
        c.train.log_every_steps = 1
        c.train.val_every = 1
        c.eval.batch_size = 8
        c.ckpt.every_epochs = 1
        c.log.num_images = 2
    if args.multiclass or args.regions:
        c.data.synthetic_kwargs.labels = "cord_lesion"  # 1 cord, 2 lesion (inside the cord)
        c.data.preprocess.label_mode = "keep"
        c.data.class_names = ("cord", "lesion")
        c.model.num_classes = 3  # softmax: background, cord, lesion
    if args.regions:
        c.data.regions = ((1, 2), (2,))  # whole cord (cord + lesion), lesion: nested regions
        c.model.num_classes = 2  # one sigmoid per region
    return c
