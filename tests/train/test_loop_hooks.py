"""The flat loop's cadences (every one in steps) and early stopping's state in the checkpoint:
a resumed run stops at the same step as an uninterrupted one (issue 14)."""

import json
import os

from medjax.testing import configs
from medjax.train import hooks, loop


def test_cadences_fire_at_the_steps_the_epoch_settings_name():
    c = configs.tiny_unet(train__epochs=6, train__log_every_steps=3, train__val_every=2)
    c.ckpt.every_epochs, c.log.images_every, c.train.profile_steps = 4, 3, (2, 5)
    cad = hooks.Cadences.from_config(c, steps_per_epoch=4, total_steps=24)
    fired = {k: [s for s in range(1, 25) if getattr(cad, k)(s)] for k in ("log", "validate")}
    assert fired["log"] == [3, 4, 6, 8, 9, 12, 15, 16, 18, 20, 21, 24]
    assert fired["validate"] == [8, 16, 24]
    assert [s for s in range(1, 25) if cad.checkpoint(s)] == [16, 24]
    assert [s for s in range(1, 25) if cad.images(s)] == [12, 24]
    assert [s for s in range(1, 25) if cad.epoch_end(s)] == [4, 8, 12, 16, 20, 24]
    assert cad.profile == (2, 5)


def _config(epochs):
    c = configs.tiny_unet(train__epochs=epochs, train__steps_per_epoch=1)
    c.log.num_images = 0
    # min_delta far above any loss change: only the first validation improves, so the stop
    # does not depend on the (float) losses: e1 best, e2 bad (1), e3 bad (2) -> stop at step 3.
    c.train.early_stopping.update(monitor="val/loss", mode="min", patience=2, min_delta=100.0)
    return c


def _val_steps(workdir):
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    return [x["step"] for x in lines if "val/dice" in x]


def test_resumed_run_stops_early_at_the_same_step(tmp_path):
    straight = loop.train_and_evaluate(_config(5), str(tmp_path / "straight"))
    assert straight["final_step"] == 3
    resumed_dir = str(tmp_path / "resumed")
    assert loop.train_and_evaluate(_config(2), resumed_dir)["final_step"] == 2  # 1 bad so far
    # Without the saved state the resumed run would count anew: e3 best ... stop at step 5.
    assert loop.train_and_evaluate(_config(5), resumed_dir)["final_step"] == 3
    assert _val_steps(resumed_dir) == [1, 2, 3]
    # Launched again, the stopped run stays stopped.
    assert loop.train_and_evaluate(_config(5), resumed_dir)["final_step"] == 3
    assert _val_steps(resumed_dir) == [1, 2, 3]
