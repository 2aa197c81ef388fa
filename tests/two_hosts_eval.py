"""One of two processes (two CPU devices each) that evaluate a split together through the real
eval step and `steps.run_eval`, on a mesh that interleaves the hosts' devices (as a TPU slice's
topology order may): the rows must still carry their own file names, and names far longer than
any fixed width must come back whole. Started by tests/test_multiprocess.py; writes what it got
to <out>/<process>.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib

SIZE = 12  # examples; each host's 6 fill 2 local batches of 4, the last one padded


def file_name(index: int) -> str:
    """Long, multi-byte names; the last few share a 700-byte prefix, so a cut would merge them."""
    if index >= SIZE - 3:
        return "gs://bucket/" + "deep/" * 140 + f"é-{index}.jpg"
    return "img/" + "ü" * (40 * index) + f"{index}.jpg"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--coordinator_address")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)
    args = parser.parse_args()

    import jax

    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax.sharding import Mesh

    from cer_jax import sharding, steps, train_state
    from cer_jax.data import pipeline
    from cer_jax.models import ModelOutput

    class ExampleId(nnx.Module):
        """Logits: the one-hot of the example id each image holds, so a row names its example."""

        def __init__(self):
            self.scale = nnx.Param(jnp.ones(()))

        def __call__(self, images, train=False):
            logits = jax.nn.one_hot(images[:, 0, 0, 0].astype(jnp.int32), SIZE) * self.scale
            return ModelOutput(logits, images[:, 0, 0, :], (logits,), (1.0,))

    by_process = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    per_process = [[d for d in by_process if d.process_index == p] for p in range(2)]
    interleaved = [per_process[p][k] for k in range(2) for p in range(2)]  # p0 p1 p0 p1
    mesh = Mesh(np.asarray(interleaved), (sharding.DATA_AXIS,))
    graphdef, params, rest = train_state.split_model(ExampleId())
    state = sharding.replicate({"params": params, "rest": rest}, mesh)
    eval_fn = steps.jit_eval_step(graphdef, mesh, num_classes=SIZE)

    start, end = pipeline.host_slice(SIZE, 2, jax.process_index())
    rows = list(range(start, end)) + [-1] * (8 - (end - start))  # -1: padding, as eval_iterator
    batches = []
    for first in (0, 4):
        index = np.asarray(rows[first:first + 4], np.int32)
        batches.append({
            "image": np.broadcast_to(index[:, None, None, None], (4, 2, 2, 3)).astype(np.float32),
            "label": np.maximum(index, 0) % 7,
            "mask": index >= 0,
            "index": index,
            "file_name": np.asarray([file_name(i) if i >= 0 else "" for i in index], object),
        })
    out = steps.run_eval(eval_fn, state, batches, mesh)
    result = {
        "mesh": [d.process_index for d in mesh.devices.flat],
        "create_mesh": [d.process_index for d in sharding.create_mesh().devices.flat],
        "example_ids": out["logits"].argmax(-1).tolist(),
        "labels": out["label"].tolist(),
        "file_names": out["file_name"].tolist(),
    }
    (pathlib.Path(args.out) / f"{jax.process_index()}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
