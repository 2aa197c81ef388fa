r"""Faces per second of `cer_jax.predict` on a video, end to end and per stage.

    python -m cer_jax.bench.faces [--frames=200] [--members=configs/vit.py:smoke,...]

Builds an ensemble of untrained members of the given configs (the speed of prediction does not
depend on the weights), writes a video of `--frames` frames from matplotlib's sample portrait
(one face per frame), runs `cer_jax.predict.run` on it twice (the first run compiles) and times
the Haar detector alone, so the table says which stage bounds the rate.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
import time
from collections.abc import Sequence

import cv2
import ml_collections
import numpy as np
from absl import flags
from matplotlib import cbook

from cer_jax import cli, ensemble, faces, predict, train_state
from cer_jax.config_loading import load_config
from cer_jax.errors import UserError
from cer_jax.fusion import strategies

_FRAMES = flags.DEFINE_integer("frames", 200, "Video frames (one face each).", lower_bound=1)
_MEMBERS = flags.DEFINE_list(
    "members", ["configs/vit.py:smoke", "configs/resnet50.py:smoke"], "Member configs."
)
CLASSES = [f"class {i}" for i in range(7)]


def build_ensemble(directory: str, specs: Sequence[str]) -> str:
    members = []
    for index, spec in enumerate(specs):
        config = load_config(spec)
        config.dataset_info = ml_collections.ConfigDict(
            {"class_names": CLASSES, "num_classes": len(CLASSES)}
        )
        model = train_state.create_model(config, len(CLASSES), seed=index)
        members.append((config.member, model, config))
    # Uniform weights need only the member count: one dummy row to fit them on.
    dummy = strategies.FusionData(
        logits=np.zeros((len(specs), 1, len(CLASSES)), np.float32),
        features=tuple(np.zeros((1, 1), np.float32) for _ in specs),
        labels=np.zeros(1, np.int64),
    )
    fitted = strategies.fit_strategy("uniform_probabilities", dummy)
    return str(ensemble.write_ensemble(f"{directory}/ensemble", members, fitted, CLASSES))


def write_video(path: str, frames: int) -> np.ndarray:
    portrait = cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    height, width = portrait.shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 25, (width, height))
    for i in range(frames):
        writer.write(np.roll(portrait, i % 40, axis=1))  # a small drift, the face stays whole
    writer.release()
    return cv2.cvtColor(portrait, cv2.COLOR_BGR2RGB)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:  # was ignored: `... configs/manet.py` timed the default members
        raise cli.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not _MEMBERS.value:  # was a ZeroDivisionError's traceback
        raise UserError("--members is empty: name the member configs, e.g. "
                        "--members=configs/vit.py:smoke,configs/resnet50.py:smoke.")
    directory = tempfile.mkdtemp(prefix="cer_jax_faces_")
    try:
        measure(directory)
    finally:  # the ensemble and the video are scratch: gone also after an error or Ctrl-C
        shutil.rmtree(directory, ignore_errors=True)


def measure(directory: str) -> None:
    """Builds the ensemble and the video in `directory`, times them, prints the table."""
    ensemble_dir = build_ensemble(directory, _MEMBERS.value)
    video = f"{directory}/video.avi"
    portrait = write_video(video, _FRAMES.value)
    rates = []
    for _ in range(2):
        start = time.perf_counter()
        predict.run([video], ensemble=ensemble_dir, out=f"{directory}/rows.csv",
                    show_progress=False)
        seconds = time.perf_counter() - start
        with open(f"{directory}/rows.csv") as rows:
            faces_found = sum(1 for row in csv.DictReader(rows) if row["predicted_class"])
        rates.append((_FRAMES.value / seconds, faces_found / seconds, faces_found))
    detector = faces.load_detector("haar")
    start = time.perf_counter()
    for _ in range(20):
        detector(portrait)
    detection = 20 / (time.perf_counter() - start)
    height, width = portrait.shape[:2]
    (_, first, _), (frames_rate, faces_rate, found) = rates
    print(f"| video | members | faces found | end to end, first run (compiles) | end to end "
          f"| Haar alone |\n|---|---|---:|---:|---:|---:|\n"
          f"| {_FRAMES.value} frames {width}x{height} | {', '.join(_MEMBERS.value)} | {found} | "
          f"{first:.1f} faces/s | {faces_rate:.1f} faces/s ({frames_rate:.1f} frames/s) | "
          f"{detection:.1f} frames/s |")


if __name__ == "__main__":
    cli.run(main)
