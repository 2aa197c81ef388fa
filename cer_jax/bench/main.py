r"""Throughput, FLOPs, MFU and memory per model; optionally input pipeline, PyTorch, profile.

    python -m cer_jax.bench --models=vit:B/16,resnet:50,manet --precision=bfloat16 \
        [--batch_size=N] [--image_size=224] [--steps=10] [--warmup=2] [--json=bench.json] \
        [--input] [--compare_torch] [--profile=/tmp/bench_profile]

--models takes shorthands (vit:<variant>, resnet:<depth>, manet[:<width>]; each runs its recipe
config's optimizer and loss) or config files (configs/manet.py:smoke). --batch_size,
--image_size and --precision default to the config's (the recipe's; precision: its
model.dtype). Without --input nothing imports TensorFlow: batches are random arrays made on
the device.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
import traceback
from collections.abc import Sequence
from typing import Any

from absl import app, flags

from cer_jax import cli, paths
from cer_jax.bench import DEFAULT_MODELS, report
from cer_jax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("models", DEFAULT_MODELS,
                    "Comma-separated model shorthands or config files.")
flags.DEFINE_integer("batch_size", None, "Global batch; default: the config's.", lower_bound=1)
flags.DEFINE_integer("image_size", None, "Input side; default: the config's.", lower_bound=1)
flags.DEFINE_enum("precision", None, ["float32", "bfloat16"],
                  "Compute dtype (parameters stay float32); default: the config's model.dtype "
                  "(float32 in the recipes).")
flags.DEFINE_integer("steps", 10, "Timed steps (train and eval each).", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.", lower_bound=0)
flags.DEFINE_integer("num_classes", 11, "Classes of the head (RAF-DB compound: 11).",
                     lower_bound=2)
cli.define_path_flag("json", None, "Write every figure to this JSON file.")
flags.DEFINE_bool("input", False,
                  "Also time the real training input pipeline (TensorFlow) per host core.")
flags.DEFINE_integer("input_batches", 20, "Batches timed by --input.", lower_bound=1)
flags.DEFINE_integer("input_num_train_images", 600,
                     "Synthetic training images drawn for --input.", lower_bound=1)
cli.define_path_flag("input_cache_dir", os.path.join(tempfile.gettempdir(), "cer_jax_bench"),
                    "Where --input draws and builds its synthetic dataset (reused).")
flags.DEFINE_bool("compare_torch", False,
                  "Also time the PyTorch reference (transformers ViT / ResNet, MA-Net).")
cli.define_path_flag("profile", None, "Write a jax.profiler trace of a few steps here.")

def machine() -> dict[str, Any]:
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    device = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "backend": jax.default_backend(), "device_kind": device.device_kind,
        "device_count": jax.device_count(), "host_cpu": cpu, "host_cores": os.cpu_count(),
        "jax": jax.__version__, "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # JAX's persistent cache (JAX_COMPILATION_CACHE_DIR): a second run's compile times are
        # then cache reads, not compilations.
        "compilation_cache": (jax.config.jax_compilation_cache_dir or "")
        if jax.config.jax_enable_compilation_cache else "",
        # malloc's huge pages (cer_jax.huge_pages) change CPU step times by 1.2-1.6x.
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    }


class ModelsFailed(UserError):
    """Some models could not be timed; the others were, and their figures are printed."""

    exit_status = 1


def write_json(info: dict[str, Any], results: list[dict[str, Any]],
               estimate: dict[str, Any] | None, failed: dict[str, str],
               complete: bool = False) -> None:
    if not FLAGS.json:
        return
    payload = {"machine": info, "settings": {
        "models": FLAGS.models, "batch_size": FLAGS.batch_size, "image_size": FLAGS.image_size,
        "precision": FLAGS.precision, "steps": FLAGS.steps, "warmup": FLAGS.warmup,
        "num_classes": FLAGS.num_classes, "argv": sys.argv},
        "models": results, "failed": failed, "ensemble": estimate, "complete": complete}
    from cer_jax.bench import throughput

    throughput.write_json(FLAGS.json, payload)


def run(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    specs = [s.strip() for s in FLAGS.models.split(",") if s.strip()]
    if not specs:
        raise UserError(f"--models is empty: name the models to time, e.g. "
                        f"--models={DEFAULT_MODELS}.")
    from cer_jax.bench import throughput

    if FLAGS.json:
        throughput.check_output_file("json", FLAGS.json)
    if FLAGS.profile:
        throughput.check_output_folder("profile", FLAGS.profile)
    # JAX's GPU backend before PyTorch: `import torch` loads its own cuDNN, and a JAX started
    # after it finds that (older) cuDNN, fails to start CUDA and falls back to the CPU
    # (github.com/jax-ml/jax/issues/18032).
    throughput.initialize_backends()
    if FLAGS.compare_torch:  # before any model: the PyTorch stack is an optional extra
        throughput.check_torch()
        throughput.check_torch_device()
    if FLAGS.input:  # before any model: a bare accelerator host may lack TensorFlow
        try:
            import tensorflow_datasets  # noqa: F401

            from cer_jax.data import sources

            sources.import_tf()
        except ImportError as e:
            raise UserError(f"--input times the tf.data pipeline, which needs TensorFlow and "
                            f"TFDS ({e}): pip install -e . installs them, or drop --input.") from e
        from cer_jax.bench import input_bench

        input_bench.check_sizes(FLAGS.input_num_train_images)
        # Written after the first model's timing: a bad folder fails now, named by its flag.
        if paths.is_remote(FLAGS.input_cache_dir):  # drawn with local file calls
            raise UserError(f"--input_cache_dir={FLAGS.input_cache_dir}: the synthetic dataset "
                            "--input times is drawn on this machine's disk; give a local "
                            "folder.")
        throughput.check_output_folder("input_cache_dir", FLAGS.input_cache_dir)
    from cer_jax import sharding, train_state
    from cer_jax.bench import ensemble_time

    info = machine()
    print(f"# cer_jax.bench on {info['device_count']} x {info['device_kind']} "
          f"({info['backend']}), host {info['host_cpu']} ({info['host_cores']} cores), "
          f"jax {info['jax']}, {info['date']}"
          + "".join(f", {name}={info[key]}" for key, name in
                    (("xla_flags", "XLA_FLAGS"), ("glibc_tunables", "GLIBC_TUNABLES"))
                    if info[key])
          + (f", compilation cache {info['compilation_cache']} (compile times may be cache "
             "reads)" if info["compilation_cache"] else ""))
    mesh = sharding.create_mesh()
    results = []
    setups = [throughput.resolve(spec, image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
                                 precision=FLAGS.precision, num_classes=FLAGS.num_classes)
              for spec in specs]
    resolved = [setup.spec for setup in setups]
    twice = next((spec for i, spec in enumerate(resolved) if spec in resolved[:i]), None)
    if twice is not None:  # the ensemble estimate counts each member once
        raise UserError(f"--models names {twice} twice; give each model once.")
    for setup in setups:  # every model's settings before the first one is timed
        train_state.check_model(setup.config, setup.num_classes)
    if FLAGS.compare_torch:
        throughput.check_torch(setup.name for setup in setups)
    failed: dict[str, str] = {}
    for setup in setups:
        try:
            r = time_model(setup, mesh)
        except Exception as e:  # noqa: BLE001 (one model's failure must not cost the others)
            # The whole traceback for the record (an unattended device run has no second try).
            traceback.print_exc()
            failed[setup.spec] = f"{type(e).__name__}: " + (
                str(e).strip().splitlines() or [""])[0]
            print(f"{setup.spec}: not timed ({failed[setup.spec]})", file=sys.stderr,
                  flush=True)
            write_json(info, results, None, failed)
            continue
        results.append(r)
        write_json(info, results, None, failed)  # after every model: a timeout keeps it
        print(f"{setup.spec}: train {r['train_images_per_s']:.1f} img/s, eval "
              f"{r['eval_images_per_s']:.1f} img/s", file=sys.stderr, flush=True)

    estimate = ensemble_time.ensemble_estimate(results) if results else None
    sections = [report.summary({"machine": info, "settings": {"models": FLAGS.models},
                                "models": results, "failed": failed, "ensemble": estimate,
                                "complete": True})]
    if FLAGS.profile:  # a failed profiler (no CUPTI...) cost that model's trace only
        written = [r["spec"] for r in results if not r.get("profile_error")]
        if written:
            sections.append(f"Profiles: {FLAGS.profile} (tensorboard --logdir={FLAGS.profile}, "
                            "Profile tab)" + (f" of {', '.join(written)}"
                                              if len(written) < len(results) else ""))
        sections.extend(r["profile_error"] for r in results if r.get("profile_error"))
    print("\n\n".join(s for s in sections if s))
    write_json(info, results, estimate, failed, complete=True)
    if failed:
        raise ModelsFailed(
            f"not timed: {'; '.join(f'{spec} ({error})' for spec, error in failed.items())}; "
            "the tracebacks are above, the other models' figures in the tables.")


def time_model(setup, mesh) -> dict[str, Any]:
    """Every figure of one model (`throughput.Setup`): its PyTorch reference and input pipeline
    where asked."""
    from cer_jax.bench import ensemble_time, input_bench, throughput

    spec = setup.spec
    profile_dir = os.path.join(FLAGS.profile, spec.replace("/", "_").replace(":", "_")) \
        if FLAGS.profile else None
    reference = torch_error = None
    if FLAGS.compare_torch:
        from cer_jax.bench import torch_ref

        reference = torch_ref.checked_reference_steps(setup)
        if isinstance(reference, str):
            torch_error, reference = reference, None
            print(torch_error, file=sys.stderr, flush=True)
    r = throughput.bench_model(setup, mesh, steps_=FLAGS.steps, warmup=FLAGS.warmup,
                               profile_dir=profile_dir, reference=reference)
    del reference
    if torch_error:
        r["torch_error"] = torch_error
    r["num_epochs"] = float(setup.config.training.get("num_epochs") or 0.0) or (
        setup.config.training.num_steps * setup.config.training.global_batch_size
        / ensemble_time.TRAIN_FIT)
    r["recipe_batch_size"] = int(setup.config.training.global_batch_size)
    # The run's length and evaluation cadence where the config sets them (the smoke variants,
    # a user's config): the estimate counted epochs only.
    r["num_steps"] = int(setup.config.training.get("num_steps") or 0) or None
    r["eval_every_steps"] = int(setup.config.training.get("eval_every_steps") or 0) or None
    if profile_dir:
        r["profile_dir"] = profile_dir
    if FLAGS.input:
        r["input"] = input_bench.bench_input(
            setup.config, batch_size=setup.batch_size, batches=FLAGS.input_batches,
            cache_dir=FLAGS.input_cache_dir,
            num_train_images=FLAGS.input_num_train_images)
        r["input_bound"] = input_bench.bound(r["train_images_per_s_pipelined"], r["input"])
        r["training_images_per_s"] = r["input_bound"]["training_images_per_s"]
    return r


def main() -> None:
    cli.run(run)
