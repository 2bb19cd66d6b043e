"""Plans a run from its data and device, records the plan, and applies it to the config.

``plan_for_config`` builds (or reuses) the store, takes the training cases' preprocessed shapes
and spacing (the target spacing is the fingerprint's where ``target_spacing_mm="auto"``:
``medjax.data.preprocess.fingerprint``) and plans with the measured train step. ``apply``
(``plan.auto=True``) writes the plan to ``<workdir>/plan_arch.json`` (reused when present, so a
resumed run keeps its architecture) and returns the config with the planned numbers, except
for keys the command line set: an explicit value always wins.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from medjax import distributed, errors
from medjax.plan import planner

PLAN_FILE = "plan_arch.json"
# The config keys a plan sets (an override of any of them on the command line wins).
PLANNED_KEYS = (
    "data.patch_size",
    "train.batch_size",
    "model.kwargs.depth",
    "model.kwargs.features",
    "model.kwargs.max_features",
    "model.kwargs.pool_strides",
    "model.kwargs.kernel_sizes",
)


def _num_data_devices(config: ml_collections.ConfigDict) -> int:
    return jax.device_count() if config.mesh.data == -1 else int(config.mesh.data)


def training_cases(
    config: ml_collections.ConfigDict,
) -> tuple[list[dict[str, Any]], list[float] | None]:
    """The store's training and validation cases (never the test split), building the store,
    and the spacing the store resampled them to (its resolved spec; None: not resampled to a
    spacing, or to a fixed ``target_size``)."""
    from medjax.data import pipeline, store

    data = distributed.primary_first(lambda: pipeline.prepare_data(config), "medjax-plan-data")
    seen, cases = set(), []
    for split in (config.data.train_split, config.data.val_split):
        for entry in data.splits.get(split, []):
            if entry["id"] not in seen:
                seen.add(entry["id"])
                cases.append(entry)
    if not cases:
        raise errors.DataError(f"No training case to plan from in {data.root}.")
    spec = store.load_manifest(data.store_dir)["spec"]
    target = spec.get("target_spacing_mm")
    if target is None or spec.get("target_size") is not None:  # a fixed size sets the spacing
        return cases, None
    return cases, [float(t) for t in target]


def plan_for_config(
    config: ml_collections.ConfigDict, overrides: Collection[str] = ()
) -> dict[str, Any]:
    """Plans patch, batch and UNet topology for ``config``'s data on this device.

    Args:
      config: the run's config (``model.name="unet"``; ``plan`` section for the budget).
      overrides: dotted config keys set explicitly (a set ``data.patch_size`` or
        ``train.batch_size`` is planned around, not replaced).

    Returns:
      The plan (``planner.plan_experiment``) plus ``features``, ``base_features``,
      ``num_cases`` and ``channels``.

    Raises:
      ConfigError: a model other than the UNet, or a budget nothing fits.
    """
    from medjax.plan import measure as measure_lib

    if config.model.name.lower() != "unet":
        raise errors.ConfigError(
            f"plan.auto=True plans the UNet; model.name={config.model.name!r}. Use "
            "model.name='unet' or plan.auto=False."
        )
    cases, target = training_cases(config)
    if target is not None:
        # nnU-Net plans at the target spacing itself (the stored cases' spacings differ from it
        # slightly: resampling keeps each case's physical extent).
        spacing = target
    else:
        spacings = [e["props"].get("spacing_mm") or [1.0] * len(e["shape"]) for e in cases]
        # Rounded like the fingerprint's target spacing: headers store float32, and nnU-Net's
        # "within 2x of the finest" test must not flip on 1.9999999969 vs 2.0 mm.
        spacing = np.round(np.median(np.asarray(spacings, np.float64), axis=0), 6).tolist()
    median_shape = np.median(np.asarray([e["shape"] for e in cases], np.float64), axis=0)
    channels = int(cases[0]["channels"])
    devices = _num_data_devices(config)
    patch = tuple(config.data.patch_size) if "data.patch_size" in overrides else None
    batch = None
    if "train.batch_size" in overrides:
        batch = max(1, int(config.train.batch_size) // devices)
    plan = planner.plan_experiment(
        spacing,
        median_shape.tolist(),
        len(cases),
        measure_lib.make_measure(config, channels),
        measure_lib.budget_bytes(float(config.plan.memory_gb)),
        min_batch_size=int(config.plan.min_batch_size),
        num_devices=devices,
        min_feature_map_size=int(config.plan.min_feature_map_size),
        patch_size=patch,
        batch_size=batch,
    )
    nd = len(plan["patch_size"])
    max_features = int(config.plan.max_features or planner.MAX_FEATURES[nd])
    base = int(config.plan.base_features)
    plan.update(
        features=list(planner.level_features(plan["depth"], base, max_features)),
        base_features=base,
        max_features=max_features,
        num_cases=len(cases),
        channels=channels,
        target_spacing_mm=config.data.preprocess.target_spacing_mm,
    )
    return plan


def write_plan(plan: Mapping[str, Any], workdir: str) -> str:
    """Writes ``<workdir>/plan_arch.json`` (process 0, atomically); returns its path."""
    path = os.path.join(workdir, PLAN_FILE)
    if distributed.is_main():
        os.makedirs(workdir, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(dict(plan), f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
    return path


def read_plan(workdir: str) -> dict[str, Any] | None:
    """``<workdir>/plan_arch.json``, or None when the run has none."""
    path = os.path.join(workdir, PLAN_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def with_plan(
    config: ml_collections.ConfigDict, plan: Mapping[str, Any], overrides: Collection[str] = ()
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the planned numbers, keeping every key in ``overrides``.

    An overridden ``model.kwargs.depth`` keeps the plan's first poolings and kernels (and the
    3s of a bottleneck); a depth beyond the plan's is an error.

    Raises:
      ConfigError: ``model.kwargs.depth`` set deeper than the plan allows.
    """
    out = config.copy_and_resolve_references()
    kwargs = config.model.kwargs.to_dict()
    depth = int(kwargs["depth"]) if "model.kwargs.depth" in overrides else plan["depth"]
    if depth > plan["depth"]:
        raise errors.ConfigError(
            f"model.kwargs.depth={depth}: the plan pools at most {plan['depth'] - 1} times "
            f"for patch {plan['patch_size']} (depth <= {plan['depth']})."
        )
    nd = len(plan["patch_size"])
    planned = {
        "depth": depth,
        "features": int(plan["base_features"]),
        "max_features": int(plan["max_features"]),
        "pool_strides": [list(p) for p in plan["pool_strides"][: depth - 1]],
        "kernel_sizes": [list(k) for k in plan["kernel_sizes"][: depth - 1]] + [[3] * nd],
    }
    for key, value in planned.items():
        if f"model.kwargs.{key}" not in overrides:
            kwargs[key] = value
    with out.unlocked():
        out.model.kwargs = ml_collections.ConfigDict(kwargs)
        if "data.patch_size" not in overrides:
            out.data.patch_size = tuple(int(p) for p in plan["patch_size"])
        if "train.batch_size" not in overrides:
            out.train.batch_size = int(plan["global_batch_size"])
    return out


