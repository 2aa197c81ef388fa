"""Wall time of a full ensemble run estimated from measured step rates (a documented model).

For each member, the trainer's full recipe on RAF-DB compound-sized data (3,162 train images:
train_fit ~2,846, validation ~316, test 792; shared/spec/datasets.md and the ~10 % validation
hold-out of tfds_rafdb) costs

    compile (train + eval programs)
  + steps / train steps per s         (steps: training.num_steps, else epochs x (train_fit //
                                       batch) rounded up, as the trainer counts them; pipelined
                                       step rate, or the input pipeline's if slower)
  + evaluations x (validation + test) images / eval images per s   (one every
                                       training.eval_every_steps, else every epoch, and one
                                       at the last step, as the trainer evaluates)
  + (train_fit + validation + test) images / eval images per s     (the final export)

where each split's images are counted padded to whole batches of the recipe's batch size, as
the trainer evaluates them (validation 316 is 384 images at batch 96).

Not counted: process start, dataset preparation (once per machine), checkpoint writes (Orbax
saves asynchronously), host gaps of the eval loop's gathering, and the fusion step
(seconds on CPU). The members are trained one after the other on one accelerator.
"""

from __future__ import annotations

import math
from typing import Any

TRAIN_FIT, VALIDATION, TEST = 2846, 316, 792


def member_seconds(result: dict[str, Any], *, num_epochs: float, global_batch_size: int,
                   num_steps: int | None = None,
                   eval_every_steps: int | None = None) -> dict[str, float]:
    """`num_steps` / `eval_every_steps`: the config's training.num_steps (which wins over
    `num_epochs`, as in the trainer) and training.eval_every_steps (None: every epoch)."""
    steps_per_epoch = TRAIN_FIT // global_batch_size
    steps = int(num_steps or math.ceil(round(num_epochs * steps_per_epoch, 9)))
    eval_every = eval_every_steps or steps_per_epoch
    evaluations = math.ceil(steps / eval_every)  # each boundary, and the last step
    train_rate = result.get("training_images_per_s") or result["train_images_per_s_pipelined"]
    eval_rate = result["eval_images_per_s_pipelined"]

    def padded(images: int) -> int:  # the eval batches' padding costs as much as images
        return math.ceil(images / global_batch_size) * global_batch_size

    held_out = padded(VALIDATION) + padded(TEST)
    parts = {
        "compile_s": result["compile_train_s"] + result["compile_eval_s"],
        "train_s": steps * global_batch_size / train_rate,
        "eval_s": (evaluations * held_out + padded(TRAIN_FIT) + held_out) / eval_rate,
    }
    parts["total_s"] = sum(parts.values())
    parts["steps"] = steps
    return parts


def ensemble_estimate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per member (by result "spec") and in total; each result carries its recipe's
    "num_epochs" and "recipe_batch_size" (measured at the benchmark's batch size)."""
    members = {r["spec"]: member_seconds(r, num_epochs=r["num_epochs"],
                                         global_batch_size=r["recipe_batch_size"],
                                         num_steps=r.get("num_steps"),
                                         eval_every_steps=r.get("eval_every_steps"))
               for r in results}
    total = sum(m["total_s"] for m in members.values())
    # The largest part: compile, train, eval, or input where a member's training runs at the
    # input pipeline's rate (--input slower than its step): then a faster step saves nothing.
    dominant: dict[str, float] = {}
    for r in results:
        m = members[r["spec"]]
        bound_by_input = r.get("input_bound", {}).get("bound_by") == "input"
        for key in ("compile_s", "train_s", "eval_s"):
            part = "input" if key == "train_s" and bound_by_input else key.removesuffix("_s")
            dominant[part] = dominant.get(part, 0.0) + m[key]
    return {"members": members, "total_s": total,
            "dominated_by": max(dominant, key=dominant.get)}
