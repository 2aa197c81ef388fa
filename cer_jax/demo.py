r"""The whole method end to end on synthetic data, on a laptop CPU in well under 15 minutes.

    python -m cer_jax.demo --out=/tmp/cer_demo

Draws the synthetic RAF-DB compound tree and builds its TFDS dataset, trains the small (`:smoke`)
variants of the vit, manet and resnet50 members on it, fuses them (every strategy, ablation over
member subsets) and prints the report table. Everything lands in --out:

    <out>/data/       the synthetic tree and its TFDS build
    <out>/<member>/   each member's workdir (checkpoints, TensorBoard, config.json, export/)
    <out>/fusion/     report.md, report.json, PNGs, TensorBoard

A member is called the same everywhere: its `--models` value, its config file
(configs/<member>.py, whose config.member it is), its workdir folder and its name in the report.
The synthetic faces are drawings, not people: the numbers say the pipeline works, nothing about
real faces. `--steps_scale` shrinks or grows every training run (tests use a tiny value).
Run again with the same --out, the demo resumes and skips each member whose run with the same
settings finished and exported (`finished_member`); a member's checkpoints of other settings
(another --steps_scale or cer_jax version) stop it before any work (`check_same_settings`).
"""

from __future__ import annotations

import contextlib
import difflib
import glob
import json
import logging as std_logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence

import ml_collections
from absl import flags, logging

from cer_jax import cli, errors, paths, synthetic
from cer_jax.config_loading import load_config
from cer_jax.errors import Terminated
from cer_jax.fusion import evaluator

# Written into --out on the first run: a later run may write there again (and resume).
DEMO_MARKER = ".cer_jax_demo"

# Training steps per member at --steps_scale=1, sized (with the default synthetic tree) for
# about 4 minutes on 2 CPU cores in total.
TRAIN_STEPS = {"vit": 3000, "manet": 700, "resnet50": 1000}
EVALUATIONS_PER_RUN = 4
# Seconds each member took at --steps_scale=1 on a development machine (2 CPU cores; the
# README's demo run of 2026-12-06, the slower of its two machines), and the rest of that run
# (start-up, data, fusion): the opening estimate, on the safe side.
MEMBER_SECONDS = {"vit": 73, "manet": 308, "resnet50": 151}
OTHER_SECONDS = 62

_OUT = cli.define_path_flag("out", "/tmp/cer_jax_demo", "Folder for data, workdirs and report.")
_STEPS_SCALE = flags.DEFINE_float(
    "steps_scale", 1.0, "Multiplies every training run's number of steps (tests: e.g. 0.02)."
)


def check_steps_scale(scale: float) -> bool:
    """--steps_scale: a finite number > 0 (inf passed a `> 0` check and was OverflowError's
    traceback at the step count's round())."""
    if not 0 < scale < math.inf:
        raise flags.ValidationError(
            "--steps_scale must be a finite number > 0 (a multiplier of the training steps).")
    return True


flags.register_validator("steps_scale", check_steps_scale)
_NUM_TRAIN_IMAGES = flags.DEFINE_integer(
    "num_train_images",
    synthetic.NUM_TRAIN_IMAGES,
    "Synthetic RAF-DB train images (train_fit + validation).",
)
_NUM_TEST_IMAGES = flags.DEFINE_integer(
    "num_test_images", synthetic.NUM_TEST_IMAGES, "Synthetic RAF-DB test images."
)
_MODELS = flags.DEFINE_list(
    "models",
    list(TRAIN_STEPS),
    f"Members to train and fuse (configs/<member>.py:smoke), of: {', '.join(TRAIN_STEPS)}.",
)


