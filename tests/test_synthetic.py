"""The synthetic RAF-DB tree: determinism, exact layout, imbalance, and a build through TFDS."""

import hashlib
import importlib.util
import io
import itertools
import logging
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from cer_jax import synthetic
from tfds_rafdb import layout, rafdb

LABELS = "EmoLabel/list_patition_label.txt"  # RAF-DB's own name, written out independently


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _entries(root: pathlib.Path) -> list[tuple[str, int]]:
    return [(n, int(label)) for n, label in (x.split(" ") for x in _labels_text(root))]


def _labels_text(root: pathlib.Path) -> list[str]:
    return (root / LABELS).read_text().splitlines()


@pytest.fixture(scope="module")
def compound_tree(tmp_path_factory) -> tuple[pathlib.Path, synthetic.TreeSummary]:
    root = tmp_path_factory.mktemp("synthetic") / "compound"
    return root, synthetic.write_tree(
        root, kind="compound", num_train_images=44, num_test_images=15, seed=0
    )


def test_same_seed_same_bytes_other_seed_other_bytes(compound_tree, tmp_path):
    root, _ = compound_tree
    again = tmp_path / "again"
    synthetic.write_tree(again, kind="compound", num_train_images=44, num_test_images=15, seed=0)
    assert _files(again) == _files(root)
    other = tmp_path / "other"
    synthetic.write_tree(other, kind="compound", num_train_images=44, num_test_images=15, seed=1)
    other_files = _files(other)
    assert other_files.keys() == _files(root).keys()
    changed = [k for k, v in _files(root).items() if k.endswith(".jpg") and other_files[k] != v]
    assert len(changed) == 2 * (44 + 15)  # every original and aligned image differs


def test_layout_names_and_label_file_format(compound_tree):
    root, summary = compound_tree
    lines = _labels_text(root)
    expected_names = [f"train_{i:04d}.jpg" for i in range(1, 45)] + [
        f"test_{i:04d}.jpg" for i in range(1, 16)
    ]
    assert [x.split(" ")[0] for x in lines] == expected_names  # train first, then test
    assert all(re.fullmatch(r"(train|test)_\d{4}\.jpg ([1-9]|1[01])", x) for x in lines)
    assert (root / LABELS).read_text().endswith("\n")
    for name in expected_names:
        stem = name[:-4]
        with Image.open(root / "Image/aligned" / f"{stem}_aligned.jpg") as aligned:
            assert (aligned.format, aligned.mode, aligned.size) == ("JPEG", "RGB", (100, 100))
        with Image.open(root / "Image/original" / name) as original:
            assert original.format == "JPEG" and original.mode == "RGB"
            assert all(160 <= side <= 240 for side in original.size)
        assert (root / "Annotation/manual" / f"{stem}_manu_attri.txt").is_file()
    assert "SYNTHETIC" in (root / "SYNTHETIC_README.txt").read_text()
    assert summary.class_names == rafdb.COMPOUND_CLASSES


def test_basic_tree_names_use_five_digit_train_ids(tmp_path):
    summary = synthetic.write_tree(
        tmp_path, kind="basic", num_train_images=14, num_test_images=7, seed=0
    )
    names = [n for n, _ in _entries(tmp_path)]
    assert names[0] == "train_00001.jpg" and names[13] == "train_00014.jpg"
    assert names[14:] == [f"test_{i:04d}.jpg" for i in range(1, 8)]
    assert summary.class_names == rafdb.BASIC_CLASSES
    assert summary.train_counts == (2,) * 7 and summary.test_counts == (1,) * 7


def test_label_file_counts_follow_rafdb_imbalance(compound_tree):
    root, summary = compound_tree
    train = np.bincount([label for n, label in _entries(root) if n.startswith("train")], None, 12)
    test = np.bincount([label for n, label in _entries(root) if n.startswith("test")], None, 12)
    assert tuple(train[1:]) == summary.train_counts and tuple(test[1:]) == summary.test_counts
    assert min(summary.train_counts) >= 2 and min(summary.test_counts) >= 1
    real = synthetic.RAFDB_COUNTS["compound"]
    for counts in (summary.train_counts, summary.test_counts):
        for i, j in itertools.permutations(range(11), 2):
            if real[i] > real[j]:
                assert counts[i] >= counts[j], (i, j, counts)
    # Scaled to the real train size, the counts are RAF-DB's proportions to within rounding.
    scaled = synthetic.class_counts("compound", 3954, minimum=0)
    assert sum(scaled) == 3954
    np.testing.assert_allclose(scaled, real, atol=1)


