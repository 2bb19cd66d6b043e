"""LUNA16 malignancy (malignant vs benign nodules), fine-tuned from a nodule classifier run.

    python launch.py --config=configs/luna.py --workdir=runs/luna
    python launch.py --config=configs/luna_malignancy.py --config.init_from=runs/luna \
        --workdir=runs/luna_malignancy

``init_from`` copies every matching weight of the nodule run's best checkpoint; the head is kept
fresh where its shape differs (``label_mode=malignancy3`` has 3 classes). ``optim.freeze`` keeps
all but the last blocks frozen (a regex over parameter paths; empty trains everything).
"""

from configs import luna
from medjax import config_lib


def get_config(arg: str | None = None):
    args = config_lib.parse_arg(arg, variant="default", tiny=False, classes=2)
    c = luna.get_config("tiny" if args.tiny or args.variant == "tiny" else None)
    c.data.luna.label_mode = "malignancy2" if args.classes == 2 else "malignancy3"
    c.model.num_classes = args.classes
    c.data.luna.epoch_length = c.data.luna.epoch_length // 4 or 8
    # Fine-tune the last two conv blocks and the head; freeze the input norm and blocks 1-2.
    c.optim.freeze = r"^(tail_batchnorm|block1|block2)/"
    c.optim.lr = 3e-4
    c.ckpt.monitor = "val/auc"
    return c
