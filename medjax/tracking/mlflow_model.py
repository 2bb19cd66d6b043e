"""An exported medjax bundle (``--mode=export``) as an MLflow pyfunc model with a signature.

Imported only when a bundle is logged (it imports MLflow). The model's ``predict`` takes a batch
of patches ``float32[b, *patch, C]`` and returns logits ``float32[b, *patch, K]`` (or
``[b, K]``) through ``medjax.predict.bundle.load_bundle``: the bundle folder is the model's one
artifact, so the model serves without the run's config or code beyond medjax itself.
"""

from __future__ import annotations

import os
from typing import Any

import mlflow.pyfunc
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec


class BundleModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: loads the bundle artifact, predicts logits of a batch of patches."""

    def load_context(self, context: Any) -> None:
        from medjax.predict import bundle

        self.bundle = bundle.load_bundle(context.artifacts["bundle"])

    # Untyped on purpose: MLflow reads type hints on ``predict`` as a (list-based) schema and
    # warns; the tensor signature is given explicitly instead.
    def predict(self, context, model_input, params=None):
        """``float32[b, *patch, C] -> logits float32[b, *patch, K]``."""
        return np.asarray(self.bundle.logits(np.asarray(model_input, np.float32)))


def signature(input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> ModelSignature:
    """``float32[-1, *input_shape] -> float32[-1, *output_shape]`` (any batch size)."""
    f32 = np.dtype(np.float32)
    return ModelSignature(
        inputs=Schema([TensorSpec(f32, (-1, *input_shape), "image")]),
        outputs=Schema([TensorSpec(f32, (-1, *output_shape), "logits")]),
    )


def save(
    bundle_dir: str, path: str, input_shape: tuple[int, ...], output_shape: tuple[int, ...]
) -> str:
    """Writes the pyfunc model folder (``MLmodel`` with the signature + the bundle) to ``path``."""
    mlflow.pyfunc.save_model(
        path,
        python_model=BundleModel(),
        artifacts={"bundle": os.path.abspath(bundle_dir)},
        signature=signature(input_shape, output_shape),
        pip_requirements=["medjax"],  # not inferred: that would import and run the model
    )
    return path