def test_class_counts_rejects_too_few_images():
    with pytest.raises(ValueError, match=r"^10 images cannot give each of the 11 compound classes"):
        synthetic.class_counts("compound", 10, minimum=1)


def test_ids_that_would_overflow_rafdb_digits_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^10000 train images do not fit RAF-DB's 4-digit "
                                         r"compound train ids .*at most 9999\.$"):
        synthetic.write_tree(
            tmp_path / "t", kind="compound", num_train_images=10_000, num_test_images=11
        )
    with pytest.raises(ValueError, match=r"^10000 test images .* 4-digit basic test ids"):
        synthetic.write_tree(
            tmp_path / "t", kind="basic", num_train_images=14, num_test_images=10_000
        )
    assert not (tmp_path / "t").exists()  # refused before anything is written


def test_a_negative_seed_is_refused_before_anything_is_written(tmp_path):
    """It was numpy's traceback ('expected non-negative integer') at the first image."""
    with pytest.raises(synthetic.SyntheticSizeError, match=r"^--seed=-1: give a seed >= 0\.$"):
        synthetic.write_tree(tmp_path / "t", num_train_images=22, num_test_images=11, seed=-1)
    assert not (tmp_path / "t").exists()


def test_landmark_files(compound_tree):
    root, _ = compound_tree
    for name, _ in _entries(root):
        stem = name[:-4]
        lines = (root / "Annotation/manual" / f"{stem}_manu_attri.txt").read_text().splitlines()
        assert len(lines) == 8
        points = np.array([[float(v) for v in x.split("\t")] for x in lines[:5]])
        assert all(re.fullmatch(r"-?\d+\.\d\d\t-?\d+\.\d\d", x) for x in lines[:5])
        assert all(x.isdigit() for x in lines[5:])
        with Image.open(root / "Image/original" / name) as original:
            width, height = original.size
        assert np.all((points >= 0) & (points < [width, height]))
        left_eye, right_eye, nose, mouth_left, mouth_right = points
        assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def _examples(builder, split):
    ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    return {ex["file_name"].decode(): ex for ex in tfds.as_numpy(ds)}


