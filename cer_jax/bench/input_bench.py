"""Images/s of the real training input pipeline alone, and whether it or the step bounds a run.

The pipeline is the trainer's (`cer_jax.data.pipeline.train_iterator`) with the model's own
`input` config (its full training augmentation at its input size), reading the built-in
synthetic RAF-DB (100x100 aligned faces, like RAF-DB) from the cache after the first epoch's
decode; batches are pulled as numpy arrays, as the trainer pulls them, and nothing else runs.
TensorFlow is imported here only.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import ml_collections


def host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def synthetic_sizes(num_train_images: int) -> tuple[int, int]:
    """(train, test) images of the synthetic RAF-DB compound tree that --input draws."""
    return num_train_images, max(60, num_train_images // 10)


def check_sizes(num_train_images: int) -> None:
    """Before any model is timed: a tree too small for every class is one line."""
    from cer_jax import synthetic

    # The message names the flag (it was "5 images cannot give ...", no flag said).
    synthetic.check_sizes("compound", *synthetic_sizes(num_train_images),
                          keys={"train": "--input_num_train_images"})


def bench_input(config: ml_collections.ConfigDict, *, batch_size: int, batches: int,
                cache_dir: str, num_train_images: int = 600, warmup: int = 3
                ) -> dict[str, Any]:
    """Images/s of `train_iterator` on the synthetic dataset (config's input settings)."""
    from cer_jax.data import pipeline

    config = ml_collections.ConfigDict(config.to_dict())
    config.dataset.synthetic = True
    config.dataset.cache_dir = cache_dir
    (config.dataset.synthetic_num_train_images,
     config.dataset.synthetic_num_test_images) = synthetic_sizes(num_train_images)
    start = time.perf_counter()
    info = pipeline.get_dataset_info(config)
    it = pipeline.train_iterator(config, info, global_batch_size=batch_size, seed=0)
    for _ in range(warmup):  # the first batch also decodes the split into the cache
        next(it)
    prepare = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    elapsed = time.perf_counter() - start
    cores = host_cores()
    rate = batches * batch_size / elapsed
    return {"images_per_s": rate, "images_per_s_per_core": rate / cores, "host_cores": cores,
            "batch_size": batch_size, "batches": batches, "prepare_s": prepare}


def bound(step_images_per_s: float, input_result: dict[str, Any]) -> dict[str, Any]:
    """Which side bounds training, and the host cores that keep the step fed."""
    per_core = input_result["images_per_s_per_core"]
    needed = math.ceil(step_images_per_s / per_core) if per_core > 0 else None
    limited_by = "input" if input_result["images_per_s"] < step_images_per_s else "step"
    return {"bound_by": limited_by, "host_cores_needed": needed,
            "training_images_per_s": min(step_images_per_s, input_result["images_per_s"])}
