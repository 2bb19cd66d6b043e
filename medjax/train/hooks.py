"""What the flat training loop does besides stepping: cadences in steps, validation hooks.

Every cadence of the config (epochs, ``log_every_steps``, ``val_every``, ...) is converted to
steps once (``Cadences.from_config``); the loop then asks ``cadences.<action>(step)`` after
each step. The validation hooks (reduce-on-plateau, early stopping) are small objects with
state that travels with the checkpoint: plateau's in the optimiser state, early stopping's in
the checkpoint's metrics (``state_dict`` / ``load_state_dict``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

import jax
import ml_collections

from medjax import distributed, errors
from medjax import progress as progress_lib
from medjax.train import optim


@dataclasses.dataclass(frozen=True)
class Every:
    """Fires at every multiple of any of ``periods`` (periods <= 0 never fire) and at ``last``."""

    periods: tuple[int, ...]
    last: int

    def __call__(self, step: int) -> bool:
        return step == self.last or any(p > 0 and step % p == 0 for p in self.periods)


NEVER = Every((), -1)


@dataclasses.dataclass(frozen=True)
class Cadences:
    """The loop's periodic actions, in steps (``step`` = steps done so far, 1-based)."""

    steps_per_epoch: int
    total_steps: int
    log: Every
    epoch_end: Every
    validate: Every
    images: Every  # consulted at validation steps: keep that validation's predictions
    checkpoint: Every
    profile: tuple[int, ...]  # (start, stop) or ()

    @classmethod
    def from_config(
        cls, config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
    ) -> Cadences:
        """Converts the config's epoch and step cadences to steps, once."""
        spe, last = steps_per_epoch, total_steps
        images = NEVER
        if config.log.num_images and config.log.images_every > 0:
            images = Every((config.log.images_every * spe,), last)
        return cls(
            steps_per_epoch=spe,
            total_steps=last,
            # Logged every log_every_steps and at the end of each epoch.
            log=Every((config.train.log_every_steps, spe), last),
            epoch_end=Every((spe,), last),
            validate=Every((config.train.val_every * spe,), last),
            images=images,
            checkpoint=Every((config.ckpt.every_epochs * spe,), last),
            profile=profile_window(config.train.profile_steps, last),
        )


def profile_window(steps: Any, total_steps: int) -> tuple[int, ...]:
    """``train.profile_steps`` as ``(start, stop)`` steps to trace, or ``()`` for none."""
    window = tuple(steps or ())
    if window and not (
        len(window) == 2
        and all(isinstance(s, int) for s in window)
        and 0 <= window[0] < window[1] <= total_steps
    ):
        raise errors.ConfigError(
            f"train.profile_steps={window}: expected (start, stop) steps with "
            f"0 <= start < stop <= {total_steps} (the run's last step), or () for none."
        )
    return window


class Plateau:
    """Reduce-on-plateau: feeds each validation to the tracker in the optimiser state.

    The tracker is four replicated scalars: it is fetched, stepped on the host by the pure
    ``optim.update_plateau`` and put back with the same sharding (outside the step loop). Its
    state is the optimiser state's, so checkpoints carry it with nothing more to do.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.cfg, self.base_lr = config.schedule.plateau, config.optim.lr

    def __call__(self, state: Any, val_metrics: dict[str, float]) -> Any:
        """The state after one validation (``val_metrics``: the ``val/...`` metrics)."""
        if self.cfg.monitor not in val_metrics:
            raise errors.ConfigError(
                f"schedule.plateau.monitor={self.cfg.monitor!r} is not a validation metric; "
                f"these are: {sorted(val_metrics)}."
            )
        old = optim.plateau_tracker(state.opt_state)
        new = optim.update_plateau(
            jax.device_get(old), val_metrics[self.cfg.monitor], self.cfg, self.base_lr
        )
        new = optim.PlateauState(
            *(distributed.global_from_host(n, o.sharding) for n, o in zip(new, old, strict=True))
        )
        return state.replace(opt_state=optim.replace_plateau_tracker(state.opt_state, new))

    def state_dict(self) -> dict[str, float]:
        return {}  # lives in the optimiser state

    def load_state_dict(self, saved: dict[str, float]) -> None:
        del saved


class EarlyStopping:
    """Stops when ``monitor`` has not improved by ``min_delta`` for ``patience`` validations.

    Its state (best value, bad validations) is saved with every checkpoint as the metrics
    ``early_stopping/best`` and ``early_stopping/num_bad``, so a resumed run stops where an
    uninterrupted one would.
    """

    KEYS = ("early_stopping/best", "early_stopping/num_bad")

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.monitor, self.mode = cfg.monitor, cfg.mode
        self.patience, self.min_delta = cfg.patience, cfg.min_delta
        self.best: float | None = None
        self.bad = 0
        self.stop = False

    @property
    def enabled(self) -> bool:
        return bool(self.monitor and self.patience)

    def should_stop(self, metrics: dict[str, float]) -> bool:
        """Feeds one validation's metrics; True once ``patience`` bad validations in a row."""
        if not self.enabled or self.monitor not in metrics:
            return False
        value = metrics[self.monitor]
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.bad = value, 0
            return False
        self.bad += 1
        self.stop = self.bad >= self.patience
        return self.stop

    def __call__(self, state: Any, val_metrics: dict[str, float]) -> Any:
        """The hook form: records the validation, leaves the state as it is."""
        self.should_stop(val_metrics)
        return state

    def state_dict(self) -> dict[str, float]:
        """Floats to save with the checkpoint's metrics (empty while nothing is tracked)."""
        if not self.enabled or self.best is None:
            return {}
        return dict(zip(self.KEYS, (float(self.best), float(self.bad)), strict=True))

    def load_state_dict(self, saved: dict[str, float] | None) -> None:
        """Restores what ``state_dict`` saved (a checkpoint's metrics; missing keys: fresh)."""
        if saved and all(k in saved for k in self.KEYS) and math.isfinite(saved[self.KEYS[0]]):
            self.best, self.bad = float(saved[self.KEYS[0]]), int(saved[self.KEYS[1]])
            self.stop = self.bad >= self.patience  # the run had stopped: it stays stopped


def validation_hooks(config: ml_collections.ConfigDict) -> list[Plateau | EarlyStopping]:
    """The hooks fed each validation, in order: plateau first (before the checkpoint that
    carries its tracker), then early stopping."""
    hooks: list[Plateau | EarlyStopping] = []
    if config.schedule.name == "plateau":
        hooks.append(Plateau(config))
    hooks.append(EarlyStopping(config.train.early_stopping))
    return hooks


def say(message: str) -> None:
    """Progress for the user: printed by the main process only (``medjax.progress.say``)."""
    progress_lib.say(message)


def progress(epoch: int, epochs: int, done: int, total: int, elapsed: float, loss: float) -> None:
    """The one-line progress bar of the current epoch (main process only)."""
    if not distributed.is_main():
        return
    rate = done / max(elapsed, 1e-9)
    eta = (total - done) / max(rate, 1e-9)
    bar = "#" * int(20 * done / total) + "." * (20 - int(20 * done / total))
    print(
        f"\repoch {epoch + 1}/{epochs} [{bar}] {done}/{total} {rate:.2f} steps/s "
        f"ETA {eta:.0f}s loss {loss:.4f}",
        end="",
        file=sys.stderr,
        flush=True,
    )
