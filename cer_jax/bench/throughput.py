"""Train / eval step throughput of one model, as the trainer runs it, on synthetic device batches.

The state, optimizer and steps are the trainer's own (`train_state`, `optim`, `steps`) built from
the model's config file, so the figures are those of a real run minus the input pipeline. The
batch is drawn on the device once and reused: no host-to-device copy, no TensorFlow.

Timing: the train and eval programs are lowered and compiled explicitly (compile time = trace +
lower + compile); then `warmup` untimed steps; then `steps` steps each followed by
`block_until_ready` (the median of these is the step time), and the same number again
dispatched back to back with one block at the end ("pipelined": what the trainer's loop does,
host dispatch overlapping device work). FLOPs come from XLA's cost analysis of the compiled
executables (`costs.compiled_flops`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from cer_jax import optim, paths, sharding, steps, train_state
from cer_jax.bench import costs, peaks
from cer_jax.config_loading import load_config
from cer_jax.errors import UserError

# Model shorthand -> the config file whose recipe (optimizer, loss) the benchmark runs.
CONFIG_FILES = {"vit": "configs/vit.py", "resnet": "configs/resnet50.py",
                "manet": "configs/manet.py"}
PRECISIONS = ("float32", "bfloat16")


@dataclasses.dataclass
class Setup:
    """One model to benchmark: its config (recipe), batch, input size and precision."""

    spec: str
    config: ml_collections.ConfigDict
    batch_size: int
    image_size: int
    precision: str
    num_classes: int

    @property
    def name(self) -> str:
        return self.config.model.name


def resolve(spec: str, *, image_size: int | None, batch_size: int | None,
            precision: str | None, num_classes: int) -> Setup:
    """'vit:B/16' (shorthand: the model's recipe config with that variant) or a config file
    'configs/vit.py[:smoke]' -> Setup. None for image_size / batch_size / precision: the
    config's (precision: its model.dtype)."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"--precision={precision!r}: use one of {', '.join(PRECISIONS)}.")
    if ".py" in spec:
        config = load_config(spec)
    else:
        name, kwargs = costs.parse_model_spec(spec, image_size=image_size or 224)
        config = load_config(CONFIG_FILES[name])
        kwargs.pop("image_size", None)
        for key, value in kwargs.items():
            config.model[key] = value
    config = ml_collections.ConfigDict(config.to_dict())  # resolve field references
    # Options left None / "auto" mean "what the checkpoint implies, else the model's default":
    # no weights are loaded here, so drop them and let the model use its defaults.
    config.model = ml_collections.ConfigDict(
        {k: v for k, v in config.model.to_dict().items() if v is not None and v != "auto"})
    if precision is None:
        precision = str(config.model.get("dtype") or "float32")
        if precision not in PRECISIONS:
            raise UserError(f"--models {spec!r}: its model.dtype={precision!r} is not "
                            f"benchmarked; give --precision= one of {', '.join(PRECISIONS)}.")
    size = image_size or config.input.image_size
    config.input.image_size = size
    if "image_size" in config.model:
        config.model.image_size = size
    config.model.dtype = precision
    batch = batch_size or config.training.global_batch_size
    sharding.check_batch_size(batch, "--batch_size")
    return Setup(spec, config, batch, size, precision, num_classes)


def synthetic_batch(mesh, batch_size: int, image_size: int, num_classes: int, *,
                    seed: int = 0, with_mask: bool = False) -> dict[str, jax.Array]:
    """Random images and labels drawn on the device(s), sharded like the trainer's batches."""
    spec = sharding.data_sharded(mesh)
    keys = ("image", "label", "mask") if with_mask else ("image", "label")

    @functools.partial(jax.jit, out_shardings=dict.fromkeys(keys, spec))
    def make(key):
        k1, k2 = jax.random.split(key)
        batch = {
            "image": jax.random.normal(k1, (batch_size, image_size, image_size, 3), jnp.float32),
            "label": jax.random.randint(k2, (batch_size,), 0, num_classes, jnp.int32),
        }
        if with_mask:
            batch["mask"] = jnp.ones((batch_size,), jnp.bool_)
        return batch

    return make(jax.random.key(seed))


def build(setup: Setup, mesh) -> tuple[Any, Any, Any, dict]:
    """(train_fn, eval_fn, state, info) exactly as the trainer builds them (random weights)."""
    config = setup.config
    model = train_state.create_model(config, setup.num_classes, seed=0)
    _, params, _ = train_state.split_model(model)
    schedule = optim.create_schedule(config, total_steps=1000, steps_per_epoch=100)
    tx = optim.create_optimizer(config, schedule, params, train_state.head_names(model))
    graphdef, state = train_state.create_train_state(model, tx)
    del model, params
    state = sharding.replicate(state, mesh)
    train_fn = steps.jit_train_step(
        graphdef, tx, mesh, num_classes=setup.num_classes,
        label_smoothing=config.training.label_smoothing,
    )
    eval_fn = steps.jit_eval_step(graphdef, mesh, num_classes=setup.num_classes)
    info = {"params": train_state.num_params(state["params"]),
            "optimizer": config.optimizer.name}
    return train_fn, eval_fn, state, info


def compile_timed(jitted, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def time_steps(step: Callable[[], Any], *, warmup: int, steps_: int,
               reference: Callable[[], Any] | None = None) -> dict[str, float]:
    """Median seconds of `steps_` blocked calls after `warmup` (and of the host's part of each:
    until the call returned, the step queued), and the mean of as many
    back-to-back calls blocked once at the end (host dispatch overlapping device work), with
    this process's page faults and kernel CPU seconds per call over those (on CPU, what a step
    pays the kernel for fresh memory: `cer_jax.huge_pages`).

    With a `reference` step (PyTorch's), the two alternate: one untimed step of a side, then
    its timed step, then the other side's; the ratio is the median of the per-pair ratios. A
    machine whose speed drifts (shared cloud hosts drift by 25 % within minutes) slows both
    steps of a pair alike. The untimed step absorbs the cost of the switch: the first JAX step
    after PyTorch's ran up to 25 % slower on the 2-core CPU, while the allocators re-warm.
    """
    dispatch_times = []

    def timed(fn, dispatches=None):
        start = time.perf_counter()
        out = fn()
        if dispatches is not None:  # the call returns once the step is queued (async dispatch)
            dispatches.append(time.perf_counter() - start)
        jax.block_until_ready(out)
        return time.perf_counter() - start

    for _ in range(warmup):
        jax.block_until_ready(step())
        if reference is not None:
            reference()
    times, reference_times = [], []
    for _ in range(steps_):
        if reference is not None:
            jax.block_until_ready(step())
        times.append(timed(step, dispatch_times))
        if reference is not None:
            reference()
            reference_times.append(timed(reference))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    out = None
    for _ in range(steps_):
        out = step()
    jax.block_until_ready(out)
    pipelined = (time.perf_counter() - start) / steps_
    after = resource.getrusage(resource.RUSAGE_SELF)
    result = {"median_s": statistics.median(times), "min_s": min(times),
              "pipelined_s": pipelined, "dispatch_s": statistics.median(dispatch_times),
              "page_faults_per_step": (after.ru_minflt - usage.ru_minflt) / steps_,
              "kernel_s_per_step": (after.ru_stime - usage.ru_stime) / steps_}
    if reference is not None:
        result["reference_median_s"] = statistics.median(reference_times)
        result["ratio"] = statistics.median(
            r / t for r, t in zip(reference_times, times, strict=True))
    return result


def device_peak_bytes() -> int | None:
    """The device's peak bytes in use since the process started, where the backend reports it
    (GPU / TPU; not CPU)."""
    stats = None
    with contextlib.suppress(Exception):
        stats = jax.local_devices()[0].memory_stats()
    return (stats or {}).get("peak_bytes_in_use")


def memory_figures(compiled_train, peak_before: int | None) -> dict[str, int | None]:
    """Peak device memory of this model where the backend reports it, and what XLA planned for
    the train program (arguments + outputs + temporaries, any backend).

    The device's peak is the process's (JAX cannot reset it): a model that stays below an
    earlier model's peak (`peak_before`, read before this model was built) gets no peak of its
    own, only that bound ("peak_bytes_at_most"), not the earlier model's figure as its own."""
    peak = device_peak_bytes()
    own = peak if peak is not None and (peak_before is None or peak > peak_before) else None
    planned = None
    with contextlib.suppress(Exception):
        m = compiled_train.memory_analysis()
        planned = int(m.argument_size_in_bytes + m.output_size_in_bytes
                      + m.temp_size_in_bytes - m.alias_size_in_bytes)
    return {"peak_bytes_in_use": own,
            "peak_bytes_at_most": peak_before if own is None and peak is not None else None,
            "train_program_bytes": planned}


def bench_model(setup: Setup, mesh, *, steps_: int, warmup: int,
                profile_dir: str | None = None, reference=None) -> dict[str, Any]:
    """Every device figure of one model (see the module docstring). `reference`: the PyTorch
    reference's steps (`torch_ref.ReferenceSteps`), timed interleaved with ours."""
    peak_before = device_peak_bytes()
    train_fn, eval_fn, state, info = build(setup, mesh)
    b, s, k = setup.batch_size, setup.image_size, setup.num_classes
    batch = synthetic_batch(mesh, b, s, k)
    eval_batch = synthetic_batch(mesh, b, s, k, with_mask=True)
    train_c, compile_train = compile_timed(train_fn, state, batch)
    eval_c, compile_eval = compile_timed(eval_fn, state, eval_batch)

    box = {"state": state}

    def train_once():
        box["state"], metrics = train_c(box["state"], batch)
        return metrics

    def eval_once():
        return eval_c(box["state"], eval_batch)

    train_t = time_steps(train_once, warmup=warmup, steps_=steps_,
                         reference=reference and reference.train_step)
    eval_t = time_steps(eval_once, warmup=warmup, steps_=steps_,
                        reference=reference and reference.eval_step)
    profile_error = profile(profile_dir, train_once, eval_once) if profile_dir else None

    devices = jax.device_count()
    # The compiled programs are per device (SPMD): scale to the global batch.
    miscounted = costs.miscounted_flops()
    train_flops = None if miscounted else costs.compiled_flops(train_c) * devices / b
    eval_flops = None if miscounted else costs.compiled_flops(eval_c) * devices / b
    result: dict[str, Any] = {
        "spec": setup.spec, "model": setup.name, **info,
        "batch_size": b, "image_size": s, "precision": setup.precision,
        "compile_train_s": compile_train, "compile_eval_s": compile_eval,
        "train_step_s": train_t["median_s"], "eval_step_s": eval_t["median_s"],
        "train_images_per_s": b / train_t["median_s"],
        "eval_images_per_s": b / eval_t["median_s"],
        "train_images_per_s_pipelined": b / train_t["pipelined_s"],
        "eval_images_per_s_pipelined": b / eval_t["pipelined_s"],
        **{f"{part}_{key}": t[key] for part, t in (("train", train_t), ("eval", eval_t))
           for key in ("page_faults_per_step", "kernel_s_per_step", "dispatch_s")},
        "train_flops_per_image": train_flops, "eval_flops_per_image": eval_flops,
        **memory_figures(train_c, peak_before),
    }
    if profile_error:
        result["profile_error"] = profile_error
    if miscounted:
        result["flops_error"] = miscounted
    if reference is not None:
        result["torch"] = {
            "framework": reference.framework, "params": reference.params,
            "train_step_s": train_t["reference_median_s"],
            "eval_step_s": eval_t["reference_median_s"],
            "train_images_per_s": b / train_t["reference_median_s"],
            "eval_images_per_s": b / eval_t["reference_median_s"],
        }
        result["ratio_train"], result["ratio_eval"] = train_t["ratio"], eval_t["ratio"]
    peak = peaks.peak_flops(jax.devices()[0].device_kind, setup.precision)
    for part in ("train", "eval"):
        per_image = result[f"{part}_flops_per_image"]
        achieved = None if per_image is None else per_image * result[f"{part}_images_per_s"]
        result[f"{part}_flops_per_s"] = achieved
        result[f"{part}_mfu"] = achieved / (peak * devices) if peak and achieved else None
    return result


def profile(log_dir: str, train_once, eval_once, *, num_steps: int = 3) -> str | None:
    """A jax.profiler trace of a few train steps and one eval step (TensorBoard: Profile tab).
    A profiler that fails (no CUPTI, a trace already running) costs the trace only, not the
    figures measured: returns its error, and the benchmark goes on."""
    try:
        with jax.profiler.trace(log_dir):
            for i in range(num_steps):
                with jax.profiler.StepTraceAnnotation("train", step_num=i):
                    jax.block_until_ready(train_once())
            with jax.profiler.StepTraceAnnotation("eval", step_num=num_steps):
                jax.block_until_ready(eval_once())
    except Exception as e:  # noqa: BLE001 (any profiler failure: the figures matter more)
        message = f"no profile in {log_dir}: {type(e).__name__}: {e}"
        print(message, file=sys.stderr, flush=True)
        return message
    return None


# What the benchmark CLIs check before any timing, so that a missing package or a bad output
# path fails in one line at once, not with a traceback after minutes of measuring.

NO_TORCH = ("--compare_torch needs PyTorch (and transformers for ViT / ResNet): "
            "pip install -e '.[test]', or drop --compare_torch.")


def initialize_backends() -> None:
    """Starts JAX's backends (GPU / TPU / CPU) now; --compare_torch must not import PyTorch
    before this (`cer_jax.bench.main`)."""
    jax.devices()


def check_torch(model_names: Iterable[str] = ()) -> None:
    """--compare_torch's packages: PyTorch, and transformers where a model is ViT or ResNet
    (their references are Hugging Face models; MA-Net's is written in `torch_ref`)."""
    try:
        import torch  # noqa: F401

        if {"vit", "resnet"} & set(model_names):
            import transformers  # noqa: F401
    except ImportError as e:
        raise UserError(NO_TORCH) from e


def check_torch_device() -> None:
    """--compare_torch beside a GPU / TPU needs a PyTorch that sees a CUDA GPU: a CPU-only
    PyTorch would run its steps on the host and print a ratio of a GPU against a CPU."""
    import torch

    backend = jax.default_backend()
    if backend != "cpu" and not torch.cuda.is_available():
        raise UserError(
            f"--compare_torch: JAX runs on {backend}, but this PyTorch ({torch.__version__}) "
            "sees no CUDA GPU, so the ratios would compare the accelerator with the host CPU; "
            "install PyTorch's CUDA build, or drop --compare_torch.")


def _probe(folder: pathlib.Path) -> None:
    """Writes and removes a small file in `folder` (made first): OSError where it cannot."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".cer_jax_bench_probe-"):
        pass


def check_output_file(flag: str, path: str) -> None:
    """Before any timing: --<flag>=path (a JSON file) can be written; makes its folder. A
    remote path (gs://...) is left to the write itself: it has no folders to check."""
    if paths.is_remote(path):
        return
    target = pathlib.Path(os.path.abspath(path))
    # A new `--json=results/`: abspath drops the /, and the figures went to a file `results`.
    if target.is_dir() or path.endswith(("/", os.sep)):
        what = "is a folder" if target.is_dir() else "ends in /, a folder"
        raise UserError(f"--{flag}={path} {what}; give a file name, e.g. "
                        f"--{flag}={target / 'bench.json'}.")
    blocker = paths.file_in_the_way(target.parent)
    if blocker is not None:
        raise UserError(f"--{flag}={path}: {blocker} is a file, not a folder.")
    try:
        _probe(target.parent)
        if target.exists() and not os.access(target, os.W_OK):
            raise PermissionError(13, "Permission denied", str(target))
    except OSError as e:
        raise UserError(f"--{flag}={path} cannot be written ({paths.error_reason(e)}); give a "
                        f"writable file, or drop --{flag}.") from e


def check_output_folder(flag: str, path: str) -> None:
    """Before any timing: --<flag>=path (a folder) is not a file and can be made and written."""
    if paths.is_remote(path):
        return
    blocker = paths.file_in_the_way(path)
    if blocker is not None:
        raise UserError(f"--{flag}={path}: {blocker} is a file, not a folder; give a folder.")
    try:
        _probe(pathlib.Path(path))
    except OSError as e:
        raise UserError(f"--{flag}={path} cannot be written ({paths.error_reason(e)}); give a "
                        f"writable folder, or drop --{flag}.") from e


def write_json(path: str, payload: Any) -> None:
    """`payload` as indented JSON, through epath: a gs:// path goes to the bucket, not to a
    local folder named `gs:`. Atomic: the file is whole (the earlier one, or this) at any time."""
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    paths.write_text_atomically(target, json.dumps(payload, indent=1) + "\n")
