"""The preprocessing plan a run was trained with, recorded in its workdir.

``record_plan(task, config, workdir)`` writes ``<workdir>/plan.json`` when training starts: the
store's *resolved* preprocessing spec (``"auto"`` spacing and CT window/statistics already
numbers from the training fingerprint), the patch size, channels, classes and the inference
settings. Prediction reads it back (``load_plan``) and never re-plans from the new data, so new
cases see exactly the normalisation the model was trained on, even after the store is deleted
[NN: nnU-Net's plans.json travels with the trained model the same way].

Runs trained before plan.json existed are reconstructed from ``config.json`` plus the store's
manifest, while the store still exists.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from medjax import errors

PLAN_FILE = "plan.json"
PLAN_VERSION = 1


def _num_classes(config: ml_collections.ConfigDict) -> int:
    from medjax.models import spec as model_spec

    return model_spec.num_classes(config)


def label_names(num_classes: int) -> list[str]:
    """Default names of the label values: index ``k`` names label value ``k``."""
    if num_classes <= 1:
        return ["background", "foreground"]
    return ["background"] + [f"class {k}" for k in range(1, num_classes)]


def make_plan(
    config: ml_collections.ConfigDict,
    spec: Mapping[str, Any] | None,
    channels: int | None,
    *,
    store_dir: str = "",
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """The plan of ``config`` with the store's resolved ``spec`` (JSON-able dict).

    Args:
      config: the run's config.
      spec: the resolved preprocessing spec (``manifest["spec"]``), or None for tasks without a
        segmentation store (only the model and task are recorded then).
      channels: input channels the model was trained with.
      store_dir: where the spec came from (informative only).
      class_names: a classification run's class names (index ``k`` names class ``k``).
    """
    k = _num_classes(config)
    # K == 1 is a sigmoid head: label values 0 and 1; K > 1 softmax: label value == class index.
    values = [0, 1] if k == 1 else list(range(k))
    from medjax.metrics import regions as region_lib

    regions = region_lib.parse(config.data.get("regions", ()))
    if regions:  # a sigmoid per label region, painted into these values (metrics.regions)
        values = [0, *region_lib.region_labels(regions)]
        class_names = class_names or ["background"] + [f"class {v}" for v in values[1:]]
    return {
        "version": PLAN_VERSION,
        "task": str(config.task),
        "model": {"name": str(config.model.name), "kwargs": config.model.kwargs.to_dict()},
        "spec": json.loads(json.dumps(dict(spec), default=list)) if spec is not None else None,
        "patch_size": [int(p) for p in config.data.patch_size],
        "channels": None if channels is None else int(channels),
        "num_classes": k,
        "label_values": values,
        "regions": [list(r) for r in regions],
        "label_names": list(class_names) if class_names else label_names(k),
        "inference": {
            "step_fraction": float(config.eval.step_fraction),
            "mirror_axes": [int(a) for a in config.eval.mirror_axes],
            "batch_size": int(config.eval.batch_size),
            "blend": str(config.eval.get("blend", "auto")),
            "precision": str(config.train.precision),
        },
        "store_dir": store_dir,
    }


def record_plan(task: Any, config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Writes ``<workdir>/plan.json`` for a task built from ``config``; returns the plan.

    Segmentation tasks record their store's resolved spec; other tasks (LUNA, classification)
    the model and task only.
    """
    from medjax.data import store

    data = getattr(task, "data", None)
    store_dir = getattr(data, "store_dir", "") or ""
    spec = None
    if store_dir and os.path.exists(os.path.join(store_dir, "manifest.json")):
        spec = store.load_manifest(store_dir)["spec"]
    names = getattr(task, "class_names", None)
    plan = make_plan(
        config,
        spec,
        getattr(task, "channels", None),
        store_dir=store_dir,
        class_names=list(names) if names else None,
    )
    if plan["task"] == "luna" and getattr(task, "size", None):
        # LUNA feeds fixed cutouts around candidates, HU clipped and scaled (tasks/luna.py).
        plan["patch_size"] = [int(v) for v in task.size]
        plan["luna"] = {
            "cutout_size_vox": [int(v) for v in task.size],
            "hu_clip": [-1000, 1000],
            "hu_scale": 1.0 / 1000.0,
            "label_mode": str(config.data.luna.label_mode),
        }
    os.makedirs(workdir, exist_ok=True)
    tmp = os.path.join(workdir, f".{PLAN_FILE}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(plan, f, indent=1)
    os.replace(tmp, os.path.join(workdir, PLAN_FILE))
    return plan


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """``<workdir>/config.json`` as a ConfigDict (lists where the run had tuples).

    Raises:
      CheckpointError: the workdir has no config.json (not a medjax run folder).
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise errors.CheckpointError(
            f"{workdir}: no config.json; not a medjax run folder (train one with --mode=train)."
        )
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def _reconstruct(workdir: str) -> dict[str, Any]:
    """The plan of a run trained before plan.json, from config.json and its store's manifest."""
    from medjax.data import pipeline, store

    config = load_run_config(workdir)
    spec = config.data.preprocess.to_dict()
    root = (
        os.path.abspath(os.path.expanduser(config.data.root))
        if config.data.root
        else pipeline.data_root(config)  # built-in data: regenerated deterministically if gone
    )
    store_dir = config.data.store_dir or os.path.join(
        pipeline.synthetic.cache_dir(),
        "store",
        f"{os.path.basename(root)}-{store.spec_hash([root, spec])}",
    )
    if not os.path.exists(os.path.join(store_dir, "manifest.json")):
        raise errors.DataError(
            f"{workdir} has no {PLAN_FILE} (trained before plans were recorded) and its store "
            f"{store_dir} is gone: rebuild it with `--mode=preprocess` and the run's config, "
            "then predict again."
        )
    manifest = store.load_manifest(store_dir)
    channels = {e["channels"] for e in manifest["cases"]}
    return make_plan(
        config, manifest["spec"], channels.pop() if channels else None, store_dir=store_dir
    )


def load_plan(workdir: str) -> dict[str, Any]:
    """The run's plan: ``<workdir>/plan.json``, or reconstructed for older runs.

    Raises:
      CheckpointError: not a run folder; DataError: an old run whose store is gone.
    """
    path = os.path.join(workdir, PLAN_FILE)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return _reconstruct(workdir)