def check_models(members: Sequence[str]) -> bool:
    """--models: known member names, each once; the error names the misspelt one."""
    choices = ", ".join(TRAIN_STEPS)
    for name in members:
        if name not in TRAIN_STEPS:
            close = difflib.get_close_matches(name, TRAIN_STEPS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise flags.ValidationError(
                f"--models: {name!r} is not a member{hint}; give one or more of: {choices}.")
    if not members or len(set(members)) != len(members):
        raise flags.ValidationError(f"--models: give one or more of: {choices}, each once.")
    return True


flags.register_validator("models", check_models)


class DemoStopped(Terminated):
    """A member's training was stopped by SIGTERM before its end, so there is nothing to fuse
    yet (Ctrl-C raises trainer.Interrupted instead)."""


def banner(stage: int, total: int, text: str) -> None:
    print(f"\n=== [{stage}/{total}] {text} ===", flush=True)


def train_steps(member: str, steps_scale: float) -> int:
    """The member's demo step count: TRAIN_STEPS scaled, at least 2."""
    return max(2, round(TRAIN_STEPS[member] * steps_scale))


def expected_seconds(models: Sequence[str], steps_scale: float,
                     done: Mapping[str, float] | None = None) -> float:
    """The run's length on the development machine's 2 CPU cores, from MEMBER_SECONDS; `done`:
    each member's part trained earlier (1: finished and skipped), which a rerun does not redo."""
    done = done or {}
    return OTHER_SECONDS + steps_scale * sum(MEMBER_SECONDS[m] * (1 - done.get(m, 0))
                                             for m in models)


def trained_part(config: ml_collections.ConfigDict, workdir: str) -> float:
    """The part of `workdir`'s run (of `config`'s steps) that its checkpoints hold: 1 when
    finished with a current export, else from its last save, which the trainer resumes."""
    from cer_jax import checkpointing

    if finished_member(config, workdir) is not None:
        return 1.0
    saved = checkpointing.latest_saved_step(workdir) or 0
    return min(saved / config.training.num_steps, 0.99)  # still to export at least


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = json.loads(json.dumps(value))  # tuples as config.json has them
    return flat


def other_settings(config: ml_collections.ConfigDict, workdir: str,
                   ignore: Sequence[str] = ()) -> list[str]:
    """'KEY=THERE there, HERE here' for each key of `config` that `workdir`'s config.json
    records otherwise (its keys outside `ignore`); [] for the same settings."""
    from cer_jax import checkpointing

    saved = _flat(checkpointing.load_config(workdir).to_dict())
    # The trainer adds keys (dataset_info), fills the Nones and resolves the 'auto's; every
    # other key must match.
    return [(f"{key}={saved[key]!r} there" if key in saved else f"{key} unset there")
            + f", {value!r} here"
            for key, value in _flat(config.to_dict()).items()
            if value not in (None, "auto") and key not in ignore
            and (key not in saved or saved[key] != value)]


def finished_member(config: ml_collections.ConfigDict, workdir: str) -> dict | None:
    """The export's manifest when `workdir` already holds this config's finished run with a
    current export (a rerun of the demo skips it); None when it must train or export."""
    from cer_jax import checkpointing, export

    if (checkpointing.latest_saved_step(workdir) != config.training.num_steps
            or not export.export_is_current(workdir) or other_settings(config, workdir)):
        return None
    return export.read_manifest(workdir)


def check_same_settings(configs: dict[str, ml_collections.ConfigDict], out: str) -> None:
    """Before any drawing: the trainer resumes (or, at its last step, only exports) a workdir
    of another step count or recipe, so an earlier demo's member of another --steps_scale or
    cer_jax version would come out as a mix of both runs, or as the old run under the new
    step count, and the report would not say so."""
    from cer_jax import checkpointing

    stale: dict[str, list[str]] = {}
    for member, config in configs.items():
        workdir = os.path.join(out, member)
        if checkpointing.holds_checkpoints(workdir):  # else the trainer starts anew there
            # The data's place: another spelling of --out (a link) is the same data, which
            # check_same_data compares by size.
            differing = other_settings(config, workdir, ignore=("dataset.cache_dir",))
            if differing:
                stale[member] = sorted(differing,
                                       key=lambda text: not text.startswith("training.num_steps="))
    if stale:
        (member, differing), *others = stale.items()
        more = f"; and {len(differing) - 2} more" if len(differing) > 2 else ""
        also = f", as do its {' and '.join(name for name, _ in others)}" if others else ""
        folders = " ".join(os.path.join(out, name) for name in stale)
        raise synthetic.OutputPathError(
            f"--out={out}: its {member} holds a run of other settings "
            f"({'; '.join(differing[:2])}{more}){also}, from a demo of another --steps_scale or "
            f"cer_jax version: give that --steps_scale again, delete {folders} to train "
            f"{'them' if others else member} anew, or give a new --out.")


def check_same_data(configs: dict[str, ml_collections.ConfigDict], out: str) -> None:
    """Before any drawing: a member's workdir from an earlier demo on other synthetic data
    would be resumed or exported on this data as if it were its own (nothing else tells)."""
    from cer_jax import checkpointing

    keys = {"synthetic_num_train_images": "num_train_images",
            "synthetic_num_test_images": "num_test_images"}
    for member, config in configs.items():
        workdir = os.path.join(out, member)
        # A run stopped before its first save left config.json alone: the trainer starts anew.
        if not checkpointing.holds_checkpoints(workdir):
            continue
        saved = checkpointing.load_config(workdir).dataset
        if any(saved.get(key) != config.dataset[key] for key in keys):
            given = " ".join(f"--{flag}={saved.get(key)}" for key, flag in keys.items())
            raise synthetic.OutputPathError(
                f"--out={out}: its {member} was trained on other synthetic data ({given}); "
                "give those again, or a new --out.")


def scores_line(step, scores: dict) -> str:
    return "    best step {}: {}".format(step, ", ".join(
        f"{split} acc {m['accuracy']:.3f} macro F1 {m['macro_f1']:.3f}"
        for split, m in scores.items()))


def member_config(
    member: str,
    data_dir: str,
    steps_scale: float,
    num_train_images: int,
    num_test_images: int,
) -> ml_collections.ConfigDict:
    """The member's `:smoke` config on the demo's synthetic data, with the demo's step count."""
    config = load_config(f"configs/{member}.py:smoke")
    if config.member != member:
        raise ValueError(
            f"configs/{member}.py names its member {config.member!r}: a member's config file, "
            "config.member, --models value and workdir must all use the same name."
        )
    config.dataset.synthetic = True
    config.dataset.cache_dir = data_dir
    config.dataset.synthetic_num_train_images = num_train_images
    config.dataset.synthetic_num_test_images = num_test_images
    steps = train_steps(member, steps_scale)
    config.training.num_steps = steps
    config.training.eval_every_steps = max(2, steps // EVALUATIONS_PER_RUN)
    config.training.log_every_steps = max(1, steps // (2 * EVALUATIONS_PER_RUN))
    config.schedule.warmup_steps = min(config.schedule.get("warmup_steps") or 0, steps // 10)
    return config


def check_batches(configs: dict[str, ml_collections.ConfigDict], split_sizes: dict) -> None:
    """Before any training: each member's batch fits in the train split the data gave (else
    the trainer names training.global_batch_size, which is no flag of the demo's)."""
    for member, config in configs.items():
        batch, split = config.training.global_batch_size, config.dataset.train_split
        if batch > split_sizes[split]:
            raise synthetic.SyntheticSizeError(
                f"--num_train_images={config.dataset.synthetic_num_train_images} gives "
                f"{split_sizes[split]} {split} images, fewer than {member}'s batch of {batch}: "
                "give more train images (the default is "
                f"{synthetic.NUM_TRAIN_IMAGES}).")


def prepare_out(out: str) -> None:
    """Before any work: `out` is new, empty or an earlier demo's (its marker, or the synthetic
    data an older demo left), never a folder of the user's own, whose `fusion/` the report
    would be merged into and whose workdirs a member would resume; and it can be written."""
    synthetic.check_folder("out", out)
    earlier_demo = (os.path.exists(os.path.join(out, DEMO_MARKER))
                    or os.path.isdir(os.path.join(out, "data", "synthetic")))
    if os.path.isdir(out) and os.listdir(out) and not earlier_demo:
        raise synthetic.OutputPathError(
            f"--out={out} is a folder with other files (no {DEMO_MARKER}: not an earlier demo's); "
            "the demo would write data/, a workdir per member and fusion/ into it, and resume a "
            "workdir it found there. Give a new or empty folder.")
    try:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, DEMO_MARKER), "w") as f:
            f.write("Written by python -m cer_jax.demo: a later demo may write here again.\n")
    except OSError as e:
        raise synthetic.OutputPathError(
            f"--out={out}: cannot write there ({paths.error_reason(e)}); give a folder you can "
            "write."
        ) from e


@contextlib.contextmanager
def full_disk_as_one_line(out: str) -> Iterator[None]:
    """A disk that fills up midway (the synthetic drawing, a checkpoint, an export, the report)
    was a traceback of whichever library wrote, at its end Orbax's RESOURCE_EXHAUSTED: the fix
    is the user's, and the same command then resumes."""
    try:
        yield
    except Exception as e:
        full = None if isinstance(e, synthetic.OutputPathError) else errors.disk_full(e)
        if full is None:
            raise
        raise synthetic.OutputPathError(
            f"--out={out}: {full}; free space there, or give a new --out on a larger disk, and "
            "run the same command again: it resumes where it stopped.") from e


def run_demo(
    out: str,
    steps_scale: float = 1.0,
    models: Sequence[str] = tuple(TRAIN_STEPS),
    num_train_images: int = synthetic.NUM_TRAIN_IMAGES,
    num_test_images: int = synthetic.NUM_TEST_IMAGES,
) -> dict:
    """Data -> trained members -> fusion report; returns the fusion report.

    `models`: member names (keys of TRAIN_STEPS); each trains into `<out>/<member>`.
    """
    synthetic.check_sizes("compound", num_train_images, num_test_images,  # before any drawing
                          keys=synthetic.FLAG_KEYS)
    synthetic.check_folder("out", out)  # as given: abspath would make gs://b/x ./gs:/b/x
    out = os.path.abspath(out)
    prepare_out(out)
    with full_disk_as_one_line(out):
        return _run_stages(out, steps_scale, models, num_train_images, num_test_images)


def _run_stages(out: str, steps_scale: float, models: Sequence[str], num_train_images: int,
                num_test_images: int) -> dict:
    """run_demo's work, once --out is checked and marked."""
    from cer_jax import trainer
    from cer_jax.data import pipeline
    from cer_jax.fusion import report as report_lib

    data_dir = os.path.join(out, "data")
    total = len(models) + 2
    start = time.perf_counter()
    configs = {
        member: member_config(member, data_dir, steps_scale, num_train_images, num_test_images)
        for member in models
    }

    check_same_data(configs, out)
    check_same_settings(configs, out)
    # A rerun's estimate: what is left (a finished demo only fuses again).
    done = {member: trained_part(config, os.path.join(out, member))
            for member, config in configs.items()}
    seconds = expected_seconds(models, steps_scale, done)
    about = f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
    earlier = [member for member in models if done[member]]
    resumed = f" (less what {', '.join(earlier)} trained here earlier)" if earlier else ""
    print(f"The demo: {total} stages, about {about}{resumed} on 2 CPU cores like the "
          "development machine's (more cores or an accelerator: less). Stop it at any time "
          "(Ctrl-C); the same command resumes, skipping finished members.", flush=True)
    banner(1, total, f"Synthetic RAF-DB compound ({num_train_images} train / {num_test_images} "
                     f"test images): drawing and building into {data_dir}")
    info = pipeline.get_dataset_info(configs[models[0]])
    print(f"    classes: {len(info.class_names)}; split sizes: {dict(info.split_sizes)}",
          flush=True)
    check_batches(configs, dict(info.split_sizes))

    workdirs = []
    for stage, member in enumerate(models, start=2):
        config = configs[member]
        workdir = os.path.join(out, member)
        done = finished_member(config, workdir)
        if done is not None:
            banner(stage, total, f"{member}: trained earlier in {workdir} "
                                 f"({config.training.num_steps} steps), skipped")
            print(scores_line(done["step"], done["metrics"]), flush=True)
            workdirs.append(workdir)
            continue
        banner(stage, total, f"Training {member} ({config.training.num_steps} steps) in {workdir}")
        result = trainer.train_and_evaluate(config, workdir)
        if result["stopped"]:  # SIGTERM: Ctrl-C raised trainer.Interrupted already
            raise DemoStopped(f"{member} stopped at step {result['step']} "
                              f"({result['stopped']}): run the same command again to resume.")
        print(scores_line(result.get("best_step"), result.get("export", {})), flush=True)
        workdirs.append(workdir)

    fusion_dir = os.path.join(out, "fusion")
    banner(total, total, f"Fusing {', '.join(models)} into {fusion_dir}")
    report = evaluator.fuse(
        evaluator.resolve_config(evaluator.load_default_config(), workdirs=workdirs, out=fusion_dir)
    )
    print("\n" + report_lib.summary_table(report), flush=True)
    print(f"\nDone in {time.perf_counter() - start:.0f} s. Where everything is:")
    print(f"    data (synthetic tree + TFDS build): {data_dir}")
    for member, workdir in zip(models, workdirs, strict=True):
        print(f"    {member} workdir (checkpoints, export/, TensorBoard): {workdir}")
    print(f"    fusion report: {os.path.join(fusion_dir, 'report.md')} (+ report.json, PNGs)")
    ensemble = os.path.join(fusion_dir, evaluator.ENSEMBLE_DIR)
    print(f"    ensemble (for cer_jax.predict): {ensemble}")
    print("Next:")
    print(f"    tensorboard --logdir={out}")
    print(f"    python -m cer_jax.predict --ensemble={ensemble} PHOTO_OR_VIDEO")
    # This run's tree (data/ may hold an earlier run's of other sizes too).
    faces = sorted(glob.glob(os.path.join(
        data_dir, "synthetic", f"*-{num_train_images}-{num_test_images}-*", "Image", "aligned",
        "test_0001_aligned.jpg")))
    if faces:
        print(f"    python -m cer_jax.predict --ensemble={ensemble} --aligned {faces[0]}"
              "  (a synthetic face)")
    sys.stdout.flush()
    return report


def not_demo_chatter(record: std_logging.LogRecord) -> bool:
    """False for the lines that buried the demo's own: TFDS's notes on each dataset it opens
    (4 a split, ~150 in a small demo) and CLU's echo of the hyper-parameters, the images and
    every class's F1 (the trainer logs each evaluation's summary); warnings of others stay."""
    path = record.pathname or ""
    if f"{os.sep}tensorflow_datasets{os.sep}" in path:
        return record.levelno >= std_logging.ERROR
    if path.endswith(os.path.join("clu", "metric_writers", "logging_writer.py")):
        text = record.getMessage()
        return not ("[Hyperparameters]" in text or "Got images" in text or "/f1/" in text)
    return True


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    cli.quiet_orbax()
    logging.get_absl_handler().addFilter(not_demo_chatter)
    run_demo(
        _OUT.value,
        _STEPS_SCALE.value,
        _MODELS.value,
        _NUM_TRAIN_IMAGES.value,
        _NUM_TEST_IMAGES.value,
    )


if __name__ == "__main__":
    cli.run(main)
