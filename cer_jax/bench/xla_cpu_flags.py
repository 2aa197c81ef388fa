r"""What XLA:CPU flags change, per model, train and eval: one `cer_jax.bench` run per setting.

    python -m cer_jax.bench.xla_cpu_flags --models=configs/manet.py:smoke --batch_size=32 \
        [--settings=baseline,ynn,xnn,onednn] [--json=flags.json] [-- <more cer_jax.bench flags>]

XLA_FLAGS is read once, when the XLA backend starts, so every setting runs in its own process.
Each run also times the PyTorch reference in the same process (--compare_torch), so a setting is
judged by its cer_jax / PyTorch ratio, which a busy machine disturbs far less than raw images/s.
All these flags are XLA:CPU flags: GPU and TPU backends ignore them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from absl import app, flags

from cer_jax import cli
from cer_jax.bench import throughput
from cer_jax.errors import UserError

# name -> XLA_FLAGS value (added to whatever XLA_FLAGS the caller has). "baseline" is what the
# trainer compiles with: YNNPACK for matmuls and reductions, XLA's own convolutions
# (`sharding.compiler_options`). Any XLA_FLAGS that names the YNN fusion types replaces that.
SETTINGS = {
    "baseline": "",
    # jax 0.10's own default: YNNPACK for convolutions too.
    "xla_default": "--xla_cpu_experimental_ynn_fusion_type="
                   "individual_dot,individual_convolution,reduce",
    "no_ynn": "--xla_cpu_experimental_ynn_fusion_type=",
    # YNNPACK (XNNPACK's successor) fusions of dots, elementwise ops and reductions.
    "ynn": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    "ynn_dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    # XNNPACK fusions (the older library).
    "xnn": "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce",
    # oneDNN thunks for matmul / convolution fusions, and oneDNN fusions.
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_fusion": "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
}

FLAGS = flags.FLAGS
flags.DEFINE_string("models", "configs/vit.py:smoke,configs/resnet50.py:smoke,"
                    "configs/manet.py:smoke", "As cer_jax.bench --models.")
flags.DEFINE_list("settings", list(SETTINGS), f"Subset of: {', '.join(SETTINGS)}.")
flags.DEFINE_integer("batch_size", 32, "As cer_jax.bench.", lower_bound=1)
flags.DEFINE_integer("image_size", None, "As cer_jax.bench.", lower_bound=1)
flags.DEFINE_integer("steps", 5, "As cer_jax.bench.", lower_bound=1)
flags.DEFINE_integer("warmup", 2, "As cer_jax.bench.", lower_bound=0)
flags.DEFINE_bool("compare_torch", True, "Time PyTorch in every run (ratios).")
cli.define_path_flag("json", None, "Write every run's figures here.")


def run_setting(name: str, extra: Sequence[str], out: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS", ""), SETTINGS[name]]))
    cmd = [sys.executable, "-m", "cer_jax.bench", f"--models={FLAGS.models}",
           f"--batch_size={FLAGS.batch_size}", f"--steps={FLAGS.steps}",
           f"--warmup={FLAGS.warmup}", f"--json={out}", *extra]
    if FLAGS.image_size:
        cmd.append(f"--image_size={FLAGS.image_size}")
    if FLAGS.compare_torch:
        cmd.append("--compare_torch")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        return {"error": proc.stderr[-2000:]}
    with open(out) as f:
        return json.load(f)


def table(runs: dict[str, dict]) -> str:
    base = runs.get("baseline", {}).get("models")
    lines = ["| setting | model | train img/s | eval img/s | train vs baseline | "
             "eval vs baseline | train / PyTorch | eval / PyTorch | compile train s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, run in runs.items():
        if "error" in run:
            said = [line for line in run["error"].strip().splitlines()
                    if not line.startswith("Pass --helpshort")]  # absl's, after its FATAL line
            lines.append(f"| {name} | (failed: {said[-1][:80] if said else '?'}) | | | | | | | |")
            continue
        for i, r in enumerate(run["models"]):
            b = base[i] if base else None
            rel = [f"{r[k] / b[k]:.2f}x" if b else "-"
                   for k in ("train_images_per_s", "eval_images_per_s")]
            ratio = [f"{r[k]:.2f}x" if k in r else "-" for k in ("ratio_train", "ratio_eval")]
            lines.append(f"| {name} | {r['spec']} | {r['train_images_per_s']:.1f} | "
                         f"{r['eval_images_per_s']:.1f} | {rel[0]} | {rel[1]} | {ratio[0]} | "
                         f"{ratio[1]} | {r['compile_train_s']:.1f} |")
    return "\n".join(lines)


def check_models() -> None:
    """--models as cer_jax.bench resolves them, once, before the runs: a bad one failed every
    setting's run in turn, then printed a table of the same truncated error, status 0."""
    from cer_jax import train_state

    specs = [s.strip() for s in FLAGS.models.split(",") if s.strip()]
    if not specs:
        raise UserError("--models is empty: name the models to time, e.g. "
                        "--models=configs/manet.py:smoke.")
    for spec in specs:
        setup = throughput.resolve(spec, image_size=FLAGS.image_size,
                                   batch_size=FLAGS.batch_size, precision="float32",
                                   num_classes=11)
        train_state.check_model(setup.config, setup.num_classes)


def main(argv: Sequence[str]) -> None:
    extra = list(argv[1:])  # after `--`: passed through to cer_jax.bench
    words = [arg for arg in extra if not arg.startswith("-")]
    if words:  # each setting's run failed on it in turn, then a table of that error, status 0
        raise app.UsageError(f"Unexpected arguments: {' '.join(words)}")
    unknown = [s for s in FLAGS.settings if s not in SETTINGS]
    if unknown:
        raise app.UsageError(f"Unknown --settings {unknown}; use {', '.join(SETTINGS)}.")
    if FLAGS.json:  # written after all the runs: a bad path fails now, not after them
        throughput.check_output_file("json", FLAGS.json)
    check_models()
    if FLAGS.compare_torch:  # on by default here: without PyTorch every run would fail
        try:
            throughput.check_torch(
                [name for name in ("vit", "resnet") if name in FLAGS.models])
        except UserError as e:
            raise UserError(throughput.NO_TORCH.replace(
                "or drop --compare_torch.", "or pass --nocompare_torch (no PyTorch ratios).")
            ) from e
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in FLAGS.settings:
            runs[name] = run_setting(name, extra, os.path.join(tmp, f"{name}.json"))
            print(f"{name}: done", file=sys.stderr, flush=True)
    print(table(runs))
    if FLAGS.json:
        throughput.write_json(FLAGS.json, {"settings": {n: SETTINGS[n] for n in runs},
                                           "runs": runs})
    if any("error" in run for run in runs.values()):  # as cer_jax.bench's failed model
        sys.exit(1)


if __name__ == "__main__":
    cli.run(main)
