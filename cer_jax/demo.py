r"""The whole method end to end on synthetic data, on a laptop CPU in well under 15 minutes.

    python -m cer_jax.demo --out=/tmp/cer_demo

Draws the synthetic RAF-DB compound tree and builds its TFDS dataset, trains the small (`:smoke`)
ViT, MA-Net and ResNet on it, fuses them (every strategy, ablation over member subsets) and
prints the report table. Everything lands in --out:

    <out>/data/      the synthetic tree and its TFDS build
    <out>/<model>/   each member's workdir (checkpoints, TensorBoard, config.json, export/)
    <out>/fusion/    report.md, report.json, PNGs, TensorBoard

The synthetic faces are drawings, not people: the numbers say the pipeline works, nothing about
real faces. `--steps_scale` shrinks or grows every training run (tests use a tiny value).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

import ml_collections
from absl import app, flags

from cer_jax import fusion

# Config files import their shared base as `configs.common`: make the repository importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_OUT = flags.DEFINE_string("out", "/tmp/cer_jax_demo", "Folder for data, workdirs and report.")
_STEPS_SCALE = flags.DEFINE_float(
    "steps_scale", 1.0, "Multiplies every training run's number of steps (tests: e.g. 0.02)."
)
_NUM_TRAIN = flags.DEFINE_integer(
    "num_train_images", 3000, "Synthetic RAF-DB train images (train_fit + validation)."
)
_NUM_TEST = flags.DEFINE_integer("num_test_images", 300, "Synthetic RAF-DB test images.")
_MODELS = flags.DEFINE_list(
    "models", ["vit", "manet", "resnet50"], "Members to train and fuse (configs/<name>.py:smoke)."
)

# Sized (with the image counts above) for about 6 minutes on 2 CPU cores in total.
TRAIN_STEPS = {"vit": 3000, "manet": 700, "resnet50": 1000}
EVALUATIONS_PER_RUN = 4


def banner(stage: int, total: int, text: str) -> None:
    print(f"\n=== [{stage}/{total}] {text} ===", flush=True)


def member_config(
    model: str, data_dir: str, steps_scale: float, num_images: tuple[int, int]
) -> ml_collections.ConfigDict:
    """The model's `:smoke` config on the demo's synthetic data, with the demo's step count."""
    from cer_jax.config_loading import load_config

    config = load_config(f"configs/{model}.py:smoke")
    config.dataset.synthetic = True
    config.dataset.cache_dir = data_dir
    config.dataset.synthetic_num_train, config.dataset.synthetic_num_test = num_images
    steps = max(2, round(TRAIN_STEPS.get(model, 200) * steps_scale))
    config.training.num_steps = steps
    config.training.eval_every_steps = max(2, steps // EVALUATIONS_PER_RUN)
    config.training.log_every_steps = max(1, steps // (2 * EVALUATIONS_PER_RUN))
    config.schedule.warmup_steps = min(config.schedule.get("warmup_steps") or 0, steps // 10)
    return config


def fusion_config(workdirs: Sequence[str], out: str) -> ml_collections.ConfigDict:
    from cer_jax import fusion

    return fusion.resolve_config(fusion.load_default_config(), workdirs=workdirs, out=out)


def run_demo(
    out: str,
    steps_scale: float = 1.0,
    models: Sequence[str] = tuple(TRAIN_STEPS),
    num_images: tuple[int, int] = (3000, 300),
) -> dict:
    """Data -> trained members -> fusion report; returns the fusion report.

    `num_images`: (train, test) images of the synthetic RAF-DB compound tree.
    """
    from cer_jax import trainer
    from cer_jax.data import pipeline
    from cer_jax.fusion import report as report_lib

    out = os.path.abspath(out)
    data_dir = os.path.join(out, "data")
    total = len(models) + 2
    start = time.perf_counter()

    banner(1, total, f"Synthetic RAF-DB compound ({num_images[0]} train / {num_images[1]} "
                     f"test images): drawing and building into {data_dir}")
    info = pipeline.get_dataset_info(
        member_config(models[0], data_dir, steps_scale, num_images)
    )
    print(f"    classes: {len(info.class_names)}; split sizes: {dict(info.split_sizes)}",
          flush=True)

    workdirs = []
    for stage, model in enumerate(models, start=2):
        config = member_config(model, data_dir, steps_scale, num_images)
        workdir = os.path.join(out, model)
        banner(stage, total, f"Training {model} ({config.training.num_steps} steps) in {workdir}")
        result = trainer.train_and_evaluate(config, workdir)
        scores = result.get("export", {})
        print("    best step {}: {}".format(result.get("best_step"), ", ".join(
            f"{split} acc {m['accuracy']:.3f} macro F1 {m['macro_f1']:.3f}"
            for split, m in scores.items()
        )), flush=True)
        workdirs.append(workdir)

    fusion_dir = os.path.join(out, "fusion")
    banner(total, total, f"Fusing {', '.join(models)} into {fusion_dir}")
    report = fusion.fuse(fusion_config(workdirs, fusion_dir))
    print("\n" + report_lib.summary_table(report), flush=True)
    print(f"\nDone in {time.perf_counter() - start:.0f} s. Where everything is:")
    print(f"    data (synthetic tree + TFDS build): {data_dir}")
    for model, workdir in zip(models, workdirs, strict=True):
        print(f"    {model} workdir (checkpoints, export/, TensorBoard): {workdir}")
    print(f"    fusion report: {os.path.join(fusion_dir, 'report.md')} (+ report.json, PNGs)")
    print(f"    TensorBoard: tensorboard --logdir={out}", flush=True)
    return report


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    fusion.quiet_checkpoint_logs()
    run_demo(_OUT.value, _STEPS_SCALE.value, _MODELS.value, (_NUM_TRAIN.value, _NUM_TEST.value))


if __name__ == "__main__":
    app.run(main)
