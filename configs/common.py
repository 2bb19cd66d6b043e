"""The base config: every key that any experiment may set, with its default (STYLE.md sec. 2).

Experiment configs start from ``base_config()`` and change values; they never add keys the
trainer does not know, so a misspelt ``--config.x.y`` override fails with the key's name.
"""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Returns the full config schema with defaults."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "segmentation"  # registry "tasks.<name>": data, evaluation and outputs
    # Another run's workdir or checkpoint folder to initialise weights from (fine-tuning);
    # ignored when the workdir already holds a checkpoint (then the run resumes).
    c.init_from = ""
    # True: only parameters and batch statistics (matched by path and shape). False: the whole
    # state (also the optimiser moments), but the step restarts at 0, so this run's schedule
    # runs from its start over this run's epochs.
    c.init_params_only = True

    c.data = ml_collections.ConfigDict()
    c.data.root = ""  # empty: the built-in synthetic dataset named by data.synthetic
    c.data.synthetic = "spine2d"
    c.data.synthetic_kwargs = ml_collections.ConfigDict()
    c.data.crawler = "segmentation_file"
    c.data.crawler_kwargs = ml_collections.ConfigDict()
    c.data.store_dir = ""  # empty: <cache>/store/<hash of root + preprocess>
    c.data.preprocess = ml_collections.ConfigDict()
    c.data.preprocess.grayscale = True
    # Keys without a value are typed placeholders, so the command line can still set them
    # (ml_collections cannot override a plain None).
    c.data.preprocess.target_size = ml_collections.config_dict.placeholder(
        tuple
    )  # (64, 64): resize
    # mm per voxel, e.g. (2.5, 0.8, 0.8), or "auto": from the dataset fingerprint (nnU-Net's
    # rule). A placeholder so that both forms can be given on the command line.
    c.data.preprocess.target_spacing_mm = ml_collections.config_dict.placeholder(object)
    c.data.preprocess.reorient = ml_collections.config_dict.placeholder(str)  # "RAS", "LPS"
    c.data.preprocess.crop_foreground = False
    c.data.preprocess.normalization = ml_collections.ConfigDict({"name": "zscore"})
    c.data.preprocess.label_mode = "binary"
    # "CT", "MR", ...: with normalization.name="auto", CT gets the dataset's foreground window
    # + z-score, anything else a per-image z-score (the choice is printed and in the manifest).
    c.data.preprocess.modality = ""
    c.data.patch_size = (64, 64)  # spatial size fed to the model, in voxels
    c.data.fg_oversample = 1.0 / 3.0
    # Label regions, BraTS style: a tuple of tuples of label values, e.g. ((1, 2, 3), (2, 3),
    # (3,)) for whole tumour / tumour core / enhancing. Each region is one sigmoid channel
    # (model.num_classes = number of regions) and may overlap others; the written label map
    # paints them in order (medjax.metrics.regions). (): plain classes (softmax for K > 1).
    c.data.regions = ()
    # Names of the foreground classes (or regions) in metric keys, e.g. ("cord", "lesion") ->
    # val/dice/cord; (): the label values ("1", "2") or a region's values ("1+2+3").
    c.data.class_names = ()
    c.data.num_workers = 2  # Grain worker processes (0: in-process)
    # Reader threads and buffered batches per loader process; 0: cpus // workers threads (1..4)
    # and twice that many batches (pipeline.read_options; Grain's own 16 / 500 thrash small hosts).
    c.data.read_threads = 0
    c.data.prefetch_batches = 0
    c.data.preprocess_workers = 2
    c.data.val_fraction = 0.2  # used when the crawler gives no split
    # Held out as the test split when the dataset has none (cases without split folders, or
    # Decathlon's imagesTr alone): never the validation cases reused as "test". Cases keep their
    # split as others are added (a hash of the id); the store's report.json lists each split.
    c.data.test_fraction = 0.2
    c.data.split_seed = 0  # seed of that hash (0: the id alone); another value re-draws splits
    # k-fold cross-validation (medjax/data/splits.py): data.fold in 0..num_folds-1 trains that
    # fold (its validation cases from <store>/splits.json), "all" trains every fold in turn into
    # <workdir>/fold_<k>; unset or -1 (default): no folds, the split above. An int or "all".
    c.data.num_folds = 5
    c.data.fold = ml_collections.config_dict.placeholder(object)
    # LUNA16 (task=luna): cutouts around candidates, balanced sampling, FROC.
    c.data.luna = ml_collections.ConfigDict()
    c.data.luna.synthetic_kwargs = ml_collections.ConfigDict()
    c.data.luna.cutout_size_vox = (32, 48, 48)
    c.data.luna.label_mode = "nodule"  # or malignancy3 / malignancy2
    c.data.luna.ratio = (1, 1)  # training class ratio per epoch: (positive, negative)
    c.data.luna.epoch_length = 0  # cutouts per training epoch; 0: the training split's size
    c.data.luna.fold = -1  # >= 0: LUNA16's 10-fold split by subset; -1: data.val_fraction by series
    c.data.luna.n_bootstrap = 0  # FROC bootstrap resamples over scans for the CI
    # FROC counts at most this many marks per scan, as the official evaluation
    # (maxNumberOfCADMarks=100: only marks strictly above the 101st highest probability); 0: all.
    c.data.luna.froc_max_marks = 100
    # task=classification: whole images of a classification_folder, one class each.
    c.data.classification = ml_collections.ConfigDict()
    c.data.classification.ratio = ()  # class ratio per training epoch, e.g. (1, 1); (): as found
    c.data.classification.epoch_length = 0  # samples per epoch with a ratio; 0: the split's size
    c.data.train_split = "train"
    c.data.val_split = "val"
    c.data.test_split = "test"

    c.model = ml_collections.ConfigDict()
    c.model.name = "unet"
    # The options every model shares (medjax/models/spec.py passes them to the factory); the
    # model's own options go in model.kwargs.
    c.model.in_channels = 1  # input channels C (checked against the data)
    c.model.num_classes = 1  # logits K: 1 = binary with a sigmoid; K > 1 = softmax over K
    c.model.deep_supervision = False  # segmentation: also train on coarser outputs
    c.model.kwargs = ml_collections.ConfigDict()
    # How "auto" convolutions are computed: "auto" (XLA's convolution on GPU/TPU and for 2D on
    # the CPU; depth2d / im2col for 3D on the CPU, measured faster there), or force one of
    # "xla" | "im2col" | "depth2d" (medjax/models/layers.py). Same parameters either way.
    c.model.conv_impl = "auto"

    # nnU-Net-style planning (medjax/plan; --mode=plan prints it): with auto=True and
    # model.name="unet", the patch size, batch size and UNet depth / widths / per-axis pooling
    # and kernels come from the data and a measured train step (written to
    # <workdir>/plan_arch.json); a value set on the command line still wins.
    c.plan = ml_collections.ConfigDict()
    c.plan.auto = False
    c.plan.memory_gb = 0.0  # per device; 0: the device's memory (CPU: 8, plan/measure.py)
    c.plan.base_features = 32  # UNet width at full resolution, doubled per level (nnU-Net)
    c.plan.max_features = 0  # cap of the widths; 0: nnU-Net's (3D 320, 2D 512)
    c.plan.min_batch_size = 2  # per device
    c.plan.min_feature_map_size = 4  # smallest bottleneck edge (nnU-Net)

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "dice_ce"
    c.loss.kwargs = ml_collections.ConfigDict()
    # One weight per training output of a model with deep supervision (full resolution first);
    # (): nnU-Net's 1/2**i, lowest 0, normalised. Used as given (not normalised).
    c.loss.deep_supervision_weights = ()

    # "op(k=v)" specs applied on device in training only. A tuple, so that
    # --config.augment='("flip(p=0.5)",)' can override it (lists cannot be).
    c.augment = ()

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.0
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.momentum = 0.99
    c.optim.nesterov = True
    c.optim.grad_clip_norm = 0.0  # 0: off
    c.optim.freeze = ""  # regex of parameter paths to keep frozen (fine-tuning)

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "constant"
    c.schedule.warmup_steps = 0
    c.schedule.end_factor = 0.0
    c.schedule.power = 0.9
    c.schedule.step_every_steps = 0
    c.schedule.step_factor = 0.1
    # name="plateau": PyTorch's ReduceLROnPlateau (threshold_mode="abs") after each validation;
    # counts are in validations. The effective rate (schedule x scale) is logged as train/lr.
    c.schedule.plateau = ml_collections.ConfigDict()
    c.schedule.plateau.monitor = "val/loss"
    c.schedule.plateau.mode = "min"
    c.schedule.plateau.factor = 0.1
    c.schedule.plateau.patience = 10
    c.schedule.plateau.min_delta = 0.0  # absolute threshold of an improvement
    c.schedule.plateau.cooldown = 0
    c.schedule.plateau.min_lr = 0.0

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 10
    c.train.steps_per_epoch = 0  # 0: len(train split) // batch_size
    c.train.batch_size = 16  # global batch size
    c.train.grad_accum_steps = 1
    c.train.precision = "float32"  # or "bfloat16": bf16 compute, fp32 master weights
    c.train.val_every = 1  # epochs
    c.train.log_every_steps = 10
    c.train.profile_steps = ()  # (start, stop) steps to trace with the JAX profiler
    c.train.early_stopping = ml_collections.ConfigDict()
    c.train.early_stopping.monitor = ""
    c.train.early_stopping.mode = "max"
    c.train.early_stopping.patience = 0
    c.train.early_stopping.min_delta = 0.0
    # Resuming a workdir with a changed loss, optimiser, schedule, model or data config is
    # refused (medjax/train/workdir.py lists the keys that may change); True: continue anyway.
    c.train.allow_config_change = False

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 16
    c.eval.step = -1  # -1: the best checkpoint (or the latest when no metric is monitored)
    c.eval.split = "test"
    c.eval.write_predictions = True
    # Also <case>.seg.dcm (DICOM SEG referencing the series) for DICOM cases; needs highdicom.
    c.eval.write_dicom_seg = True
    c.eval.step_fraction = 0.5  # sliding-window overlap for volumes larger than the patch
    c.eval.mirror_axes = ()  # mirroring TTA (logits averaged over the flips), on every eval path
    # HD95/ASSD surface: "face" (a voxel is surface if a face neighbour, 6 in 3D / 4 in 2D, is
    # background: MONAI's and medpy's convention) or "full" (26 / 8 neighbours, reads lower).
    c.eval.surface_connectivity = "face"
    # Where sliding-window predictions are blended: "auto" (on the device when the volume and
    # accumulators fit a quarter of its memory, 256 MiB on a CPU backend, else on the host),
    # "device" or "host".
    c.eval.blend = "auto"
    # Apply the run's post-processing (<workdir>/postprocessing.json from
    # --mode=choose_postprocessing; a fold_<k> run: its cross-validation's) when there is one:
    # metrics and written predictions are then of the post-processed masks (metrics.json says
    # "postprocessed": true). False: the network's raw predictions.
    c.eval.postprocess = True

    c.ckpt = ml_collections.ConfigDict()
    c.ckpt.monitor = "val/dice"
    c.ckpt.mode = "max"
    c.ckpt.save_top_k = 3
    c.ckpt.save_last = 2  # always keep the newest N as well
    c.ckpt.every_epochs = 1

    c.log = ml_collections.ConfigDict()
    c.log.images_every = 1  # epochs
    c.log.num_images = 4
    # Experiment trackers besides TensorBoard/metrics.jsonl (pip install 'medjax[tracking]').
    c.log.mlflow = False
    c.log.mlflow_uri = ""  # "": $MLFLOW_TRACKING_URI, else file:<dirname(workdir)>/mlruns
    c.log.wandb = False  # WANDB_MODE=offline: local files only (wandb sync uploads them)
    c.log.wandb_project = "medjax"
    c.log.system_every_steps = 0  # system/... (CPU, RSS, device memory, data wait); 0 = off

    # --mode=explain (medjax/explain/maps.py): saliency maps of the best checkpoint's cases.
    c.explain = ml_collections.ConfigDict()
    c.explain.split = "val"
    c.explain.cases = ()  # case ids; () = the first num_cases of the split
    c.explain.num_cases = 2
    c.explain.target_class = -1  # -1: the predicted class (classification) / class 1 (seg.)
    c.explain.ig_steps = 32  # integrated-gradients intervals (completeness error ~ 1/steps^2)
    c.explain.ig_batch_size = 8  # path points differentiated at once (memory: that many)

    # --mode=predict: a trained run (--workdir) on new, unlabelled data (medjax/predict/).
    # Preprocessing always follows the run's recorded plan (<workdir>/plan.json).
    c.predict = ml_collections.ConfigDict()
    c.predict.input = ""  # a file or folder: PNG/TIFF, NIfTI, MHA/MHD, NRRD, DICOM series
    c.predict.output = ""  # a new or empty folder (see overwrite)
    c.predict.checkpoint = "best"  # "best", "last" or a step number, e.g. "1200"
    # Mirror test-time augmentation axes (spatial, 0-based), e.g. (0, 1, 2); unset: the run's
    # eval.mirror_axes (what its validation used).
    c.predict.tta = ml_collections.config_dict.placeholder(tuple)
    c.predict.ensemble = ()  # more workdirs: probabilities averaged with --workdir's
    c.predict.save_probabilities = False  # also <case>_probabilities.* (float32, K channels)
    c.predict.overwrite = False  # a non-empty output folder is refused unless True
    c.predict.write_dicom_seg = True  # DICOM input: also <case>.seg.dcm (needs highdicom)
    # Connected-component clean-up on the original grid: keep_largest lists label values that
    # keep only their largest component; smaller components than either minimum are removed
    # (every foreground label). Any of these set: they replace the run's own choice.
    c.predict.postprocess = ml_collections.ConfigDict()
    # None of the three set: apply the run's postprocessing.json (chosen on validation by
    # --mode=choose_postprocessing; a bundle carries it; a fold ensemble uses the
    # cross-validation's) when there is one. False: no post-processing unless set above.
    c.predict.postprocess.auto = True
    c.predict.postprocess.keep_largest = ()
    c.predict.postprocess.min_size_voxels = 0
    c.predict.postprocess.min_size_ml = 0.0
    # LUNA runs: the candidates list (seriesuid, coordX/Y/Z); empty: candidates_V2.csv or
    # candidates.csv in predict.input (a LUNA folder of subset*/ .mhd scans).
    c.predict.candidates = ""
    # --mode=export: the bundle folder (medjax/predict/bundle.py); empty: <workdir>/bundle.
    c.predict.bundle = ""

    # Hyperparameter sweeps (--mode=tune, Ray Tune; medjax/train/tune.py). Each param is
    # "config.key=dist(args)", dist one of choice / uniform / loguniform / grid, e.g.
    # "optim.lr=loguniform(1e-4, 1e-2)". A tuple, so --config.tune.params='("...",)' overrides it.
    c.tune = ml_collections.ConfigDict()
    c.tune.params = ()
    c.tune.metric = "val/dice"  # a validation metric the trials report after every validation
    c.tune.mode = "max"
    c.tune.num_samples = 4  # trials; with grid params, samples of each grid point
    c.tune.max_concurrent = 1  # 0: as many as the resources allow
    c.tune.seed = 0  # of the random draws
    c.tune.scheduler = "asha"  # or "fifo" (no early stopping of trials)
    c.tune.asha = ml_collections.ConfigDict()
    c.tune.asha.grace_period = 1  # epochs before a trial can be stopped
    c.tune.asha.reduction_factor = 2
    c.tune.asha.max_t = 0  # epochs; 0: the largest train.epochs of the search space
    c.tune.resources_per_trial = ml_collections.ConfigDict()
    c.tune.resources_per_trial.cpus = 1.0
    c.tune.resources_per_trial.gpus = 0.0  # 0: the trial runs JAX on CPU
    return c
