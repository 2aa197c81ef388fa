"""Evaluation: every example of a split exactly once -> logits, features and exact metrics.

The trainer (periodic evaluation), the export (the best checkpoint's outputs) and so fusion all
go through `predict_split`, so every number about a split is computed one way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from cer_jax import steps
from cer_jax.data import pipeline
from cer_jax.metrics import classification_metrics

EvalFn = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]


def predict_split(
    eval_fn: EvalFn,
    state: Any,
    config: ml_collections.ConfigDict,
    info: pipeline.DatasetInfo,
    split: str,
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """{"logits", "features", "loss", "label", "file_name"} over every example of `split`."""
    batches = pipeline.eval_iterator(
        config, info, split, global_batch_size=config.eval.global_batch_size
    )
    try:
        return steps.run_eval(eval_fn, state, batches, mesh)
    finally:
        batches.close()


def scores(outputs: dict[str, np.ndarray], info: pipeline.DatasetInfo) -> dict[str, Any]:
    """classification_metrics of `predict_split`'s outputs, plus their mean loss."""
    result = classification_metrics(
        outputs["label"], outputs["logits"].argmax(-1), info.num_classes, info.class_names
    )
    result["loss"] = float(outputs["loss"].mean())
    return result