@pytest.mark.parametrize(
    "config, kind, ids_kept",
    [
        ("compound", "compound", list(range(1, 12))),
        ("compound_abaw7", "compound", [8, 1, 5, 11, 9, 3, 4]),
        ("basic", "basic", list(range(1, 8))),
    ],
)
def test_tree_builds_through_the_builder(tmp_path, caplog, config, kind, ids_kept):
    root = tmp_path / kind
    summary = synthetic.write_tree(root, kind=kind, num_train_images=40, num_test_images=15, seed=2)
    # Irregularities the builder must accept: a 90x90 greyscale JPEG, an image without landmarks.
    grey = root / "Image/aligned/test_0001_aligned.jpg"
    Image.open(grey).convert("L").resize((90, 90)).save(grey, format="JPEG")
    (root / "Annotation/manual/test_0002_manu_attri.txt").unlink()

    with caplog.at_level(logging.INFO):
        builder = rafdb.build(config, str(root), str(tmp_path / "data"))
    dropped = [i for i in range(1, len(summary.class_names) + 1) if i not in ids_kept]
    if dropped:
        counts = [summary.train_counts[i - 1] + summary.test_counts[i - 1] for i in dropped]
        listed = ", ".join(
            f"{summary.class_names[i - 1]}: {n}" for i, n in zip(dropped, counts, strict=True)
        )
        assert f"rafdb/{config} leaves out {sum(counts)} images ({listed})." in caplog.messages
    labels = {n: ids_kept.index(label) for n, label in _entries(root) if label in ids_kept}
    train = {n for n in labels if n.startswith("train")}
    splits = {s: _examples(builder, s) for s in ("train", "validation", "train_fit", "test")}
    assert set(splits["train"]) == train
    assert set(splits["test"]) == set(labels) - train
    assert set(splits["validation"]) | set(splits["train_fit"]) == train
    assert not set(splits["validation"]) & set(splits["train_fit"])
    per_class = [summary.train_counts[i - 1] for i in ids_kept]
    val_labels = [ex["label"] for ex in splits["validation"].values()]
    assert np.bincount(val_labels, minlength=len(ids_kept)).tolist() == [
        max(1, int(n * 0.1 + 0.5)) for n in per_class
    ]
    for split in ("train", "test"):
        for name, ex in splits[split].items():
            assert ex["label"] == labels[name]
            stem = name[:-4]
            aligned = (root / "Image/aligned" / f"{stem}_aligned.jpg").read_bytes()
            manual = root / "Annotation/manual" / f"{stem}_manu_attri.txt"
            if name == "test_0001.jpg":
                with Image.open(io.BytesIO(ex["image"])) as image:
                    assert (image.mode, image.size) == ("RGB", (100, 100))
            else:
                assert ex["image"] == aligned  # the original JPEG bytes, not a re-encode
            assert ex["has_landmarks"] == manual.exists()
            expected = (
                np.loadtxt(manual, max_rows=5, dtype=np.float32)
                if manual.exists()
                else np.zeros((5, 2), np.float32)
            )
            np.testing.assert_array_equal(ex["landmarks"], expected)
    expected_names = [summary.class_names[i - 1] for i in ids_kept]
    assert builder.info.features["label"].names == expected_names


def test_validation_split_is_a_stable_hash_of_the_name(tmp_path):
    """Validation = per class, the round(10 %) names with the smallest sha256, in any order."""
    a = synthetic.write_tree(
        tmp_path / "a", kind="compound", num_train_images=44, num_test_images=11, seed=5
    )
    records = layout.read_tree(tmp_path / "a", num_labels=11, tree="compound")
    chosen = layout.validation_names(records)
    assert chosen == layout.validation_names(records[::-1])
    expected = set()
    for label, count in enumerate(a.train_counts, start=1):
        names = sorted(
            (n for n, lab in _entries(tmp_path / "a") if lab == label and n.startswith("train")),
            key=lambda n: hashlib.sha256(n.encode()).hexdigest(),
        )
        assert len(names) == count
        expected.update(names[: max(1, int(count / 10 + 0.5))])  # half rounds up
    assert chosen == expected