def apply(
    config: ml_collections.ConfigDict, workdir: str, overrides: Collection[str] = ()
) -> ml_collections.ConfigDict:
    """``plan.auto=True``: the config with the run's plan (planned now or read back).

    The plan of a workdir is computed once and read back afterwards, so a resumed or evaluated
    run builds the same network whatever device it runs on.
    """
    plan = read_plan(workdir)
    if plan is None:
        plan = plan_for_config(config, overrides)
        write_plan(plan, workdir)
        logging.info("Planned %s", plan)
    return with_plan(config, plan, overrides)


def for_mode(
    config: ml_collections.ConfigDict, workdir: str, mode: str, argv: list[str]
) -> ml_collections.ConfigDict | None:
    """What ``launch.py`` does with planning in ``mode``.

    ``plan``: plans now, records ``<workdir>/plan_arch.json``, prints the plan, returns None.
    ``preprocess`` / ``cv_summary`` / ``predict`` / ``export``: the config unchanged (nothing
    is built, or the trained run's config already holds its plan). Any other mode
    with ``plan.auto``: ``apply`` (overrides read from ``argv``).
    """
    overrides = command_line_overrides(argv)
    if mode == "plan":
        plan = plan_for_config(config, overrides)
        path = write_plan(plan, workdir)
        if distributed.is_main():
            print(planner.describe(plan) + f"\nrecorded in {path}")
        return None
    if mode in ("preprocess", "cv_summary", "predict", "export") or not config.plan.auto:
        return config
    return apply(config, workdir, overrides)


def command_line_overrides(argv: list[str]) -> set[str]:
    """Dotted keys given as ``--config.a.b=v`` (or ``--config.a.b v``) in ``argv``."""
    keys = set()
    for arg in argv:
        if arg.startswith("--config."):
            keys.add(arg[len("--config.") :].split("=", 1)[0])
    return keys
