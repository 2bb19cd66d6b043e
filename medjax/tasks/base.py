"""The task contract in code: ``Task``, what evaluating a split yields (``EvalResult``), and the
two ways a task feeds the evaluation runner (``Batches``, ``Windows``).

A task owns a config's data, evaluation and outputs; the trainer and ``evaluate.runner`` never
switch on the task. Evaluation is split in two: the task says WHAT to evaluate and how to score
it (an ``Evaluation``: inputs plus an ``accumulate``/``finalize`` pair), the runner does the
HOW (batching, sharding, gathering across processes) once for every task. See the Tasks section
of ``docs/CONVENTIONS.md`` for a worked example of a new task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclasses.dataclass
class EvalResult:
    """Everything one evaluation of a split produced; identical on every process.

    Attributes:
      metrics: split-level scalars (logged as ``<split>/<name>``).
      per_case: one row per case (written as ``per_case.csv``).
      predictions: by case index (the position in the split): the predicted label map
        ``uint8[*spatial]`` (segmentation) or the class probabilities ``float32[K']``
        (classification); segmentation keeps them only when asked (they are large).
      extras: task-specific results, e.g. ``"confusion": int64[K, K]`` or ``"froc": FrocResult``.
    """

    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    per_case: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    predictions: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Batches:
    """Inputs evaluated whole, in fixed-size batches of one shape.

    Attributes:
      make: ``batch_size -> iterable of host batches``: dicts of numpy arrays with a leading
        axis of at most ``batch_size`` rows, always ``index int[n]`` (the case index); the same
        on every process. The runner pads each to ``batch_size`` rows and adds ``valid
        bool[B]`` (False on padding rows, whose ``index`` is -1); a batch that already has
        ``valid`` is taken as padded.
      fn: the eval function (a key of ``make_eval_fns``) applied as ``fn(state, batch)``.
      device_keys: the batch entries sent to the device (the rest stay on the host); a key
        missing from a batch is skipped, so unlabelled cases need no ``label``.
    """

    make: Callable[[int], Iterable[dict[str, np.ndarray]]]
    fn: str = "step"
    device_keys: tuple[str, ...] = ("image", "label", "valid")


@dataclasses.dataclass(frozen=True)
class Windows:
    """Cases of any size, each predicted whole by Gaussian-blended sliding windows.

    Attributes:
      cases: ``() -> iterable of (case index, image float32[*spatial, C])``.
      tile_size, num_classes, step_fraction, mirror_axes, blend: see
        ``evaluate.sliding_window.sliding_window_predict``.
      fn: the eval function applied as ``fn(state, windows float32[b, *tile, C]) -> logits``.
    """

    cases: Callable[[], Iterable[tuple[int, np.ndarray]]]
    tile_size: tuple[int, ...]
    num_classes: int
    step_fraction: float = 0.5
    mirror_axes: tuple[int, ...] = ()
    blend: str = "auto"
    fn: str = "logits"


class Evaluation(Protocol):
    """One pass over a split: inputs for the runner, and the scoring of its outputs.

    The runner calls ``accumulate(out, batch)`` once per batch, in order, on every process,
    with host (numpy) arrays: for ``Batches`` ``out`` is the eval function's output and
    ``batch`` the host batch; for ``Windows`` ``out = {"logits": float32[1, *spatial, K]}`` and
    ``batch = {"index": int32[1], "valid": bool[1]}`` (one case). Then ``finalize()`` once.
    """

    inputs: Batches | Windows

    def accumulate(self, out: dict[str, np.ndarray], batch: dict[str, np.ndarray]) -> None: ...

    def finalize(self) -> EvalResult: ...


@runtime_checkable
class Task(Protocol):
    """What the trainer needs of a task (registry ``tasks.<config.task>``).

    ``factory(config) -> Task`` is built once per process (process 0 first: it generates data
    and builds stores that the others then reuse).
    """

    channels: int  # input channels of the model
    num_train: int  # training examples per epoch

    def input_shape(self) -> tuple[int, ...]:
        """``(1, *spatial, C)``: what the model is initialised with."""
        ...

    def describe(self) -> str:
        """What ``--mode=preprocess`` prints."""
        ...

    def train_dataset(self, *, global_batch_size: int, seed: int) -> Any:
        """Endless Grain dataset of this process's rows of each global batch."""
        ...

    def make_eval_fns(self, loss_fn: Callable, precision: str) -> dict[str, Callable]:
        """Unjitted eval functions by name; the trainer jits them with the state and batch
        shardings, and ``Evaluation.inputs.fn`` names the one to use."""
        ...

    def evaluation(self, split: str, *, keep_predictions: bool = False) -> Evaluation:
        """A fresh accumulator for one pass over ``split`` (no device work here)."""
        ...

    def baseline(self, split: str) -> dict[str, float]:
        """A trivial model's metrics on ``split`` (logged once per run as a floor)."""
        ...

    def images(self, split: str, result: EvalResult, num: int) -> dict[str, np.ndarray]:
        """TensorBoard images ``uint8[H, W, 3]`` by tag (may be empty)."""
        ...

    def write_outputs(self, split: str, result: EvalResult, out_dir: str) -> None:
        """Task files of an evaluation (process 0 only; the trainer writes ``metrics.json``
        and ``per_case.csv``)."""
        ...
