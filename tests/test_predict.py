"""python -m cer_jax.predict end to end on real photographs, a written video and bad inputs."""

import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from test_ensemble import build_tiny_ensemble
from test_faces import grace_hopper, needs_haar, no_face_photo

from cer_jax import predict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ensemble_dir(tmp_path_factory):
    path, _, _ = build_tiny_ensemble(tmp_path_factory.mktemp("ens") / "ensemble")
    return os.fspath(path)


def write_video(path, frames, fps=10.0):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def video_frames():
    """12 frames: the portrait drifting right (0-5), a backpack (6-7), the portrait (8-11)."""
    person = cv2.resize(grace_hopper(), (256, 300), interpolation=cv2.INTER_AREA)
    empty = cv2.resize(no_face_photo(), (256, 300))
    frames = []
    for i in range(12):
        if i in (6, 7):
            frames.append(empty)
        else:
            frames.append(np.roll(person, 2 * i, axis=1))
    return frames


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@needs_haar
def test_photos_and_bad_inputs_each_give_a_row(tmp_path, ensemble_dir):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    cv2.imwrite(os.fspath(inputs / "sub" / "hopper.jpg"), cv2.cvtColor(grace_hopper(),
                                                                        cv2.COLOR_RGB2BGR))
    cv2.imwrite(os.fspath(inputs / "backpack.png"), cv2.cvtColor(no_face_photo(),
                                                                 cv2.COLOR_RGB2BGR))
    (inputs / "empty.jpg").write_bytes(b"")
    (inputs / "text.jpg").write_text("not a picture\n")
    write_video(tmp_path / "full.avi", video_frames())
    data = (tmp_path / "full.avi").read_bytes()
    (inputs / "truncated.avi").write_bytes(data[: len(data) // 2])
    (inputs / "garbage.mp4").write_bytes(b"\x00" * 1000)
    out = tmp_path / "rows.csv"
    status = predict.run([os.fspath(inputs)], ensemble=ensemble_dir, out=os.fspath(out),
                         annotate=os.fspath(tmp_path / "annotated"), show_progress=False)
    assert status == 1
    rows = read_csv(out)
    by_name = {}
    for row in rows:
        by_name.setdefault(os.path.basename(row["source"]), []).append(row)
    hopper = by_name["hopper.jpg"]
    assert [r["status"] for r in hopper] == ["ok"]
    assert hopper[0]["predicted_class"] and float(hopper[0]["w"]) > 100
    probabilities = [float(hopper[0][predict.column_name(c)]) for c in predict.ABAW7_CLASSES]
    assert abs(sum(probabilities) - 1) < 1e-4
    assert hopper[0]["member_vit"] in predict.ABAW7_CLASSES
    assert by_name["backpack.png"][0]["status"] == "no face found"
    assert by_name["empty.jpg"][0]["status"] == "error: empty file"
    assert by_name["text.jpg"][0]["status"] == "error: not a readable image"
    assert by_name["garbage.mp4"][0]["status"].startswith("error:")
    truncated = [r["status"] for r in by_name["truncated.avi"]]
    assert any(s.startswith("error:") for s in truncated), truncated
    assert sorted(os.listdir(tmp_path / "annotated"))[:2] == ["backpack.jpg", "hopper.jpg"]


@needs_haar
def test_video_tracking_smoothing_and_the_submission(tmp_path, ensemble_dir):
    video = tmp_path / "clip7.avi"
    write_video(video, video_frames())
    frames = tmp_path / "frames.txt"
    listed = ["clip7/00001.jpg", "clip7/00007.jpg", "clip7/00008.jpg", "clip7/00012.jpg",
              "missing/00003.jpg"]
    # With a byte-order mark, as Windows tools save a text file.
    frames.write_bytes(("\ufeffimage_location\n" + "\n".join(listed) + "\n").encode())

    def rows(window, submission):
        out = tmp_path / f"rows{window}.jsonl"
        status = predict.run(
            [os.fspath(video)], ensemble=ensemble_dir, out=os.fspath(out), batch_size=4,
            smooth_window=window, abaw_frames=os.fspath(frames),
            submission=os.fspath(submission), annotate=os.fspath(tmp_path / "ann"),
            show_progress=False,
        )
        assert status == 1  # the "missing" video
        return [json.loads(line) for line in out.read_text().splitlines()]

    raw = rows(1, tmp_path / "raw.txt")
    smooth = rows(3, tmp_path / "submission.txt")
    assert [r["frame"] for r in raw] == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11]
    assert {r["track"] for r in raw} == {0}  # one face, tracked across the gap
    assert raw[1]["timestamp_s"] == pytest.approx(0.1)
    classes = list(predict.ABAW7_CLASSES)
    p = {r["frame"]: np.array([r["probabilities"][c] for c in classes]) for r in raw}
    q = {r["frame"]: np.array([r["probabilities"][c] for c in classes]) for r in smooth}
    np.testing.assert_allclose(q[1], (p[0] + p[1] + p[2]) / 3, atol=1e-5)
    np.testing.assert_allclose(q[0], (p[0] + p[1]) / 2, atol=1e-5)
    np.testing.assert_allclose(q[8], (p[8] + p[9]) / 2, atol=1e-5)  # frame 7 has no face

    lines = (tmp_path / "submission.txt").read_text().splitlines()
    assert lines[0] == ("image_location,Fearfully_Surprised,Happily_Surprised,Sadly_Surprised,"
                        "Disgustedly_Surprised,Angrily_Surprised,Sadly_Fearful,Sadly_Angry")
    cls = {f: int(np.argmax(v)) for f, v in q.items()}
    # Frame 7 (1-based; index 6) has no face: the nearest with one is index 5 (before 8).
    assert lines[1:] == [
        f"clip7/00001.jpg,{cls[0]}", f"clip7/00007.jpg,{cls[5]}",
        f"clip7/00008.jpg,{cls[5]}", f"clip7/00012.jpg,{cls[11]}",
        f"missing/00003.jpg,{predict.ABAW_FALLBACK_CLASS}",
    ]
    annotated = cv2.VideoCapture(os.fspath(tmp_path / "ann" / "clip7.avi"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 12


def test_aligned_inputs_and_user_errors(tmp_path, ensemble_dir):
    face = tmp_path / "face.png"
    cv2.imwrite(os.fspath(face), cv2.resize(grace_hopper()[90:350, 130:390], (100, 100)))
    out = tmp_path / "rows.csv"
    assert predict.run([os.fspath(face)], ensemble=ensemble_dir, out=os.fspath(out),
                       aligned=True, flip_tta=True, show_progress=False) == 0
    row = read_csv(out)[0]
    assert (row["status"], row["x"], row["w"]) == ("ok", "0.0", "100.0")
    eleven, _, _ = build_tiny_ensemble(tmp_path / "eleven", class_names=[f"c{i}" for i in
                                                                         range(11)])
    (tmp_path / "list.txt").write_text("v/00001.jpg\n")
    with pytest.raises(predict.UsageError, match="compound_abaw7"):
        predict.run([os.fspath(face)], ensemble=os.fspath(eleven), aligned=True,
                    abaw_frames=os.fspath(tmp_path / "list.txt"), show_progress=False)
    for folder in ("a", "b"):  # the submission finds videos by name: one name, one video
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "video_1.mp4").write_bytes(b"")
    with pytest.raises(predict.UsageError) as error:
        predict.run([os.fspath(tmp_path / "a"), os.fspath(tmp_path / "b")],
                    ensemble=ensemble_dir, abaw_frames=os.fspath(tmp_path / "list.txt"),
                    show_progress=False)
    assert str(error.value) == (
        f"--abaw-frames finds videos by name, and 2 inputs are named 'video_1': "
        f"{tmp_path / 'a' / 'video_1.mp4'}, {tmp_path / 'b' / 'video_1.mp4'}; pass only the "
        "C-EXPR-DB videos.")
    result = subprocess.run(
        [sys.executable, "-m", "cer_jax.predict", f"--ensemble={tmp_path / 'none'}",
         os.fspath(face)], capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not an ensemble directory" in result.stderr


def test_a_folder_says_which_files_it_skips(tmp_path, caplog):
    for name in ("a.gif", "b.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert predict.expand_inputs([os.fspath(tmp_path)]) == [
        predict.Source(os.fspath(tmp_path / "b.JPG"), "image")]
    assert (f"Skipped 2 file(s) in {tmp_path} that are neither images nor videos by extension "
            "(e.g. a.gif, notes.txt)") in caplog.text
