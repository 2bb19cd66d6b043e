"""``--mode=export``: a self-contained bundle folder, and ``load_bundle`` to predict from it.

Layout of a bundle::

    model.jaxexport   the inference function serialised by ``jax.export`` (StableHLO):
                      ``(variables, image float32[b, *patch, C]) -> logits float32[b, *patch, K]``
                      with a symbolic batch size ``b``, lowered for CPU and CUDA where the
                      installed jax can (``metadata.json`` lists the platforms)
    weights.npz       the variables (params, batch-norm statistics), ``/``-joined keys
    plan.json         the run's preprocessing plan (``medjax.predict.plan``)
    labels.json       label values and names
    metadata.json     medjax / jax versions, platforms, the run's config, its checkpoint step and
                      that checkpoint's validation metrics
    postprocessing.json  the run's post-processing chosen on validation, when it has one
                      (``medjax.plan.postprocessing``); predicting from the bundle applies it
                      as predicting from the workdir does (``predict.postprocess.auto``)

A cross-validation folder (``data.fold=all``) exports as an **ensemble bundle**: one bundle per
fold in ``fold_<k>/`` (each carrying the cross-validation's post-processing) and
``ensemble.json`` listing them; ``--mode=predict --workdir=<it>`` predicts with the mean of the
folds' probabilities, as from the cross-validation folder itself.

``load_bundle(path)`` needs none of the config file, the store or the model code: it
deserialises the function, loads the weights and predicts through the same per-case path as a
workdir (``segment.predict_case``). ``log_model`` logs a bundle as the training run's MLflow
model (``--mode=export`` with ``log.mlflow=True``).
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

import medjax
from medjax import errors
from medjax.data import splits
from medjax.plan import postprocessing
from medjax.predict import model as model_lib

FUNCTION_FILE = "model.jaxexport"
WEIGHTS_FILE = "weights.npz"
METADATA_FILE = "metadata.json"
ENSEMBLE_FILE = "ensemble.json"
PLATFORMS = ("cpu", "cuda")


def _export(member: model_lib.Member) -> tuple[bytes, list[str]]:
    """Serialises ``member``'s logits function with a symbolic batch; returns (bytes, platforms)."""
    from jax import export

    from medjax.train import loop

    plan = member.plan
    logits = jax.jit(
        model_lib.make_logits_fn(loop.build_model(member.config), member.config.train.precision)
    )
    (batch,) = export.symbolic_shape("b")
    image = jax.ShapeDtypeStruct((batch, *plan["patch_size"], plan["channels"]), np.float32)
    variables = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), member.variables)
    try:
        exported = export.export(logits, platforms=PLATFORMS)(variables, image)
    except Exception as e:  # noqa: BLE001 - this jax cannot lower for every platform here
        logging.warning(
            "Export for %s failed (%s); exporting for this platform only.", PLATFORMS, e
        )
        exported = export.export(logits)(variables, image)
    return bytes(exported.serialize()), list(exported.platforms)


def export_bundle(
    workdir: str, output: str, *, checkpoint: str | int = "best", overwrite: bool = False
) -> str:
    """Writes the bundle of ``workdir``'s ``checkpoint`` to ``output`` (see the module docstring);
    a cross-validation folder gives an ensemble bundle of its folds.

    Raises:
      ConfigError: ``output`` exists and is not empty (without ``overwrite``).
      CheckpointError: the workdir (or a fold) has no checkpoint.
    """
    from medjax.predict import runner

    output = runner.check_output(output, overwrite)
    workdir = os.path.abspath(os.path.expanduser(workdir))
    folds = runner.fold_runs(workdir)
    tmp = f"{output.rstrip(os.sep)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if folds == [workdir]:
            _write_bundle(workdir, tmp, checkpoint)
        else:
            for fold in folds:
                _write_bundle(fold, os.path.join(tmp, os.path.basename(fold)), checkpoint)
            members = [os.path.basename(d) for d in folds]
            with open(os.path.join(tmp, ENSEMBLE_FILE), "w") as f:
                json.dump(
                    {"format": "medjax-ensemble-1", "members": members, "workdir": workdir},
                    f,
                    indent=1,
                )
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed export leaves nothing half-written
        raise
    if os.path.isdir(output):
        shutil.rmtree(output)
    os.replace(tmp, output)
    return output


