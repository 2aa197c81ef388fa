"""python -m cer_jax.predict end to end on real photographs, a written video and bad inputs."""

import csv
import errno
import io
import json
import logging
import os
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unicodedata
import zlib

import cv2
import ml_collections
import numpy as np
import pytest
from test_ensemble import build_tiny_ensemble, with_a_misfit_feature_fusion
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
def test_photos_and_bad_inputs_each_give_a_row(tmp_path, ensemble_dir, caplog):
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
    # Without a frame list no frame asked for is missing: every decoded frame is predicted.
    truncated = [r["status"] for r in by_name["truncated.avi"]]
    assert set(truncated) == {"ok"}, truncated
    assert (f"Video {inputs / 'truncated.avi'}: 6 of the 12 frames its container counts were "
            "decoded (an edit list that hides some, or a truncated file); every decoded frame "
            "was predicted.") in caplog.text
    assert sorted(os.listdir(tmp_path / "annotated"))[:2] == ["backpack.jpg", "hopper.jpg"]


@needs_haar
def test_video_tracking_smoothing_and_the_submission(tmp_path, ensemble_dir, caplog):
    caplog.set_level(logging.INFO)
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
    # The frames without a face have no row: the log says how many (it said nothing).
    assert (f"Video {video}: no face found in 2 of its 12 processed frames; they have no rows "
            "(the submission gives a listed one the class of the nearest frame with a face)."
            ) in caplog.text
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
    # Frames 7 and 8 (1-based; indices 6 and 7) have no face: the nearest with one is index 5
    # for 6 (before 8), index 8 for 7.
    assert lines[1:] == [
        f"clip7/00001.jpg,{cls[0]}", f"clip7/00007.jpg,{cls[5]}",
        f"clip7/00008.jpg,{cls[8]}", f"clip7/00012.jpg,{cls[11]}",
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
    with pytest.raises(predict.UsageError) as error:  # a detector it would not use
        predict.run([os.fspath(face)], ensemble=ensemble_dir, aligned=True,
                    detector="yunet:face.onnx", show_progress=False)
    assert str(error.value) == (
        "--aligned takes each image as an aligned face and finds none, so "
        "--detector=yunet:face.onnx would not be used: leave one of them out.")
    eleven, _, _ = build_tiny_ensemble(tmp_path / "eleven", class_names=[f"c{i}" for i in
                                                                         range(11)])
    (tmp_path / "list.txt").write_text("v/00001.jpg\n")
    (tmp_path / "v.mp4").write_bytes(b"")  # the listed video must be among the inputs
    with pytest.raises(predict.UsageError, match="compound_abaw7"):
        predict.run([os.fspath(face), os.fspath(tmp_path / "v.mp4")],
                    ensemble=os.fspath(eleven), aligned=True,
                    abaw_frames=os.fspath(tmp_path / "list.txt"),
                    submission=os.fspath(tmp_path / "sub.txt"), show_progress=False)
    for folder in ("a", "b"):  # the submission finds videos by name: one name, one video
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "video_1.mp4").write_bytes(b"")
    (tmp_path / "list.txt").write_text("video_1/00001.jpg\n")
    with pytest.raises(predict.UsageError) as error:
        predict.run([os.fspath(tmp_path / "a"), os.fspath(tmp_path / "b")],
                    ensemble=ensemble_dir, abaw_frames=os.fspath(tmp_path / "list.txt"),
                    show_progress=False)
    assert str(error.value) == (
        f"--abaw_frames finds videos by name, and 2 inputs are named 'video_1': "
        f"{tmp_path / 'a' / 'video_1.mp4'}, {tmp_path / 'b' / 'video_1.mp4'}; pass only the "
        "C-EXPR-DB videos.")
    result = subprocess.run(
        [sys.executable, "-m", "cer_jax.predict", f"--ensemble={tmp_path / 'none'}",
         os.fspath(face)], capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not an ensemble directory" in result.stderr


def test_an_aligned_input_gets_each_members_eval_view_of_the_whole_file(tmp_path, ensemble_dir,
                                                                         monkeypatch):
    """--aligned on a user's own aligned faces (a `folder` dataset's 112x128 crops): each member
    sees what the trainer's evaluation of that file sees, cer_jax.data's decode and eval view of
    the whole image, not of a 100x100 square cut from it first (the tiny ViT squashes the image
    to its input size, as MA-Net's view does: it keeps the sides a square would drop). Faces of
    different sizes (here with a RAF-DB-like 100x100 one) share a batch."""
    import tensorflow as tf
    from flax import nnx

    from cer_jax import ensemble as ensemble_lib
    from cer_jax.data import augment, sources

    files = [tmp_path / "a_face.png", tmp_path / "b_square.png"]
    for path, size in zip(files, ((112, 128), (100, 100)), strict=True):
        face = cv2.resize(grace_hopper()[60:480, 90:450], size, interpolation=cv2.INTER_AREA)
        cv2.imwrite(os.fspath(path), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    model = ensemble_lib.load_ensemble(ensemble_dir)
    predictions = []

    def recording(faces, **kwargs):
        predictions.append(ensemble_lib.Ensemble.predict(model, faces, **kwargs))
        return predictions[-1]

    monkeypatch.setattr(model, "predict", recording)
    monkeypatch.setattr(ensemble_lib, "load_ensemble", lambda _: model)
    for flip_tta in (False, True):
        assert predict.run([os.fspath(tmp_path)], ensemble=ensemble_dir, aligned=True,
                           flip_tta=flip_tta, out=os.fspath(tmp_path / "rows.csv"),
                           show_progress=False) == 0
    assert len(predictions) == 2  # one batch of both faces per run
    for face_index, path in enumerate(files):
        image = sources.decode_image(tf.io.read_file(os.fspath(path)))
        for index, member in enumerate(model.members):
            cfg = ml_collections.ConfigDict({"resize_size": 0, **member.preprocessing})
            network = nnx.merge(member.graphdef, *member.state)
            logits = [np.asarray(network(augment.eval_view(view, cfg).numpy()[None],
                                         train=False).logits[0])
                      for view in (image, image[:, ::-1])]
            for prediction, z in zip(predictions, (logits[0], (logits[0] + logits[1]) / 2),
                                     strict=True):
                expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
                np.testing.assert_allclose(prediction.member_probabilities[index, face_index],
                                           expected, atol=1e-5, err_msg=f"{path} {member.name}")
    # The rows (of the last run, flip TTA) say what the ensemble returned: each probability in
    # its class's column (only their sum was checked), the fused class, each member's class.
    last, names = predictions[-1], model.class_names
    assert model.member_names == ["vit", "resnet"]
    for face_index, row in enumerate(read_csv(tmp_path / "rows.csv")):
        assert row["source"] == os.fspath(files[face_index])
        fused = last.probabilities[face_index]
        assert (row["predicted_class"], int(row["predicted_index"])) == (
            names[int(fused.argmax())], int(fused.argmax()))
        np.testing.assert_allclose([float(row[predict.column_name(c)]) for c in names], fused,
                                   atol=1e-6)
        for index, member in enumerate(model.member_names):
            assert row[f"member_{member}"] == names[
                int(last.member_probabilities[index, face_index].argmax())], member


def test_a_folder_says_which_files_it_skips(tmp_path, caplog):
    for name in ("a.heic", "b.JPG", "c.gif", "d.ts", "e.MTS", "f.m2ts", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert predict.expand_inputs([os.fspath(tmp_path)]) == [
        predict.Source(os.fspath(tmp_path / "b.JPG"), "image"),
        predict.Source(os.fspath(tmp_path / "c.gif"), "image"),  # training reads GIFs too
        *[predict.Source(os.fspath(tmp_path / name), "video")
          for name in ("d.ts", "e.MTS", "f.m2ts")]]
    assert (f"Skipped 2 file(s) in {tmp_path} that are neither images nor videos by extension "
            "(e.g. a.heic, notes.txt)") in caplog.text


def test_a_folders_hidden_files_and_folders_are_left_out(tmp_path):
    """A folder copied from a Mac holds macOS's `._photo.jpg` beside each photo (no image): each
    was a failure row, and the run's exit status 1; a notebook's `.ipynb_checkpoints/` copy
    gave its images' rows twice."""
    (tmp_path / "photo.jpg").write_bytes(b"")
    (tmp_path / "._photo.jpg").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "photo.jpg").write_bytes(b"")
    assert predict.expand_inputs([os.fspath(tmp_path)]) == [
        predict.Source(os.fspath(tmp_path / "photo.jpg"), "image")]
    # Named on the command line, a hidden file is read.
    assert predict.expand_inputs([os.fspath(tmp_path / "._photo.jpg")]) == [
        predict.Source(os.fspath(tmp_path / "._photo.jpg"), "image")]


def test_a_folder_with_links_back_up_its_tree_is_searched_once(tmp_path):
    """Two links to a folder above made every search path 2^40 folders deep (a hang); one link
    found each file 40 times (a warning of 40 'later mentions' of files given once)."""
    photos = tmp_path / "photos"
    for sub in ("a", "b"):
        (photos / sub).mkdir(parents=True)
        os.symlink("..", photos / sub / "up")
    (photos / "a" / "x.jpg").write_bytes(b"")
    (photos / "y.jpg").write_bytes(b"")
    script = ("import json, sys\nfrom cer_jax import predict\n"
              "print(json.dumps([s.path for s in predict.expand_inputs([sys.argv[1]])]))")
    result = subprocess.run([sys.executable, "-c", script, os.fspath(photos)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == [os.fspath(photos / "a" / "x.jpg"),
                                         os.fspath(photos / "y.jpg")]
    assert "later mention" not in result.stderr


def test_a_folder_that_cannot_be_listed_is_left_out_with_a_warning(tmp_path, monkeypatch,
                                                                   caplog):
    """A drive's lost+found (root's, mode 700) inside an input folder was a PermissionError
    traceback before any prediction."""
    (tmp_path / "lost+found").mkdir()
    (tmp_path / "lost+found" / "z.jpg").write_bytes(b"")
    (tmp_path / "y.jpg").write_bytes(b"")
    path_type = type(predict.epath.Path(tmp_path))
    iterdir = path_type.iterdir

    def listing(self):
        if self.name in ("lost+found", "locked"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(self))
        return iterdir(self)

    monkeypatch.setattr(path_type, "iterdir", listing)
    assert predict.expand_inputs([os.fspath(tmp_path)]) == [
        predict.Source(os.fspath(tmp_path / "y.jpg"), "image")]
    assert (f"Cannot list the folder {tmp_path / 'lost+found'} (Permission denied): its files "
            "are left out.") in caplog.text
    (tmp_path / "locked").mkdir()
    with pytest.raises(predict.UsageError, match=re.escape(
            f"input folder '{tmp_path / 'locked'}' cannot be listed (Permission denied): check "
            "its permissions.")):
        predict.expand_inputs([os.fspath(tmp_path / "locked")])


def noise_video(path, n, fps=10.0):
    """n different 64x64 frames (with --aligned each is one face: no detector, fast)."""
    rng = np.random.default_rng(0)
    write_video(path, [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(n)], fps)


def jsonl(path):
    return [json.loads(line) for line in open(path)]


def test_bad_outputs_are_usage_errors_before_the_model_is_loaded(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    listed = tmp_path / "list.txt"
    listed.write_text("clip/00001.jpg\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep\n")
    none = os.fspath(tmp_path / "no_ensemble")  # loading it fails: the outputs are checked first

    def error(**kwargs):
        kwargs = {k: os.fspath(v) for k, v in kwargs.items()}
        with pytest.raises(predict.UsageError) as info:
            predict.run([os.fspath(video)], ensemble=none, show_progress=False, **kwargs)
        return str(info.value)

    assert error(out=folder) == (
        f"--out={folder} is a folder; give a file path (e.g. {folder / 'rows.csv'}).")
    assert error(abaw_frames=listed, submission=folder) == (
        f"--submission={folder} is a folder; give a file path (e.g. "
        f"{folder / 'submission.txt'}).")
    assert error(annotate=a_file) == (
        f"--annotate={a_file} is a file; give a folder (it gets an annotated copy of each "
        "input).")
    assert error(out=a_file / "rows.csv") == (
        f"--out={a_file / 'rows.csv'}: {a_file} is a file, not a folder; choose another path.")
    deep = a_file / "deeper" / "sub.txt"
    assert error(abaw_frames=listed, submission=deep) == (
        f"--submission={deep}: {a_file} is a file, not a folder; choose another path.")
    assert error(out=tmp_path / "same.txt", abaw_frames=listed,
                 submission=tmp_path / "same.txt") == (
        f"--out and --submission are both {tmp_path / 'same.txt'}: give two files.")
    # A new folder: was "cannot be written (No such file or directory): free space, ..." after
    # the whole run's predictions.
    results = tmp_path / "results"
    assert error(out=f"{results}/") == (
        f"--out={results}/ ends in /, a folder; give a file path (e.g. {results / 'rows.csv'}).")
    assert not results.exists()
    # Good outputs: the ensemble is what fails, and nothing is written.
    new = tmp_path / "new"
    assert "not an ensemble directory" in error(out=new / "rows.csv", annotate=new / "ann",
                                                abaw_frames=listed, submission=new / "s.txt")
    assert sorted(os.listdir(new)) == ["ann"] and os.listdir(new / "ann") == []
    assert a_file.read_text() == "keep\n" and os.listdir(folder) == []
    result = subprocess.run(
        [sys.executable, "-m", "cer_jax.predict", f"--ensemble={none}", os.fspath(video),
         f"--abaw_frames={listed}", f"--submission={folder}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: --submission={folder} is a folder; give a file path (e.g. "
        f"{folder / 'submission.txt'}).")


def test_an_interrupted_or_failed_run_keeps_the_earlier_outputs(tmp_path, ensemble_dir,
                                                                monkeypatch):
    video = tmp_path / "clip.avi"
    noise_video(video, 3)
    listed = tmp_path / "list.txt"
    listed.write_text("clip/00001.jpg\nclip/00003.jpg\n")
    results = tmp_path / "results"
    results.mkdir()
    out, sub = results / "rows.csv", results / "sub.txt"
    out.write_text("previous good rows\n")
    sub.write_text("previous submission\n")
    original = predict.Predictor.run_video

    def run():
        return predict.run([os.fspath(video)], ensemble=ensemble_dir, aligned=True,
                           out=os.fspath(out), abaw_frames=os.fspath(listed),
                           submission=os.fspath(sub), show_progress=False)

    def interrupted(self, source):
        original(self, source)  # the video's rows are written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(predict.Predictor, "run_video", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run()
    assert out.read_text() == "previous good rows\n"
    assert sub.read_text() == "previous submission\n"
    assert sorted(os.listdir(results)) == ["rows.csv", "sub.txt"]  # no .partial left

    def blocked(self, source):
        original(self, source)
        sub.unlink()
        sub.mkdir()  # a folder appears where the submission goes

    monkeypatch.setattr(predict.Predictor, "run_video", blocked)
    with pytest.raises(predict.WriteError) as info:
        run()
    assert str(info.value) == (
        f"--submission={sub} cannot be written (a folder is in the way): free space, or choose "
        f"another path; the finished file is kept as {sub}.partial (move it there yourself).")
    assert [r["frame"] for r in read_csv(out)] == ["0", "1", "2"]  # the rows are kept
    assert sorted(os.listdir(results)) == ["rows.csv", "sub.txt", "sub.txt.partial"]
    kept = (results / "sub.txt.partial").read_text().splitlines()  # the finished work
    assert kept[0] == predict.ABAW_HEADER and len(kept) == 3 and os.listdir(sub) == []

    sub.rmdir()
    (results / "sub.txt.partial").unlink()
    monkeypatch.setattr(predict.Predictor, "run_video", original)
    assert run() == 0
    assert sub.read_text().splitlines()[0] == predict.ABAW_HEADER
    assert len(sub.read_text().splitlines()) == 3


def test_a_failing_rows_stream_is_one_error():
    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(predict.WriteError) as info:
        predict.RowWriter(FullDisk(), "csv", predict.ABAW7_CLASSES, ["vit"],
                          name="gs://bucket/rows.csv")
    assert str(info.value) == ("--out=gs://bucket/rows.csv cannot be written (No space left on "
                               "device): free space, or choose another path.")
    writer = predict.RowWriter(FullDisk(), "jsonl", predict.ABAW7_CLASSES, ["vit"],
                               name="rows.jsonl")
    with pytest.raises(predict.WriteError) as info:
        writer.write("a.jpg", "image", "no face found")
    assert str(info.value).startswith("--out=rows.jsonl cannot be written (No space left")
    with pytest.raises(predict.WriteError) as info:
        predict.RowWriter(FullDisk(), "csv", predict.ABAW7_CLASSES, ["vit"], name="stdout")
    assert str(info.value) == ("cannot write the rows to stdout (No space left on device): give "
                               "--out=FILE.")


def test_rows_and_submission_go_to_a_bucket(tmp_path, ensemble_dir, bucket):
    """Remote outputs are staged locally and copied to gs:// once complete."""
    video = tmp_path / "clip.avi"
    noise_video(video, 3)
    listed = tmp_path / "list.txt"
    listed.write_text("clip/00001.jpg\nclip/00003.jpg\n")
    status = predict.run([os.fspath(video)], ensemble=ensemble_dir, aligned=True,
                         out="gs://test-bucket/results/rows.csv", abaw_frames=os.fspath(listed),
                         submission="gs://test-bucket/results/sub.txt", show_progress=False)
    assert status == 0
    results = bucket.root / "results"
    assert sorted(os.listdir(results)) == ["rows.csv", "sub.txt"]
    assert [r["frame"] for r in read_csv(results / "rows.csv")] == ["0", "1", "2"]
    header, first, second = (results / "sub.txt").read_text().splitlines()
    assert header == predict.ABAW_HEADER
    assert re.fullmatch(r"clip/00001\.jpg,[0-6]", first) and re.fullmatch(
        r"clip/00003\.jpg,[0-6]", second)
    assert "gs://test-bucket/results/rows.csv" in bucket.seen


@pytest.mark.parametrize("stop", [KeyboardInterrupt(),
                                  OSError(errno.ECONNRESET, "Connection reset by peer")])
def test_a_remote_publish_cut_short_keeps_the_earlier_output(tmp_path, bucket, monkeypatch,
                                                              stop):
    """A Ctrl-C or a lost connection while a finished file is copied to gs://: the writer,
    closed on the way out, uploaded the part copied so far over the earlier output."""
    (bucket.root / "results").mkdir()
    (bucket.root / "results" / "rows.csv").write_text("previous good rows\n")
    staged = tmp_path / "rows.csv.staged"
    staged.write_text("new rows\n" * 1000)

    def cut(source, target, length=0):
        target.write(source.read(100))
        raise stop

    monkeypatch.setattr(shutil, "copyfileobj", cut)
    with pytest.raises((KeyboardInterrupt, predict.WriteError)) as info:
        predict.publish("out", os.fspath(staged), "gs://test-bucket/results/rows.csv")
    assert os.listdir(bucket.root / "results") == ["rows.csv"]  # no scratch object left
    assert (bucket.root / "results" / "rows.csv").read_text() == "previous good rows\n"
    if isinstance(stop, OSError):  # the finished file is kept, and the error names it
        assert info.type is predict.WriteError and str(staged) in str(info.value)
        assert staged.exists()
    else:
        assert info.type is KeyboardInterrupt and not staged.exists()


def test_a_run_stopped_after_the_rows_were_published_says_so(tmp_path, ensemble_dir):
    """Ctrl-C while the submission is written, after the rows were published: the line said
    that an earlier --out was as it was, but it had been replaced by the new rows."""
    video = tmp_path / "clip.avi"
    noise_video(video, 3)
    listed = tmp_path / "list.txt"
    listed.write_text("clip/00001.jpg\nclip/00003.jpg\n")
    out, sub = tmp_path / "rows.csv", tmp_path / "sub.txt"
    out.write_text("previous good rows\n")
    sub.write_text("previous submission\n")
    script = textwrap.dedent(f"""
        import sys
        from cer_jax import cli, predict
        def interrupted(*args, **kwargs):
            raise KeyboardInterrupt  # Ctrl-C while the submission is written
        predict.write_submission = interrupted
        predict.define_flags()
        sys.argv = ["predict", {f"--ensemble={ensemble_dir}"!r}, "--aligned",
                    {f"--out={out}"!r}, {f"--abaw_frames={listed}"!r},
                    {f"--submission={sub}"!r}, {os.fspath(video)!r}]
        cli.run(predict.main)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 128 + signal.SIGINT, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: stopped by Ctrl-C after --out={out} was written in full: the submission was "
        "not (an earlier --submission is as it was).")
    assert [r["status"] for r in read_csv(out)] == ["ok"] * 3  # the new rows
    assert sub.read_text() == "previous submission\n"


def test_a_pipe_or_device_output_is_written_as_it_is(tmp_path, ensemble_dir):
    """--out=/dev/null (rows unwanted beside a submission) or a FIFO was staged beside it and
    renamed onto it: as root /dev/null became a regular file, without root /dev refused the
    staged file ('cannot be written'). Here FIFOs (a test must not touch /dev/null)."""
    noise_video(tmp_path / "clip.avi", 3)
    frames = tmp_path / "frames.txt"
    frames.write_text("clip/00001.jpg\nclip/00003.jpg\n")
    outputs = {name: tmp_path / name for name in ("rows", "submission")}
    read = {}

    def reader(name):
        with open(outputs[name]) as f:
            read[name] = f.read()

    threads = []
    for name, path in outputs.items():
        os.mkfifo(path)
        threads.append(threading.Thread(target=reader, args=(name,), daemon=True))
        threads[-1].start()
    assert predict.run([os.fspath(tmp_path / "clip.avi")], ensemble=ensemble_dir, aligned=True,
                       out=os.fspath(outputs["rows"]), abaw_frames=os.fspath(frames),
                       submission=os.fspath(outputs["submission"]), show_progress=False) == 0
    for thread in threads:
        thread.join(timeout=30)
    assert all(stat.S_ISFIFO(os.stat(path).st_mode) for path in outputs.values())
    assert read["rows"].count(",ok,") == 3
    assert read["submission"].splitlines()[0] == predict.ABAW_HEADER
    assert sorted(os.listdir(tmp_path)) == ["clip.avi", "frames.txt", "rows", "submission"]


def test_outputs_are_on_disk_before_they_replace_the_earlier_ones(tmp_path, ensemble_dir,
                                                                  monkeypatch):
    """The staged rows were renamed onto --out without an fsync: after a power loss the file
    system may hold the rename but not the data, an empty file where the earlier rows were."""
    image = tmp_path / "face.png"
    cv2.imwrite(os.fspath(image), np.zeros((100, 100, 3), np.uint8))
    out = tmp_path / "rows.csv"
    events = []
    fsync, replace = os.fsync, os.replace

    def recorded_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recorded_replace(source, target):
        events.append(("replace", os.fspath(source), os.fspath(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recorded_fsync)
    monkeypatch.setattr(os, "replace", recorded_replace)
    assert predict.run([os.fspath(image)], ensemble=ensemble_dir, aligned=True,
                       out=os.fspath(out), show_progress=False) == 0
    staged = os.fspath(out) + ".partial"
    assert events == [("fsync", staged), ("replace", staged, os.fspath(out)),
                      ("fsync", os.fspath(tmp_path))]


def test_listed_frames_past_the_decoded_ones_fail_the_video(tmp_path, ensemble_dir, caplog):
    video = tmp_path / "clip.avi"
    noise_video(video, 4)
    listed = tmp_path / "list.txt"
    listed.write_text("image_location\nclip/00001.jpg\nclip/00004.jpg\nclip/00006.jpg\n")
    out, sub = tmp_path / "rows.csv", tmp_path / "sub.txt"

    def run():
        return predict.run([os.fspath(video)], ensemble=ensemble_dir, aligned=True,
                           out=os.fspath(out), abaw_frames=os.fspath(listed),
                           submission=os.fspath(sub), show_progress=False)

    assert run() == 1
    message = ("the frame list asks for frames up to 6 but only 4 were decoded: its frame "
               "numbering differs from the video's (e.g. a variable-frame-rate video, or frames "
               "extracted at another rate)")
    assert (f"Video 'clip' ({video}): {message}. Its listed frames past 4 get the class of the "
            "nearest decoded frame with a face.") in caplog.text
    rows = read_csv(out)
    assert [r["status"] for r in rows] == ["ok"] * 4 + [f"error: {message}"]
    classes = {int(r["frame"]): r["predicted_index"] for r in rows[:4]}
    assert sub.read_text().splitlines()[1:] == [
        f"clip/00001.jpg,{classes[0]}", f"clip/00004.jpg,{classes[3]}",
        f"clip/00006.jpg,{classes[3]}"]
    listed.write_text("clip/00001.jpg\nclip/00004.jpg\n")  # within the decoded frames
    assert run() == 0


def test_the_frame_list_and_the_inputs_are_checked_before_any_work(tmp_path, caplog):
    none = os.fspath(tmp_path / "no_ensemble")
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(b"")
    listed = tmp_path / "list.txt"
    listed.write_text("image_location\nother/00001.jpg\nother/00002.jpg\nthird/00001.jpg\n")

    def error(inputs, **kwargs):
        kwargs = {k: os.fspath(v) for k, v in kwargs.items()}
        with pytest.raises(predict.UsageError) as info:
            predict.run([os.fspath(i) for i in inputs], ensemble=none, show_progress=False,
                        **kwargs)
        return str(info.value)

    assert error([videos], abaw_frames=listed) == (
        f"none of the 2 videos in {listed} is among the inputs (e.g. 'other', which needs an "
        "input video named other.mp4 or similar); pass the C-EXPR-DB videos or their folder.")
    frames = tmp_path / "frames" / "other"  # frames extracted to <video>/<frame>.jpg
    frames.mkdir(parents=True)
    (frames / "00001.jpg").write_bytes(b"")
    assert error([tmp_path / "frames"], abaw_frames=listed) == (
        f"none of the 2 videos in {listed} is among the inputs (e.g. 'other', which needs an "
        "input video named other.mp4 or similar) (the inputs are images in folders named like "
        "the listed videos: the submission needs the videos themselves, not extracted frames); "
        "pass the C-EXPR-DB videos or their folder.")
    listed.write_text("clip/00001.jpg\nother/00001.jpg\nthird/00001.jpg\nclip/00002.jpg\n")
    caplog.clear()
    assert "not an ensemble directory" in error([videos], abaw_frames=listed,
                                                submission=tmp_path / "sub.txt")
    assert (f"2 of the 3 videos in {listed} are not among the inputs (e.g. 'other', 'third'): "
            "their frames will get class 1 and the exit status will be 1.") in caplog.text
    assert error([videos, tmp_path / "vidz"]) == (
        f"input {os.fspath(tmp_path / 'vidz')!r} does not exist: check the path (give image "
        "files, video files or folders).")
    assert error([videos], submission="sub.txt") == (
        "--submission=sub.txt needs --abaw_frames=LIST (the organisers' list of C-EXPR-DB "
        "frames to predict).")
    listed.write_text("image_location\n\n")
    assert error([videos], abaw_frames=listed) == (
        f"--abaw_frames file {os.fspath(listed)!r} lists no frames: it needs one "
        "'<video>/<frame number>.jpg' per line (after an optional image_location header).")
    listed.write_text("image_location\nclip/00001.jpg\nclip/00000.jpg\n")  # a 0-based list
    assert error([videos], abaw_frames=listed) == (
        f"{listed}:3: 'clip/00000.jpg' is frame 0, but C-EXPR-DB frame numbers start at 1 "
        "(00001.jpg is a video's first frame): give the organisers' list, or add 1 to every "
        "frame number of a 0-based one.")
    listed.write_text("clip/1.png/x\n")
    assert error([videos], abaw_frames=listed) == (
        f"{listed}:1: 'clip/1.png/x' is not '<video>/<frame number>.jpg'.")
    for flag in ("batch_size", "smooth_window", "frame_step"):
        with pytest.raises(predict.UsageError) as info:
            predict.run([os.fspath(videos)], ensemble=none, show_progress=False, **{flag: 0})
        assert str(info.value) == f"--{flag}=0: it must be 1 or more."


def test_flags_below_one_are_refused_by_absl():
    # The hyphenated alias is reported by the flag's own name.
    for given, named in (("--batch_size=0", "--batch_size=0"),
                         ("--smooth-window=0", "--smooth_window=0"),
                         ("--frame_step=-2", "--frame_step=-2")):
        result = subprocess.run(
            [sys.executable, "-m", "cer_jax.predict", "--ensemble=unused", given, "a.jpg"],
            capture_output=True, text=True, cwd=ROOT, timeout=120,
        )
        assert result.returncode == 1, (given, result.stderr[-2000:])
        value = given.split("=")[1]
        assert result.stderr.strip().splitlines() == [
            f"FATAL Flags parsing error: flag {named}: {value} is not a positive integer",
            "Pass --helpshort or --helpfull to see help on flags."], given


def test_an_input_given_twice_is_predicted_once(tmp_path, caplog, monkeypatch):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("a.mp4", "b.jpg"):
        (clips / name).write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    sources = predict.expand_inputs(["clips/a.mp4", os.fspath(clips / "a.mp4"), "clips",
                                     "./clips/b.jpg"])
    assert sources == [predict.Source("clips/a.mp4", "video"),
                       predict.Source("clips/b.jpg", "image")]
    assert ("Each input file is predicted once: 3 later mention(s) of a file already given were "
            f"dropped (e.g. {clips / 'a.mp4'}, the same file as clips/a.mp4).") in caplog.text


def test_smooth_window_counts_processed_frames(tmp_path, ensemble_dir):
    video = tmp_path / "clip.avi"
    noise_video(video, 7)
    classes = list(predict.ABAW7_CLASSES)

    def probabilities(window):
        out = tmp_path / f"w{window}.jsonl"
        assert predict.run([os.fspath(video)], ensemble=ensemble_dir, aligned=True,
                           out=os.fspath(out), frame_step=2, smooth_window=window,
                           show_progress=False) == 0
        return {r["frame"]: np.array([r["probabilities"][c] for c in classes])
                for r in jsonl(out)}

    p, q = probabilities(1), probabilities(3)
    assert sorted(p) == [0, 2, 4, 6]
    # 3 processed frames: the neighbours 2 decoded frames away on each side.
    np.testing.assert_allclose(q[2], (p[0] + p[2] + p[4]) / 3, atol=1e-5)
    np.testing.assert_allclose(q[0], (p[0] + p[2]) / 2, atol=1e-5)
    np.testing.assert_allclose(q[6], (p[4] + p[6]) / 2, atol=1e-5)
    assert np.abs(q[2] - p[2]).max() > 1e-4  # the frames differ, so smoothing shows


def test_frame_step_grabs_skipped_frames_and_timestamps_are_the_videos(tmp_path, ensemble_dir,
                                                                      monkeypatch):
    video = tmp_path / "clip.avi"
    noise_video(video, 7)
    real = cv2.VideoCapture
    converted = []  # frames decoded into images (read / retrieve)
    positions = {"ms": None}  # CAP_PROP_POS_MSEC per frame, as another video would report it

    class Capture:
        def __init__(self, *args):
            self._capture, self._frames = real(*args), 0

        def __getattr__(self, name):
            return getattr(self._capture, name)

        def grab(self):
            ok = self._capture.grab()
            self._frames += ok
            return ok

        def read(self):
            converted.append("read")
            ok, frame = self._capture.read()
            self._frames += ok
            return ok, frame

        def retrieve(self, *args):
            converted.append("retrieve")
            return self._capture.retrieve(*args)

        def get(self, prop):
            if prop == cv2.CAP_PROP_POS_MSEC and positions["ms"] is not None:
                return positions["ms"][self._frames - 1]
            return self._capture.get(prop)

    monkeypatch.setattr(cv2, "VideoCapture", Capture)

    def rows(step, ms=None):
        positions["ms"] = ms
        out = tmp_path / f"rows{step}.jsonl"
        assert predict.run([os.fspath(video)], ensemble=ensemble_dir, aligned=True,
                           out=os.fspath(out), frame_step=step, show_progress=False) == 0
        return jsonl(out)

    every = rows(1)
    assert [r["timestamp_s"] for r in every] == pytest.approx([i / 10 for i in range(7)])
    converted.clear()
    third = rows(3)
    assert converted == ["retrieve"] * 3  # frames 0, 3 and 6; the others are only grabbed
    assert [(r["frame"], r["status"]) for r in third] == [(0, "ok"), (3, "ok"), (6, "ok")]
    for r in third:  # the same frames as decoding every one
        assert r["probabilities"] == pytest.approx(every[r["frame"]]["probabilities"],
                                                   abs=1e-5)
    # A variable frame rate: the video's own timestamps, not index / fps.
    vfr = rows(1, [0.0, 100.0, 200.0, 500.0, 800.0, 1100.0, 1400.0])
    assert [r["timestamp_s"] for r in vfr] == [0.0, 0.1, 0.2, 0.5, 0.8, 1.1, 1.4]
    # Positions that do not increase (a backend without them): index / fps.
    stuck = rows(1, [0.0] * 7)
    assert [r["timestamp_s"] for r in stuck] == pytest.approx([i / 10 for i in range(7)])


@pytest.mark.parametrize(("stop", "by"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")])
def test_a_stopped_run_leaves_the_earlier_rows_and_no_partial_file(tmp_path, stop, by):
    """timeout, SLURM and docker stop send SIGTERM: it takes Ctrl-C's path (the staged rows are
    removed, an earlier --out stays as it was), one line, exit status 128 + the signal."""
    image = tmp_path / "face.png"
    cv2.imwrite(os.fspath(image), np.zeros((100, 100, 3), np.uint8))
    out = tmp_path / "rows.csv"
    out.write_text("previous good rows\n")
    # No model (fast); the run writes a row, then hangs as in a long video, until the signal.
    script = textwrap.dedent(f"""
        import signal, sys, time, types
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignores it
        from cer_jax import cli, ensemble, predict
        ensemble.load_ensemble = lambda path: types.SimpleNamespace(
            class_names=list(predict.ABAW7_CLASSES), member_names=["vit"], aligned_size=100)
        def slow(self, sources):
            self.writer.write(sources[0].path, "image", "no face found")
            self.writer.flush()
            time.sleep(300)
        predict.Predictor.run_images = slow
        predict.define_flags()
        sys.argv = ["predict", "--ensemble=unused", "--aligned", {f"--out={out}"!r},
                    {os.fspath(image)!r}]
        cli.run(predict.main)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = tmp_path / "rows.csv.partial"
    try:
        deadline = time.time() + 120
        while not (partial.exists() and "no face found" in partial.read_text()):
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.time() < deadline, "the run never wrote its row"
            time.sleep(0.05)
        process.send_signal(stop)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + stop, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        f"error: stopped by {by}: the unfinished outputs were not written (an earlier --out "
        "or --submission is as it was).")
    assert out.read_text() == "previous good rows\n"
    assert sorted(os.listdir(tmp_path)) == ["face.png", "rows.csv"]  # no rows.csv.partial


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_an_image_opencv_refuses_is_a_row_and_the_run_goes_on(tmp_path, ensemble_dir):
    """OpenCV raises (not returns None) on a header over 2^30 pixels, as on some corrupt BMPs."""
    folder = tmp_path / "in"
    folder.mkdir()
    header = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)  # 60000 x 60000 RGB
    (folder / "huge.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 4)) + png_chunk(b"IEND", b""))
    cv2.imwrite(os.fspath(folder / "face.png"), np.zeros((100, 100, 3), np.uint8))
    out = tmp_path / "rows.csv"
    assert predict.run([os.fspath(folder)], ensemble=ensemble_dir, aligned=True,
                       out=os.fspath(out), show_progress=False) == 1
    assert [(os.path.basename(r["source"]), r["status"]) for r in read_csv(out)] == [
        ("huge.png", "error: not a readable image (too large, or a corrupt header)"),
        ("face.png", "ok")]  # an error row at once, faces in batches


def test_your_own_detector_answering_boxes_is_one_usage_error(tmp_path, ensemble_dir):
    """Its array of boxes was an AttributeError traceback from predict's sorting (exit 1)."""
    cv2.imwrite(os.fspath(tmp_path / "face.png"), np.zeros((100, 100, 3), np.uint8))
    out = tmp_path / "rows.csv"
    with pytest.raises(predict.UsageError, match=r"^--detector=test_faces:boxes_detector "
                       r"returned a numpy array of shape \(1, 4\), not a list of "
                       r"cer_jax.faces.Face"):
        predict.run([os.fspath(tmp_path / "face.png")], ensemble=ensemble_dir,
                    detector="test_faces:boxes_detector", out=os.fspath(out),
                    show_progress=False)
    assert sorted(os.listdir(tmp_path)) == ["face.png"]  # no rows, no partial file
    assert predict.run([os.fspath(tmp_path / "face.png")], ensemble=ensemble_dir,
                       detector="test_faces:make_fixed_detector", out=os.fspath(out),
                       show_progress=False) == 0
    assert [(r["status"], r["w"]) for r in read_csv(out)] == [("ok", "3.0")]


def test_a_fusion_that_does_not_fit_its_members_stops_the_run_in_one_line(tmp_path,
                                                                          ensemble_dir):
    """Found at the first face (a feature fusion): it was numpy's traceback, exit status 1."""
    misfit = with_a_misfit_feature_fusion(ensemble_dir, tmp_path / "ens")
    cv2.imwrite(os.fspath(tmp_path / "face.png"), np.zeros((100, 100, 3), np.uint8))
    out = tmp_path / "rows.csv"
    with pytest.raises(predict.UsageError, match=re.escape(
            f"{misfit / 'strategy.npz'} does not fit ensemble.json (its feature_mlp fusion")):
        predict.run([os.fspath(tmp_path / "face.png")], ensemble=os.fspath(misfit),
                    aligned=True, out=os.fspath(out), show_progress=False)
    assert sorted(os.listdir(tmp_path)) == ["ens", "face.png"]  # no rows, no partial file


def test_annotating_into_the_inputs_folder_never_replaces_an_input(tmp_path, ensemble_dir,
                                                                   caplog):
    """--annotate=the inputs' folder wrote face.jpg's annotated copy over face.jpg (and a
    video's over the video), and b.png's copy over an input b.jpg: the photos were lost."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("face.jpg", "b.png", "b.jpg"):
        cv2.imwrite(os.fspath(folder / name), rng.integers(0, 256, (64, 64, 3), np.uint8))
    noise_video(folder / "clip.avi", 2)
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder)}
    assert predict.run([os.fspath(folder)], ensemble=ensemble_dir, aligned=True,
                       out=os.fspath(tmp_path / "rows.csv"), annotate=os.fspath(folder),
                       show_progress=False) == 0
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(folder)) == ["b.jpg", "b.png", "b_1.jpg", "b_2.jpg", "clip.avi",
                                          "clip_1.avi", "face.jpg", "face_1.jpg"]
    assert (f"--annotate={folder} holds inputs: an annotated copy never replaces one, it gets "
            f"a number instead (e.g. {folder / 'b.jpg'}'s copy is b_1.jpg).") in caplog.text


def test_a_second_run_does_not_take_the_annotated_copies_inside_its_folder_as_inputs(
        tmp_path, ensemble_dir):
    """predict photos/ --annotate=photos/annotated, run again, predicted the first run's
    annotated copies too (rows for pictures with boxes drawn on them)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(os.fspath(folder / "face.jpg"), np.full((64, 64, 3), 90, np.uint8))
    out = tmp_path / "rows.csv"
    for _ in range(2):
        assert predict.run([os.fspath(folder)], ensemble=ensemble_dir, aligned=True,
                           out=os.fspath(out), annotate=os.fspath(folder / "annotated"),
                           show_progress=False) == 0
        assert [r["source"] for r in read_csv(out)] == [os.fspath(folder / "face.jpg")]
    assert os.listdir(folder / "annotated") == ["face.jpg"]


def non_utf8(folder, name):
    """An empty file `folder`/`name` (bytes, not valid UTF-8) as Python spells its path (with a
    surrogate); skips where the file system refuses such names."""
    path = os.path.join(os.fspath(folder), os.fsdecode(name))
    try:
        open(path, "wb").close()
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses names that are not valid UTF-8")
    return path


def test_file_names_that_are_not_utf8_are_written_as_their_bytes(tmp_path, ensemble_dir,
                                                                 monkeypatch):
    image = non_utf8(tmp_path, b"caf\xe9.png")
    cv2.imwrite(os.fspath(tmp_path / "face.png"), np.zeros((100, 100, 3), np.uint8))
    os.replace(tmp_path / "face.png", image)
    out = tmp_path / "rows.csv"
    assert predict.run([image], ensemble=ensemble_dir, aligned=True, out=os.fspath(out),
                       show_progress=False) == 0
    with open(out, encoding="utf-8", errors="surrogateescape", newline="") as f:
        assert [(r["source"], r["status"]) for r in csv.DictReader(f)] == [(image, "ok")]
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # errors="strict", as a pipe's
    monkeypatch.setattr(sys, "stdout", stdout)
    assert predict.run([image], ensemble=ensemble_dir, aligned=True, show_progress=False) == 0
    stdout.flush()
    lines = stdout.buffer.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith(os.fsencode(image) + b",image,,,0,")
    assert stdout.errors == "strict"  # as it was


def test_a_video_name_that_is_not_utf8_reaches_opencv_through_a_link(tmp_path, ensemble_dir):
    """OpenCV crashes (segfault) on such a name: it gets a link with a plain name instead."""
    video = non_utf8(tmp_path, b"clip\xe9.avi")
    noise_video(tmp_path / "clip.avi", 3)
    os.replace(tmp_path / "clip.avi", video)
    out = tmp_path / "rows.jsonl"
    annotated = tmp_path / "annotated"
    assert predict.run([video], ensemble=ensemble_dir, aligned=True, out=os.fspath(out),
                       annotate=os.fspath(annotated), show_progress=False) == 0
    assert [(r["source"], r["frame"], r["status"]) for r in jsonl(out)] == [
        (video, i, "ok") for i in range(3)]
    assert os.listdir(annotated) == [os.path.basename(video)]  # no staged file left
    os.replace(annotated / os.path.basename(video), annotated / "plain.avi")
    assert int(cv2.VideoCapture(os.fspath(annotated / "plain.avi")).get(
        cv2.CAP_PROP_FRAME_COUNT)) == 3


def test_a_relative_video_name_with_a_colon_is_opened(tmp_path, ensemble_dir, monkeypatch):
    """FFmpeg read `take:2.mp4` (or `day:1/clip.mp4`) as a URL of protocol 'take' ('day'):
    'cannot open video' for a good video given by a relative path (an MJPG .avi escaped
    through OpenCV's own reader)."""
    (tmp_path / "day:1").mkdir()
    for name in ("take:2.mp4", "day:1/clip.mp4"):
        writer = cv2.VideoWriter(os.fspath(tmp_path / "plain.mp4"),
                                 cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 64))
        for i in range(3):
            writer.write(np.full((64, 64, 3), 40 * i, np.uint8))
        writer.release()
        os.replace(tmp_path / "plain.mp4", tmp_path / name)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "rows.jsonl"
    assert predict.run(["take:2.mp4", "day:1"], ensemble=ensemble_dir, aligned=True,
                       out=os.fspath(out), annotate="annotated", show_progress=False) == 0
    assert [(r["source"], r["frame"], r["status"]) for r in jsonl(out)] == [
        (name, i, "ok") for name in ("take:2.mp4", "day:1/clip.mp4") for i in range(3)]
    assert int(cv2.VideoCapture(os.fspath(tmp_path / "annotated" / "take:2.avi")).get(
        cv2.CAP_PROP_FRAME_COUNT)) == 3


def test_an_annotated_video_gets_a_new_files_mode_as_an_annotated_image_does(tmp_path,
                                                                             ensemble_dir):
    """It was staged through mkstemp, so the video came out private (0600) while the images,
    the rows file and everything else get the umask's mode."""
    noise_video(tmp_path / "clip.avi", 2)
    cv2.imwrite(os.fspath(tmp_path / "face.png"), np.full((64, 64, 3), 90, np.uint8))
    annotated = tmp_path / "annotated"
    assert predict.run([os.fspath(tmp_path / "clip.avi"), os.fspath(tmp_path / "face.png")],
                       ensemble=ensemble_dir, aligned=True, out=os.fspath(tmp_path / "r.csv"),
                       annotate=os.fspath(annotated), show_progress=False) == 0
    assert sorted(os.listdir(annotated)) == ["clip.avi", "face.jpg"]
    mask = os.umask(0o027)
    os.umask(mask)
    modes = {name: stat.S_IMODE(os.stat(annotated / name).st_mode) for name in ("clip.avi",
                                                                                 "face.jpg")}
    assert modes == {"clip.avi": 0o666 & ~mask, "face.jpg": 0o666 & ~mask}


def edit_listed_mp4(path, frames, shown):
    """An MP4 of `frames` frames whose edit list shows only the first `shown` (as a cut made
    with `ffmpeg -ss ... -c copy` does): the container counts them all, OpenCV decodes fewer."""
    writer = cv2.VideoWriter(os.fspath(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 64))
    for i in range(frames):
        writer.write(np.full((64, 64, 3), 20 * i, np.uint8))
    writer.release()
    data = bytearray(open(path, "rb").read())
    box = data.find(b"elst")
    assert box > 0 and data[box + 4] == 0, "OpenCV's MP4 writer wrote no version-0 edit list"
    duration, = struct.unpack(">I", data[box + 12 : box + 16])  # the first entry's, in mvhd units
    struct.pack_into(">I", data, box + 12, duration * shown // frames)
    open(path, "wb").write(data)


def test_fewer_frames_than_the_container_counts_fail_only_when_asked_for(tmp_path, ensemble_dir,
                                                                        caplog):
    video = tmp_path / "cut.mp4"
    edit_listed_mp4(video, 10, 7)
    capture = cv2.VideoCapture(os.fspath(video))
    assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 10
    capture.release()
    out, listed, sub = tmp_path / "rows.csv", tmp_path / "list.txt", tmp_path / "sub.txt"

    def run(*frames):
        listed.write_text("".join(f"cut/{f:05d}.jpg\n" for f in frames))
        return predict.run([os.fspath(video)], ensemble=ensemble_dir, aligned=True,
                           out=os.fspath(out), show_progress=False,
                           **({"abaw_frames": os.fspath(listed), "submission": os.fspath(sub)}
                              if frames else {}))

    assert run() == 0
    assert [(r["frame"], r["status"]) for r in read_csv(out)] == [(str(i), "ok")
                                                                  for i in range(7)]
    assert (f"Video {video}: 7 of the 10 frames its container counts were decoded (an edit "
            "list that hides some, or a truncated file); every decoded frame was "
            "predicted.") in caplog.text
    assert run(1, 7) == 0  # every listed frame was decoded
    assert run(1, 9) == 1
    message = ("the frame list asks for frames up to 9 but only 7 were decoded: the video ended "
               "after 7 of the 10 frames its container counts (a truncated file, or an edit "
               "list that hides some)")
    assert read_csv(out)[-1]["status"] == f"error: {message}"
    assert (f"Video 'cut' ({video}): {message}. Its listed frames past 7 get the class of the "
            "nearest decoded frame with a face.") in caplog.text


def test_videos_are_read_from_and_annotated_into_a_bucket(tmp_path, ensemble_dir, bucket,
                                                          monkeypatch):
    """OpenCV opens only local files: a gs:// video is copied here for it, and the annotated
    video is written here and copied to gs://; neither copy is left behind."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", os.fspath(scratch))
    (bucket.root / "in").mkdir()
    noise_video(bucket.root / "in" / "clip.avi", 3)
    out = tmp_path / "rows.jsonl"
    assert predict.run(["gs://test-bucket/in"], ensemble=ensemble_dir, aligned=True,
                       out=os.fspath(out), annotate="gs://test-bucket/annotated",
                       show_progress=False) == 0
    assert [(r["source"], r["frame"], r["status"]) for r in jsonl(out)] == [
        ("gs://test-bucket/in/clip.avi", i, "ok") for i in range(3)]
    annotated = bucket.root / "annotated"
    assert os.listdir(annotated) == ["clip.avi"]
    assert int(cv2.VideoCapture(os.fspath(annotated / "clip.avi")).get(
        cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert "gs://test-bucket/annotated/clip.avi" in bucket.seen
    assert os.listdir(scratch) == []


def test_an_annotated_video_that_cannot_be_written_is_a_write_error(tmp_path, ensemble_dir,
                                                                    monkeypatch):
    video = tmp_path / "clip.avi"
    noise_video(video, 3)

    class ClosedWriter:  # what cv2.VideoWriter gives for a place it cannot write
        def __init__(self, *args):
            pass

        def isOpened(self):  # noqa: N802 (OpenCV's name)
            return False

        def write(self, frame):
            pass

        def release(self):
            pass

    monkeypatch.setattr(cv2, "VideoWriter", ClosedWriter)
    annotated = tmp_path / "annotated"
    with pytest.raises(predict.WriteError) as info:
        predict.run([os.fspath(video)], ensemble=ensemble_dir, aligned=True,
                    out=os.fspath(tmp_path / "rows.csv"), annotate=os.fspath(annotated),
                    show_progress=False)
    assert str(info.value) == (
        f"--annotate={annotated / 'clip.avi'} cannot be written (OpenCV cannot open a video "
        "writer for it): free space, or choose another path.")
    assert os.listdir(annotated) == [] and sorted(os.listdir(tmp_path)) == ["annotated",
                                                                           "clip.avi"]


def test_an_eleven_class_ensemble_is_submitted_in_the_challenges_indices(tmp_path, caplog):
    """RAF-DB's 11 compound classes (its own order): each listed frame gets the most probable
    of the challenge's 7, written as the challenge's index."""
    from tfds_rafdb.layout import COMPOUND_CLASSES

    eleven, _, _ = build_tiny_ensemble(tmp_path / "ens", class_names=COMPOUND_CLASSES, seed=3)
    video = tmp_path / "clip.avi"
    noise_video(video, 12)
    listed = tmp_path / "list.txt"
    listed.write_text("".join(f"clip/{i:05d}.jpg\n" for i in range(1, 13)))
    out, sub = tmp_path / "rows.jsonl", tmp_path / "sub.txt"
    caplog.set_level("INFO")
    assert predict.run([os.fspath(video)], ensemble=os.fspath(eleven), aligned=True,
                       out=os.fspath(out), abaw_frames=os.fspath(listed),
                       submission=os.fspath(sub), show_progress=False) == 0
    rows = jsonl(out)
    assert len(rows) == 12
    expected, raw = [], []
    for row in rows:
        p = row["probabilities"]
        expected.append(int(np.argmax([p[c] for c in predict.ABAW7_CLASSES])))
        raw.append(row["predicted_index"])
    lines = sub.read_text().splitlines()
    assert lines[0] == predict.ABAW_HEADER
    assert lines[1:] == [f"clip/{i + 1:05d}.jpg,{c}" for i, c in enumerate(expected)]
    assert expected != raw  # the 11-class indices are not the challenge's
    assert ("the ensemble predicts 11 classes; each frame gets the most probable of the "
            "challenge's 7 (Happily Disgusted, Sadly Disgusted, Fearfully Angry, Angrily "
            "Disgusted left out)") in caplog.text


def test_the_challenge_classes_are_found_by_name():
    alphabetical = sorted(c.replace(" ", "_") for c in predict.ABAW7_CLASSES)  # a folder dataset
    columns = predict.abaw_columns(alphabetical)
    assert [alphabetical[i].replace("_", " ") for i in columns] == list(predict.ABAW7_CLASSES)
    records = [predict.FaceRecord(0, 0.0, 0, 0, (0, 0, 9, 9),
                                  np.eye(7)[alphabetical.index("Sadly_Angry")])]
    assert predict.frame_classes(records, columns) == {0: 6}
    basic = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
    with pytest.raises(predict.UsageError, match=r"without Fearfully Surprised, Happily "
                       r"Surprised, Sadly Surprised, \.\.\.: train the members with "
                       r"--config.dataset.name=rafdb/compound_abaw7"):
        predict.abaw_columns(basic)


@pytest.mark.parametrize("frame_step", [1, 3])
def test_an_even_smoothing_window_averages_that_many_frames(frame_step):
    """--smooth_window=2 averages 2 frames (the frame and the one before), not 3."""
    records = [predict.FaceRecord(i * frame_step, 0.0, 0, 0, (0, 0, 9, 9), np.eye(4)[i])
               for i in range(4)]
    predict.smooth_tracks(records, 2, frame_step)
    np.testing.assert_allclose([r.probabilities for r in records],
                               [[1, 0, 0, 0], [.5, .5, 0, 0], [0, .5, .5, 0], [0, 0, .5, .5]])
    records = [predict.FaceRecord(i * frame_step, 0.0, 0, 0, (0, 0, 9, 9), np.eye(6)[i])
               for i in range(6)]
    predict.smooth_tracks(records, 4, frame_step)  # 2 before, 1 after
    np.testing.assert_allclose(records[3].probabilities, [0, .25, .25, .25, .25, 0])


def test_two_faces_in_a_video_are_smoothed_apart_and_the_main_track_gives_the_class():
    """Every video test has one face: averaging across tracks, or a submission class taken from
    the largest face instead of the main track's, passed them. By hand: the main track (0, 3
    frames, small) says class 0; a larger passer-by (1, 2 frames) class 1; where the main track
    is absent, the largest face there (track 2 over track 3)."""
    def record(frame, track, side, label):
        return predict.FaceRecord(frame, 0.0, 0, track, (0, 0, side, side), np.eye(4)[label])

    records = [record(0, 0, 5, 0), record(0, 1, 10, 1), record(1, 0, 5, 0),
               record(1, 1, 10, 1), record(2, 0, 5, 0), record(3, 2, 20, 2), record(3, 3, 10, 3)]
    predict.smooth_tracks(records, 3)
    labels = [0, 1, 0, 1, 0, 2, 3]  # each face keeps its own: no neighbour of its track differs
    np.testing.assert_array_equal([r.probabilities for r in records], np.eye(4)[labels])
    assert predict.frame_classes(records) == {0: 0, 1: 0, 2: 0, 3: 2}
    mixed = [record(0, 0, 5, 0), record(1, 0, 5, 1), record(2, 0, 5, 1)]
    predict.smooth_tracks(mixed, 3)  # a track's own frames are averaged: (0 + 1 + 1) / 3 at 1
    np.testing.assert_allclose(mixed[1].probabilities, [1 / 3, 2 / 3, 0, 0])


def test_a_listed_frame_without_a_face_gets_the_nearest_frames_class_the_earlier_on_a_tie():
    """The video test's faces all get one class, so which frame was taken did not show."""
    classes = {2: 10, 6: 20, 7: 30}
    frames = np.array(sorted(classes))
    got = {frame: predict.nearest_class(classes, frame, frames) for frame in range(10)}
    assert got == {0: 10, 1: 10, 2: 10, 3: 10, 4: 10, 5: 20, 6: 20, 7: 30, 8: 30, 9: 30}
    assert predict.nearest_class({}, 3, np.array([], int)) is None


def test_a_listed_video_is_found_whatever_unicode_form_its_file_name_has(tmp_path, ensemble_dir):
    """A name with an accent is stored decomposed (NFD) by macOS tools and composed (NFC) in
    most lists: 'Vidéo 1' is one video either way, and the row keeps the list's spelling."""
    nfc, nfd = "Vidéo 1", unicodedata.normalize("NFD", "Vidéo 1")
    assert nfc != nfd
    noise_video(tmp_path / f"{nfd}.MP4", 3)
    listed = tmp_path / "list.txt"
    listed.write_text(f"image_location\n{nfc}/00001.jpg\n{nfc}/00003.jpg\n", encoding="utf-8")
    out, sub = tmp_path / "rows.csv", tmp_path / "sub.txt"
    assert predict.run([os.fspath(tmp_path)], ensemble=ensemble_dir, aligned=True,
                       out=os.fspath(out), abaw_frames=os.fspath(listed),
                       submission=os.fspath(sub), show_progress=False) == 0
    classes = {int(r["frame"]): r["predicted_index"] for r in read_csv(out)}
    assert sub.read_text(encoding="utf-8").splitlines()[1:] == [
        f"{nfc}/00001.jpg,{classes[0]}", f"{nfc}/00003.jpg,{classes[2]}"]


def test_a_frame_list_saved_as_utf16_is_read_and_an_unreadable_one_says_the_fix(tmp_path):
    """Windows PowerShell's `>` writes UTF-16 with a byte-order mark."""
    listed = tmp_path / "list.txt"
    for encoding in ("utf-16", "utf-16-le", "utf-16-be"):
        bom = {"utf-16-le": "\ufeff", "utf-16-be": "\ufeff"}.get(encoding, "")
        listed.write_bytes((bom + "image_location\r\nclip/00001.jpg\r\n").encode(encoding))
        assert predict.read_frame_list(os.fspath(listed)) == [("clip", 1)], encoding

    def error(path):
        with pytest.raises(predict.UsageError) as info:
            predict.read_frame_list(os.fspath(path))
        return str(info.value)

    assert error(tmp_path / "none.txt") == (
        f"--abaw_frames={tmp_path / 'none.txt'} does not exist: check the path (the "
        "organisers' list of C-EXPR-DB frames).")
    assert error(tmp_path) == (
        f"--abaw_frames={tmp_path} is a folder: give the organisers' list of C-EXPR-DB frames "
        "(a text file).")
    listed.write_bytes(b"clip/00001.jpg\n\xff\xfe\x00junk")
    assert error(listed) == (
        f"--abaw_frames={listed} is not text (not UTF-8 or UTF-16): save the organisers' list "
        "as UTF-8 text.")


def test_an_output_that_is_an_input_is_refused_before_any_work(tmp_path):
    """--submission onto the organisers' list (or --out onto it, or onto an input) would
    overwrite what the run reads."""
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    listed = tmp_path / "list.txt"
    listed.write_text("clip/00001.jpg\n")
    before = listed.read_bytes()

    def error(**kwargs):
        with pytest.raises(predict.UsageError) as info:
            predict.run([os.fspath(tmp_path)], ensemble=os.fspath(tmp_path / "none"),
                        abaw_frames=os.fspath(listed), show_progress=False, **kwargs)
        return str(info.value)

    assert error(submission=os.fspath(listed)) == (
        f"--submission={listed} is the --abaw_frames list, which it would overwrite: give "
        "another file.")
    assert error(out=os.fspath(tmp_path / "." / "list.txt")) == (
        f"--out={tmp_path / '.' / 'list.txt'} is the --abaw_frames list, which it would "
        "overwrite: give another file.")
    assert error(out=os.fspath(video)) == (
        f"--out={video} is the input {video}, which it would overwrite: give another file.")
    assert listed.read_bytes() == before and video.read_bytes() == b""


def test_the_submission_log_says_why_a_listed_video_got_the_fallback_class(tmp_path,
                                                                          ensemble_dir, caplog):
    noise_video(tmp_path / "good.avi", 2)
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 100)
    listed = tmp_path / "list.txt"
    listed.write_text("good/00001.jpg\nbroken/00001.jpg\nabsent/00001.jpg\n")
    sub = tmp_path / "sub.txt"
    assert predict.run([os.fspath(tmp_path)], ensemble=ensemble_dir, aligned=True,
                       out=os.fspath(tmp_path / "rows.csv"), abaw_frames=os.fspath(listed),
                       submission=os.fspath(sub), show_progress=False) == 1
    assert sub.read_text().splitlines()[2:] == ["broken/00001.jpg,1", "absent/00001.jpg,1"]
    assert ("Submission: video 'broken' could not be decoded (its row says why); its frames got "
            "class 1.") in caplog.text
    assert ("Submission: video 'absent' was not among the inputs; its frames got class 1."
            in caplog.text)


def test_input_videos_the_frame_list_does_not_name_are_skipped(tmp_path, ensemble_dir, caplog):
    """The challenge's videos are a subset of C-EXPR-DB's 400: given the whole folder, only the
    listed ones are predicted, and unlisted ones may share a name."""
    for folder in ("x", "y"):
        (tmp_path / "videos" / folder).mkdir(parents=True)
        noise_video(tmp_path / "videos" / folder / "other.avi", 2)
    noise_video(tmp_path / "videos" / "listed.avi", 2)
    listed = tmp_path / "list.txt"
    listed.write_text("listed/00002.jpg\n")
    rows = tmp_path / "rows.csv"
    caplog.set_level("INFO")
    assert predict.run([os.fspath(tmp_path / "videos")], ensemble=ensemble_dir, aligned=True,
                       out=os.fspath(rows), abaw_frames=os.fspath(listed),
                       submission=os.fspath(tmp_path / "sub.txt"), show_progress=False) == 0
    assert {os.path.basename(r["source"]) for r in read_csv(rows)} == {"listed.avi"}
    assert f"Skipping the 2 input videos that {listed} does not list" in caplog.text