def test_cli_says_synthetic(tmp_path):
    # "--out=~/t": the shell leaves a ~ after "=" alone; the path flag expands it.
    result = subprocess.run(
        [sys.executable, "-m", "cer_jax.synthetic", "--out=~/t",
         "--num_train_images=22", "--num_test_images=11"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(
        f"Wrote a SYNTHETIC compound tree (drawn faces, not RAF-DB) to {tmp_path / 't'}\n"
        "  22 train / 11 test images\n"
    )
    assert len(_entries(tmp_path / "t")) == 33


def test_the_builder_cli_builds_from_home_relative_paths(tmp_path):
    """README's `python -m tfds_rafdb.rafdb --builder_config=... --data_dir=~/...` (bash leaves
    a ~ after "=" alone, so the CLI expands it)."""
    synthetic.write_tree(tmp_path / "tree", num_train_images=22, num_test_images=11)
    result = subprocess.run(
        [sys.executable, "-m", "tfds_rafdb.rafdb", "--builder_config=compound",
         "--manual_dir=~/tree", "--data_dir=~/tfds"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": str(tmp_path)},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"rafdb/compound ready in {tmp_path / 'tfds' / 'rafdb' / 'compound' / '1.0.0'}\n" in (
        result.stdout)
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize(("args", "message"), [
    # `tfds build`'s flag: was absl's "Unknown command line flag 'config'".
    (["--config=compound"], "error: --config=compound: this command takes "
                            "--builder_config=compound (--config is a config file in the cer_jax "
                            "commands)."),
    # `--manual_dir=/data/RAF DB` unquoted: was absl's whole --help page, status 1.
    (["--manual_dir=/data/RAF", "DB"], "error: Unexpected arguments: DB (a value with spaces "
                                       "needs quotes); --help lists the flags."),
    # `--manual_dir=$RAFDB` unset: was the working directory's layout error ("holds x/: point
    # --manual_dir at one"); `--data_dir=` was "cannot write there (No such file or directory)".
    (["--manual_dir="], "error: --manual_dir=: the path is empty; give a folder (is a shell "
                        "variable in it unset?)."),
    (["--data_dir="], "error: --data_dir=: the path is empty; give a folder (is a shell variable "
                      "in it unset?)."),
])
def test_the_builder_cli_says_a_mistake_in_one_line(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "tfds_rafdb.rafdb", "--manual_dir=m", f"--data_dir={tmp_path}",
         *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert (result.returncode, result.stderr.strip().splitlines()[-1:]) == (2, [message])
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())


def test_every_rafdb_class_is_drawn_from_its_named_emotions():
    """The builder's class names (the one list) map to the emotions their words name."""
    assert synthetic.class_emotions("Sadly Fearful") == ("sadness", "fear")
    assert synthetic.class_emotions("Disgustedly Surprised") == ("disgust", "surprise")
    assert synthetic.class_emotions("Neutral") == ("neutral",)
    for tree, names, words in (("compound", rafdb.COMPOUND_CLASSES, 2),
                               ("basic", rafdb.BASIC_CLASSES, 1)):
        assert [name for name, _ in synthetic.CLASSES[tree]] == list(names)
        for _, emotions in synthetic.CLASSES[tree]:
            assert len(set(emotions)) == words
            assert set(emotions) <= set(synthetic.EMOTION_ACTIONS)
    basic = {emotions for _, emotions in synthetic.CLASSES["basic"]}
    assert len(basic) == 7  # seven different emotions
    with pytest.raises(ValueError, match="No drawing for RAF-DB class 'Calmly Bored'"):
        synthetic.class_emotions("Calmly Bored")


def test_the_builder_does_not_import_cer_jax():
    """tfds_rafdb (the builder) depends on TFDS, epath, numpy and Pillow, never on cer_jax."""
    code = (
        "import sys, tfds_rafdb.rafdb, tfds_rafdb.rafdb.rafdb_dataset_builder_test; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cer_jax'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def _rafdb_lookalike(root: pathlib.Path) -> dict[str, bytes]:
    """A folder with real RAF-DB's file names (as if --out pointed at the real tree)."""
    (root / "Image/aligned").mkdir(parents=True)
    (root / "EmoLabel").mkdir()
    (root / LABELS).write_text("train_0001.jpg 3\n")
    (root / "Image/aligned/train_0001_aligned.jpg").write_bytes(b"a real photo")
    return _files(root)


def test_a_folder_that_is_not_a_synthetic_tree_is_never_written_into(tmp_path):
    """Before: the label file and images of a real RAF-DB tree were silently replaced."""
    root = tmp_path / "compound"
    before = _rafdb_lookalike(root)
    with pytest.raises(synthetic.OutputPathError) as e:
        synthetic.write_tree(root, num_train_images=22, num_test_images=11)
    assert str(e.value) == (
        f"--out={root} is a folder with other files (no SYNTHETIC_README.txt: not a synthetic "
        "tree); the drawing would overwrite files of the same names, e.g. a real RAF-DB tree's. "
        "Give a new or empty folder.")
    assert _files(root) == before
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "EmoLabel", LABELS, "Image", "Image/aligned", "Image/aligned/train_0001_aligned.jpg"]


def test_an_earlier_or_interrupted_synthetic_tree_is_redrawn(tmp_path, monkeypatch):
    """The marker goes first, so a run stopped mid-drawing can be redrawn too."""
    synthetic.write_tree(tmp_path / "t", num_train_images=22, num_test_images=11, seed=0)
    synthetic.write_tree(tmp_path / "t", num_train_images=22, num_test_images=11, seed=1)
    synthetic.write_tree(tmp_path / "fresh", num_train_images=22, num_test_images=11, seed=1)
    assert _files(tmp_path / "t") == _files(tmp_path / "fresh")

    def stop(*args):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(synthetic, "_manual_annotation", stop)
        with pytest.raises(KeyboardInterrupt):
            synthetic.write_tree(tmp_path / "stopped", num_train_images=22, num_test_images=11)
    assert not (tmp_path / "stopped" / LABELS).exists()
    synthetic.write_tree(tmp_path / "stopped", num_train_images=22, num_test_images=11, seed=1)
    assert _files(tmp_path / "stopped") == _files(tmp_path / "fresh")


def test_a_smaller_tree_over_a_larger_one_leaves_none_of_its_images(tmp_path):
    """Before: the earlier tree's images beyond the new one's ids stayed (a 130-image tree over
    a 250-image one had 250 aligned faces, 120 of them in no label line)."""
    synthetic.write_tree(tmp_path / "t", num_train_images=40, num_test_images=20)
    synthetic.write_tree(tmp_path / "t", num_train_images=22, num_test_images=11)
    synthetic.write_tree(tmp_path / "fresh", num_train_images=22, num_test_images=11)
    assert _files(tmp_path / "t").keys() == _files(tmp_path / "fresh").keys()
    assert _files(tmp_path / "t") == _files(tmp_path / "fresh")


@pytest.mark.parametrize(("flags", "message"), [
    (["--out={tmp}/rafdb"],
     "--out={tmp}/rafdb is a folder with other files (no SYNTHETIC_README.txt: not a synthetic "
     "tree); the drawing would overwrite files of the same names, e.g. a real RAF-DB tree's. "
     "Give a new or empty folder."),
    (["--out={tmp}/notes.txt/compound", "--preview={tmp}/p.png"],
     "--out={tmp}/notes.txt/compound: {tmp}/notes.txt is a file, not a folder; give --out a "
     "folder path."),
    (["--preview={tmp}/missing/p.png", "--out={tmp}/tree"],
     "--preview={tmp}/missing/p.png: the folder {tmp}/missing does not exist; give a path in an "
     "existing folder."),
    (["--preview={tmp}/p.jpg"], "--preview={tmp}/p.jpg must end in .png (the grid is saved as "
                                "PNG)."),
    # Was "0 images cannot give ...": which of the two counts?
    (["--out={tmp}/tree", "--num_test_images=0"],
     "--num_test_images=0: 0 images cannot give each of the 11 compound classes at least 1: ask "
     "for at least 11."),
], ids=["rafdb_tree", "out_under_a_file", "preview_in_a_missing_folder", "preview_not_png",
        "a_count_too_small"])
def test_cli_refuses_bad_paths_in_one_line_before_drawing(tmp_path, flags, message):
    """Before: the tree overwritten; NotADirectoryError; FileNotFoundError after the drawing."""
    rafdb_files = _rafdb_lookalike(tmp_path / "rafdb")
    (tmp_path / "notes.txt").write_text("mine")
    result = subprocess.run(
        [sys.executable, "-m", "cer_jax.synthetic", "--num_train_images=22",
         "--num_test_images=11", *(f.format(tmp=tmp_path) for f in flags)],
        capture_output=True, text=True, timeout=300,
    )
    assert (result.returncode, result.stderr) == (2, f"error: {message}\n".format(tmp=tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["notes.txt", "rafdb"]  # no tree, no preview
    assert _files(tmp_path / "rafdb") == rafdb_files
    assert (tmp_path / "notes.txt").read_text() == "mine"


_DUMMY_TOOL = pathlib.Path(__file__).parents[1] / "tools" / "make_rafdb_dummy_data.py"


@pytest.mark.parametrize("made", [False, True], ids=["new_out", "empty_out"])
def test_the_preview_may_go_into_the_tree_it_previews(tmp_path, made):
    """Before: a new --out was 'the folder ... does not exist' for --preview=<out>/faces.png,
    and an empty one got the preview, then was refused as 'a folder with other files'."""
    if made:
        (tmp_path / "tree").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "cer_jax.synthetic", f"--out={tmp_path}/tree",
         f"--preview={tmp_path}/tree/faces.png", "--num_train_images=22",
         "--num_test_images=11"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == (
        f"Wrote a preview of SYNTHETIC faces to {tmp_path}/tree/faces.png")
    assert synthetic.is_synthetic_tree(tmp_path / "tree")
    assert (tmp_path / "tree" / LABELS).is_file() and (tmp_path / "tree" / "faces.png").is_file()


@pytest.mark.parametrize("command", [["-m", "cer_jax.synthetic", "--preview={tmp}/p.png"],
                                     [str(_DUMMY_TOOL)]], ids=["synthetic", "dummy_data_tool"])
def test_an_out_that_cannot_be_written_is_one_line_before_drawing(tmp_path, command):
    """Before: FileNotFoundError's traceback from mkdir (as a read-only disk's OSError), after
    the preview was drawn and written. /proc refuses new folders, also to root."""
    out = "/proc/cer_jax_no_such_folder/tree"
    result = subprocess.run(
        [sys.executable, *(c.format(tmp=tmp_path) for c in command), f"--out={out}"],
        capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stderr) == (2, (
        f"error: --out={out}: cannot write there (No such file or directory); give a folder you "
        "can write.\n"))
    assert not list(tmp_path.iterdir())  # no preview


@pytest.mark.parametrize("out", ["{tmp}/RAF-DB", "~/RAF-DB"], ids=["path", "home"])
def test_the_dummy_data_tool_never_deletes_a_real_rafdb_tree(tmp_path, out):
    """Before: `--out` at a RAF-DB folder rmtree'd its real compound/ and basic/ trees (and
    `--out=~/...` wrote into a folder named "~"). Now one line, exit status 2, nothing touched."""
    rafdb_dir = tmp_path / "RAF-DB"
    before = _rafdb_lookalike(rafdb_dir / "compound")
    result = subprocess.run(
        [sys.executable, str(_DUMMY_TOOL), f"--out={out.format(tmp=tmp_path)}"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HOME": str(tmp_path)},
        cwd=tmp_path,
    )
    assert (result.returncode, result.stderr) == (2, (
        f"error: --out={rafdb_dir}: {rafdb_dir / 'compound'} is not a synthetic tree (no "
        "SYNTHETIC_README.txt; a real RAF-DB tree?) and regenerating would delete it. Give --out "
        "a new or empty folder, or the builder's dummy_data/.\n"))
    assert _files(rafdb_dir / "compound") == before
    assert sorted(os.listdir(tmp_path)) == ["RAF-DB"]  # no "~" folder
    assert sorted(os.listdir(rafdb_dir)) == ["compound"]  # basic/ not drawn either


def test_the_dummy_data_tool_redraws_its_own_trees(tmp_path):
    """The guard lets the tool replace the synthetic trees it drew (its normal use)."""
    spec = importlib.util.spec_from_file_location("make_rafdb_dummy_data", _DUMMY_TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.write_dummy_data(tmp_path)
    first = _files(tmp_path)
    (tmp_path / "compound" / "stale.txt").write_text("from an older run")
    tool.write_dummy_data(tmp_path)
    assert _files(tmp_path) == first


def test_an_interrupted_dummy_data_tool_keeps_the_old_trees(tmp_path, monkeypatch):
    """Before: each tree was deleted, then drawn in place, so a Ctrl-C left a half-drawn one."""
    spec = importlib.util.spec_from_file_location("make_rafdb_dummy_data", _DUMMY_TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.write_dummy_data(tmp_path)
    first = _files(tmp_path)
    write_tree = synthetic.write_tree

    def interrupted(out_dir, **kwargs):
        write_tree(out_dir, **{**kwargs, "num_train_images": 22, "num_test_images": 11})
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_tree", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tool.write_dummy_data(tmp_path)
    assert {f: b for f, b in _files(tmp_path).items() if not f.startswith(".")} == first
    monkeypatch.undo()
    tool.write_dummy_data(tmp_path)  # the next run redraws over the leftover
    assert _files(tmp_path) == first
