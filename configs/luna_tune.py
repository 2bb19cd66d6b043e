"""Hyperparameter sweep of the LUNA16 nodule classifier (``configs/luna.py``) on Ray Tune.

The seed's search space: learning rate, batch size, epochs, number of conv blocks, conv
channels, dropout and optimizer. Each trial trains ``configs/luna.py`` with drawn values in
``<workdir>/trials/<id>``; ASHA stops a trial whose validation ROC AUC trails the others' at
epoch 2 or 6. Needs the ``tune`` extra (``pip install 'medjax[tune]'``):

    python launch.py --config=configs/luna_tune.py --mode=tune --workdir=runs/luna_tune

Interrupted? The same command resumes the sweep (and each unfinished trial from its
checkpoint). Then ``runs/luna_tune/trials.csv`` holds one row per trial, and the best one trains
with ``python launch.py --config=runs/luna_tune/best_config.py --workdir=runs/luna_best``.

16 trials of up to 10 epochs of the CPU-sized default (about 6 minutes each on 2 CPU cores, see
``configs/luna.py``) take hours on a laptop: on a GPU machine give each trial one,
``--config.tune.resources_per_trial.gpus=1``. ``configs/luna_tune.py:tiny`` is the same space
over LUNA tiny (4 trials): measured 2026-11-23 at 3.2 minutes wall with
``--config.tune.max_concurrent=1`` on 2 CPU cores shared with other jobs (load ~9); best
validation ROC AUC 0.65 (2 epochs of 32 cutouts), one trial pruned.
"""

from configs import luna
from medjax import config_lib


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, variant="default", tiny=False, full=False)  # as luna.py
    c = luna.get_config(arg)
    # LunaModel knobs the search space draws (the book's values as defaults).
    c.model.kwargs.num_blocks = 4
    c.model.kwargs.dropout = 0.0
    c.tune.params = (
        "optim.lr=loguniform(1e-4, 1e-2)",
        "train.batch_size=choice(16, 32)",
        "train.epochs=choice(5, 10)",
        "model.kwargs.num_blocks=choice(3, 4)",
        "model.kwargs.channels=choice(4, 8, 16)",
        "model.kwargs.dropout=uniform(0.0, 0.5)",
        "optim.name=choice('adam', 'sgd')",  # the book trains SGD, momentum 0.99
    )
    c.tune.metric = "val/auc"
    c.tune.mode = "max"
    c.tune.num_samples = 16
    c.tune.max_concurrent = 0  # as many as the CPUs (or GPUs) allow
    c.tune.scheduler = "asha"
    c.tune.asha.grace_period = 2
    c.tune.asha.reduction_factor = 3
    c.tune.resources_per_trial.cpus = 2
    if args.tiny or args.variant == "tiny":
        c.tune.params = (
            "optim.lr=loguniform(1e-4, 1e-2)",
            "train.batch_size=choice(8, 16)",
            "train.epochs=choice(1, 2)",
            "model.kwargs.num_blocks=choice(3, 4)",
            "model.kwargs.channels=choice(2, 4)",
            "model.kwargs.dropout=uniform(0.0, 0.5)",
            "optim.name=choice('adam', 'sgd')",
        )
        c.tune.num_samples = 4
        c.tune.asha.grace_period = 1
        c.tune.asha.reduction_factor = 2
        c.tune.resources_per_trial.cpus = 1
    return c