def ensemble_members(path: str) -> list[str] | None:
    """The member bundle folders of an ensemble bundle (``ensemble.json``), else None.

    Member names come from the file: only ``fold_<k>`` folders inside ``path`` are accepted.

    Raises:
      CheckpointError: an unreadable ``ensemble.json`` or a member that is not a bundle there.
    """
    file = os.path.join(path, ENSEMBLE_FILE)
    if not os.path.isfile(file):
        return None
    try:
        with open(file) as f:
            names = list(json.load(f)["members"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise errors.CheckpointError(f"{file}: unreadable ensemble file ({e}).") from e
    members = []
    for name in names:
        if splits.fold_number(name) is None:
            raise errors.CheckpointError(f"{file}: member {name!r} is not a fold_<k> folder.")
        member = os.path.join(path, name)
        if not is_bundle(member):
            raise errors.CheckpointError(f"{file}: member {name} is missing or not a bundle.")
        members.append(member)
    return members


def _write_bundle(workdir: str, tmp: str, checkpoint: str | int) -> None:
    """One run's bundle files into the new folder ``tmp``."""
    from medjax.train import checkpoint as ckpt_lib

    member = model_lib.load_member(workdir, checkpoint)
    payload, platforms = _export(member)
    ckpt = ckpt_lib.Checkpointer(
        os.path.join(member.workdir, "ckpt"), member.config.ckpt, read_only=True
    )
    try:
        metrics = ckpt.metrics(member.step) or {}
    finally:
        ckpt.close()
    os.makedirs(tmp)
    with open(os.path.join(tmp, FUNCTION_FILE), "wb") as f:
        f.write(payload)
    flat = traverse_util.flatten_dict(jax.device_get(member.variables), sep="/")
    np.savez(os.path.join(tmp, WEIGHTS_FILE), **{k: np.asarray(v) for k, v in flat.items()})
    plan = member.plan
    post = postprocessing.find(member.workdir)
    files = {
        "plan.json": plan,
        "labels.json": {"label_values": plan["label_values"], "label_names": plan["label_names"]},
        METADATA_FILE: {
            "format": "medjax-bundle-1",
            "medjax_version": medjax.__version__,
            "jax_version": jax.__version__,
            "platforms": platforms,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "workdir": member.workdir,
            "step": member.step,
            "metrics": {k: float(v) for k, v in metrics.items()},
            "config": json.loads(member.config.to_json_best_effort()),
            "postprocessing": post,
        },
    }
    if post is not None:
        files[postprocessing.FILE] = postprocessing.load_path(post)
    for name, obj in files.items():
        with open(os.path.join(tmp, name), "w") as f:
            json.dump(obj, f, indent=1)


def is_bundle(path: str) -> bool:
    """Whether ``path`` is a bundle folder (rather than a workdir)."""
    return os.path.isfile(os.path.join(path, FUNCTION_FILE))


class Bundle(model_lib.Member):
    """A loaded bundle: a ``Member`` (``segment.predict_case`` and the runner take it) that
    also predicts by itself."""

    def predict_volume(self, image: Any, **kwargs: Any) -> Any:
        """``segment.predict_case([self], image, **kwargs)``: a ``CaseResult`` on the input's
        grid for a ``Volume`` (or a path ``read_volume`` reads)."""
        from medjax.predict import segment

        if isinstance(image, str | os.PathLike):
            image = medjax.read_volume(image)
        return segment.predict_case([self], image, **kwargs)

    def predict(self, input_path: str, output: str, **options: Any) -> dict[str, Any]:
        """Predicts a file or folder into ``output`` like ``--mode=predict`` (``options``: the
        keys of the config's ``predict`` section, e.g. ``save_probabilities=True``)."""
        from medjax.predict import runner

        pcfg = runner.default_options()
        pcfg.update(dict(options, input=str(input_path), output=str(output)))
        out = runner.check_output(pcfg.output, bool(pcfg.overwrite))
        os.makedirs(out, exist_ok=True)
        return runner.run_segmentation([self], pcfg, out)


def load_bundle(path: str) -> Bundle:
    """A bundle as a ``Member`` that ``segment.predict_case`` and the predict runner accept.

    The member's ``config`` holds only what the runner reads (the model name); the function
    runs on the default device, un-sharded.

    Raises:
      CheckpointError: ``path`` is not a bundle, or its function was not exported for this
        platform (the message lists the platforms it has).
    """
    from jax import export

    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isfile(os.path.join(path, ENSEMBLE_FILE)):
        raise errors.CheckpointError(
            f"{path}: an ensemble bundle of {len(ensemble_members(path))} folds; load each "
            "fold_<k> bundle, or predict with --mode=predict --workdir=<it> (their mean)."
        )
    if not is_bundle(path):
        raise errors.CheckpointError(f"{path}: not a medjax bundle (no {FUNCTION_FILE}).")
    with open(os.path.join(path, FUNCTION_FILE), "rb") as f:
        exported = export.deserialize(bytearray(f.read()))
    platform = jax.devices()[0].platform
    platform = "cuda" if platform == "gpu" else platform
    if platform not in exported.platforms:
        raise errors.CheckpointError(
            f"{path}: exported for {list(exported.platforms)}, not for this {platform} device; "
            "export again on a machine whose jax can lower for it."
        )
    with np.load(os.path.join(path, WEIGHTS_FILE)) as z:
        variables = traverse_util.unflatten_dict({k: z[k] for k in z.files}, sep="/")
    with open(os.path.join(path, "plan.json")) as f:
        plan = json.load(f)
    with open(os.path.join(path, METADATA_FILE)) as f:
        metadata = json.load(f)
    device_vars = jax.device_put(variables)
    config = ml_collections.ConfigDict(
        {"model": {"name": plan["model"]["name"]}, "bundle": metadata_summary(metadata)}
    )
    return Bundle(
        workdir=path,
        config=config,
        plan=plan,
        step=int(metadata.get("step", -1)),
        variables=variables,
        logits=lambda x: exported.call(device_vars, x),
        mesh=None,
    )


def metadata_summary(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The bundle's versions, platforms and step (without the full config)."""
    keys = ("medjax_version", "jax_version", "platforms", "step")
    return {k: metadata[k] for k in keys if k in metadata}


def example_shapes(plan: Mapping[str, Any]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """One example's input and output shapes of the exported function: ``(*patch, C)`` and
    ``(*patch, K)`` for segmentation, ``(K,)`` for classification and LUNA runs."""
    k = int(plan["num_classes"])
    patch = tuple(int(p) for p in plan["patch_size"])
    out = (*patch, k) if plan["task"] == "segmentation" else (k,)
    return (*patch, int(plan["channels"])), out


def log_model(workdir: str, bundle_dir: str, config: ml_collections.ConfigDict) -> None:
    """Logs the bundle as the MLflow model of ``workdir``'s training run (``log.mlflow=True``).

    The run is the one in ``<workdir>/tracking.json`` when its tracking URI is this config's
    (``medjax.tracking.mlflow_backend``), else a new one; the model is a pyfunc with the tensor
    signature ``float32[b, *input] -> float32[b, *output]`` (``example_shapes``). Only MLflow:
    the other trackers have no models.
    """
    from medjax.train import metric_writer

    if ensemble_members(bundle_dir) is not None:
        logging.warning("%s: an ensemble bundle is not logged as an MLflow model.", bundle_dir)
        return
    with open(os.path.join(bundle_dir, "plan.json")) as f:
        input_shape, output_shape = example_shapes(json.load(f))
    only_mlflow = config.copy_and_resolve_references()
    with only_mlflow.unlocked():
        only_mlflow.log.wandb = False
    writer = metric_writer.MetricWriter(workdir, only_mlflow)
    try:
        writer.write_model(bundle_dir, input_shape, output_shape)
    finally:
        writer.close()
