"""One 1-D data-parallel mesh over every device of every host, and batch placement on it.

The train state is replicated; batches are split along the "data" axis. Under `jax.jit` the
model then sees the global batch, so BatchNorm statistics are global across devices for free.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cer_jax import paths
from cer_jax.errors import UserError

T = TypeVar("T")

DATA_AXIS = "data"

# XLA:CPU in jax 0.10 hands matmuls, convolutions and reductions to YNNPACK by default. Its
# convolutions are several times slower than XLA's own (Eigen) kernels for weight gradients
# (ResNet-50's stem: 207 ms against 17 ms), while its matmuls and reductions are the faster
# ones, so the programs compiled here keep YNNPACK for those two only (BENCHMARKS.md,
# "XLA:CPU settings").
YNN_OPTION = "xla_cpu_experimental_ynn_fusion_type"
CPU_COMPILER_OPTIONS = {
    YNN_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def create_mesh() -> Mesh:
    """Every device, each host's together and in process order (whatever jax.devices()'s
    order), so that a host's rows of a data-sharded array are one contiguous block."""
    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def local_mesh() -> Mesh:
    """This process's devices only: for a full copy of a model on each host (warm starts,
    the ensemble artefact), whose arrays numpy can then read."""
    return Mesh(np.asarray(jax.local_devices()), (DATA_AXIS,))


def compiler_options(mesh: Mesh | None = None) -> dict[str, str] | None:
    """XLA options for a program compiled for `mesh` (default: the default device): the CPU
    options above on CPU, unless XLA_FLAGS already chooses YNNPACK's fusions; None elsewhere
    (GPU and TPU programs are compiled with their defaults)."""
    device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    if device.platform != "cpu" or YNN_OPTION in os.environ.get("XLA_FLAGS", ""):
        return None
    return dict(CPU_COMPILER_OPTIONS)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch_size: int, key: str) -> None:
    """The global batch must split evenly over every device (and so over every host)."""
    devices = jax.device_count()
    if global_batch_size < 1:
        raise ValueError(f"{key}={global_batch_size} must be >= 1 (a multiple of the {devices} "
                         "devices in use).")
    if global_batch_size % devices:
        suggestion = max(devices, global_batch_size // devices * devices)
        raise ValueError(
            f"{key}={global_batch_size} is not divisible by the {devices} devices in use. "
            f"Set {key} to a multiple of {devices} (e.g. {suggestion})."
        )


def to_global(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Host-local numpy arrays -> global arrays sharded along the data axis (strings dropped)."""
    sharding = data_sharded(mesh)
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in batch.items()
        if np.asarray(value).dtype != object and np.asarray(value).dtype.kind not in "US"
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    """The same host values on every device of every process (each process passes its own,
    equal, copy: jax.device_put cannot address other hosts' devices)."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(value: Any) -> jax.Array:
        if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):  # nnx.Rngs keys
            data = put(jax.random.key_data(value))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
        return jax.make_array_from_process_local_data(sharding, np.asarray(value))

    return jax.tree.map(put, tree)


def prefetch_to_mesh(batches: Iterable[Mapping[str, Any]], mesh: Mesh, size: int = 2
                     ) -> Iterator[dict[str, jax.Array]]:
    """Keeps `size` batches' host-to-device copies in flight ahead of the step (as flax's and
    big_vision's loops do), so the step never waits on a copy."""
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(to_global(batch, mesh))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any: a collective, so every process must call
    it at the same step (the trainer does at its log points)."""
    return max_over_processes(int(flag)) > 0


def max_over_processes(value: int) -> int:
    """The largest of every process's `value`, on every process (a collective, as any_process)."""
    if jax.process_count() == 1:
        return int(value)
    values = multihost_utils.process_allgather(np.asarray(value, np.int32))
    return int(np.asarray(values).max())


# Set on an error every process already knows of (raise_if_any_failed): no second vote.
_COUNTED = "_cer_jax_counted_by_every_process"


@contextlib.contextmanager
def stop_together(what: str, hint: str | None = None) -> Iterator[None]:
    """Runs the block on every process; an error raised in it on some process stops every one
    (the others with a UserError naming it), so that no process goes on alone into the next
    collective and waits there for ever (a TPU or GPU collective has no timeout). A per-host
    fact (a path one host lacks) fails on one host only. The block's only collectives may be
    `raise_if_any_failed` votes: a process that fails before one votes there in its place.
    One process (no jax.distributed) does not start JAX's backend here: its start-up lines
    would come before a check's one-line error. `hint`: the likely cause the others name, in
    place of the default (a path one host lacks)."""
    if not jax.distributed.is_initialized() or jax.process_count() == 1:
        yield
        return
    try:
        yield
    except Exception as error:
        if not getattr(error, _COUNTED, False):
            _failed_processes(True)
        raise
    failed = _failed_processes(False)
    if failed:
        raise _stopped_elsewhere(failed, what, hint)


def raise_if_any_failed(error: Exception | None, what: str, hint: str | None = None) -> None:
    """A collective vote in which every process gives its own error (or None): when any process
    failed, every process raises, its own error or a UserError naming those that failed (and
    `hint`, the likely cause, in place of the default: a path one host lacks). Either is
    marked as known to every process, so an enclosing `stop_together` does not vote again (the
    failed processes are gone)."""
    failed = _failed_processes(error is not None)
    if error is None and failed:
        error = _stopped_elsewhere(failed, what, hint)
    if error is not None:
        setattr(error, _COUNTED, True)
        raise error


def on_process_0(action: Callable[[], T], what: str, *, where: str,
                 io_error: Callable[[str], UserError]) -> T | None:
    """Runs `action` (a write of a shared file, say) on process 0 only, then votes: when it
    failed, every process raises, process 0 its error (a failed file operation as
    `io_error(reason)`, one line) and the others one naming process 0 and `where` (on several
    hosts the others went on alone, exit status 0, while process 0 failed). Returns the
    action's result on process 0, None elsewhere."""
    result, error = None, None
    if jax.process_index() == 0:
        try:
            result = action()
        except paths.io_errors() as e:
            error = io_error(paths.error_reason(e))
            error.__cause__ = e
        except Exception as e:  # raised below, once the others know
            error = e
    raise_if_any_failed(error, what, hint=f"process 0 {where}: see its log")
    return result


def _stopped_elsewhere(failed: list[int], what: str, hint: str | None = None) -> UserError:
    names = ", ".join(str(p) for p in failed)
    tail = (f" ({hint})." if hint else " (see its log: a path that its host lacks, say); every "
            "host must see the same files, on gs:// or a shared filesystem.")
    return UserError(
        f"process{'es' if len(failed) > 1 else ''} {names} stopped in {what} on an error that "
        f"this process did not meet{tail}")


def _failed_processes(failed: bool) -> list[int]:
    """The indices of the processes that pass True (a collective, as any_process)."""
    flags = multihost_utils.process_allgather(np.asarray(int(failed), np.int32))
    return [int(p) for p in np.flatnonzero(np.asarray(flags).reshape(-1))]
