"""The main job end to end (data -> three trained members -> fusion), with tiny step counts.

The same code path as `python -m cer_jax.demo`, only with 2 training steps per member
(`--steps_scale=0.0005`: every `TRAIN_STEPS` x 0.0005 rounds to at most 2, the demo's minimum)
and a small synthetic tree (80 train / 30 test images); it doubles as the fusion job's
end-to-end test on real trainer workdirs.
"""

import contextlib
import errno
import io
import json
import os
import subprocess
import sys

import pytest
from sklearn import metrics as skm

from cer_jax import demo, export, synthetic
from cer_jax.fusion import evaluator

# Both tests share the module's demo run: one xdist worker runs them.
pytestmark = pytest.mark.xdist_group("demo")

MODELS = ("vit", "manet", "resnet50")
STEPS_SCALE = 0.0005
STEPS = 2  # per member, at STEPS_SCALE


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = demo.run_demo(
            out, steps_scale=STEPS_SCALE, models=MODELS, num_train_images=80, num_test_images=30
        )
    return out, report, printed.getvalue()


def test_demo_trains_three_members_and_fuses_them(demo_run):
    out, report, printed = demo_run
    for stage in range(1, 6):
        assert f"=== [{stage}/5]" in printed
    assert "(80 train / 30 test images)" in printed
    for member in MODELS:
        assert f"Training {member} ({STEPS} steps) in {os.path.join(out, member)}" in printed
    assert f"fusion report: {os.path.join(out, 'fusion', 'report.md')}" in printed
    assert "| performance_weighted | fusion (paper)" in printed
    assert printed.startswith("The demo: 5 stages, about ")  # before any work: how long
    ensemble = os.path.join(out, "fusion", "ensemble")
    assert os.path.isdir(ensemble)
    assert f"    python -m cer_jax.predict --ensemble={ensemble} PHOTO_OR_VIDEO" in printed
    assert f"    tensorboard --logdir={out}\n" in printed
    face = printed.split(" --aligned ")[1].split()[0]
    assert os.path.isfile(face) and "compound-80-30-" in face

    # One name per member: --models value, workdir folder and report name.
    assert [m["name"] for m in report["members"]] == list(MODELS)
    assert len(report["class_names"]) == 11
    assert len(report["ablation"][evaluator.strategies_lib.PAPER_STRATEGY]) == 7
    for member, name in zip(report["members"], MODELS, strict=True):
        workdir = os.path.join(out, name)
        assert member["workdir"] == workdir
        assert export.export_is_current(workdir)
        info, outputs = export.load_export(workdir)
        assert member["step"] == info["step"]
        for split in ("validation", "test"):  # recomputed from the exported rows by sklearn
            labels, predictions = outputs[split]["labels"], outputs[split]["logits"].argmax(-1)
            metrics = member["metrics"][split]
            assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(labels, predictions))
            assert metrics["macro_f1"] == pytest.approx(
                skm.f1_score(labels, predictions, average="macro")
            )
    on_disk = json.loads(open(os.path.join(out, "fusion", "report.json")).read())
    assert on_disk["best_strategy"] == report["best_strategy"]


def test_a_rerun_skips_the_members_it_finished(demo_run, monkeypatch):
    """Before: a rerun of a finished demo restored and re-exported every member (minutes at
    full size) and said nothing of it."""
    from cer_jax import trainer

    out, report, _ = demo_run

    def no_training(config, workdir):
        raise AssertionError(f"trained {workdir} again")

    monkeypatch.setattr(trainer, "train_and_evaluate", no_training)
    monkeypatch.setattr(evaluator, "fuse", lambda config: report)  # the fusion is tested above
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        demo.run_demo(out, steps_scale=STEPS_SCALE, models=MODELS, num_train_images=80,
                      num_test_images=30)
    # Before: the estimate of a first run (about 10 min at full size) for a rerun that only fuses.
    assert printed.getvalue().startswith(
        f"The demo: 5 stages, about {demo.OTHER_SECONDS} s (less what vit, manet, resnet50 "
        "trained here earlier) on 2 CPU cores")
    for stage, member in enumerate(MODELS, start=2):
        assert (f"=== [{stage}/5] {member}: trained earlier in {os.path.join(out, member)} "
                f"({STEPS} steps), skipped ===") in printed.getvalue()
    # Another step count or data size is another run (check_same_settings / check_same_data
    # refuse it before any work).
    vit = os.path.join(out, "vit")
    config = demo.member_config("vit", os.path.join(out, "data"), STEPS_SCALE, 80, 30)
    assert demo.finished_member(config, vit)["step"] == report["members"][0]["step"]
    assert demo.finished_member(demo.member_config("vit", os.path.join(out, "data"), 0.01, 80, 30),
                                vit) is None
    assert demo.finished_member(demo.member_config("vit", os.path.join(out, "data"), STEPS_SCALE,
                                                   90, 30), vit) is None


def test_the_estimate_leaves_out_the_part_trained_earlier(tmp_path):
    """A member resumed from half its steps counts half; a finished one nothing."""
    assert demo.expected_seconds(["vit", "manet"], 1.0, {"vit": 1.0, "manet": 0.5}) == (
        demo.OTHER_SECONDS + demo.MEMBER_SECONDS["manet"] / 2)
    config = demo.member_config("vit", str(tmp_path / "data"), 1.0, 80, 30)
    assert demo.trained_part(config, str(tmp_path / "vit")) == 0  # no workdir yet


def test_other_data_sizes_into_an_earlier_demo_stop_in_one_line(demo_run):
    """Before: --num_train_images=200 into a 300-image demo's --out resumed and exported its
    members on the new data (a validation split that overlaps their old training data)."""
    out, _, _ = demo_run
    configs = {m: demo.member_config(m, os.path.join(out, "data"), STEPS_SCALE, 90, 30)
               for m in MODELS}
    with pytest.raises(synthetic.OutputPathError) as e:
        demo.check_same_data(configs, out)
    assert str(e.value) == (f"--out={out}: its vit was trained on other synthetic data "
                            "(--num_train_images=80 --num_test_images=30); give those again, or "
                            "a new --out.")
    demo.check_same_data({m: demo.member_config(m, "unused", STEPS_SCALE, 80, 30)
                          for m in MODELS}, out)


def test_a_member_stopped_before_its_first_save_does_not_hold_its_data_size(tmp_path):
    """Before: a demo stopped (Ctrl-C twice) in its first member's first steps left config.json
    alone, and a smaller demo into that --out stopped with 'its vit was trained on other
    synthetic data' although nothing was trained (the trainer starts such a workdir anew)."""
    from cer_jax import checkpointing

    out = str(tmp_path)
    data = os.path.join(out, "data")
    checkpointing.save_config(demo.member_config("vit", data, 1.0, 3000, 300),
                              os.path.join(out, "vit"))
    configs = {m: demo.member_config(m, data, 0.02, 300, 300) for m in MODELS}
    demo.check_same_data(configs, out)
    demo.check_same_settings(configs, out)


def test_another_steps_scale_into_an_earlier_demo_stops_in_one_line(demo_run, monkeypatch):
    """Before: the trainer resumed each member's 2-step run as a run of the new step count (its
    first steps on the old run's schedule), or given fewer steps exported the old run under the
    new count, while the demo printed 'Training vit (N steps)' and a report as of a fresh run."""
    from cer_jax import trainer

    out, _, _ = demo_run

    def resumed(config, workdir):
        raise AssertionError(f"resumed {workdir} with other settings")

    monkeypatch.setattr(trainer, "train_and_evaluate", resumed)
    printed = io.StringIO()
    with pytest.raises(synthetic.OutputPathError) as e, contextlib.redirect_stdout(printed):
        demo.run_demo(out, steps_scale=0.001, models=MODELS, num_train_images=80,
                      num_test_images=30)  # vit: 3 steps
    vit = os.path.join(out, "vit")
    assert str(e.value) == (
        f"--out={out}: its vit holds a run of other settings (training.num_steps=2 there, 3 "
        "here), from a demo of another --steps_scale or cer_jax version: give that "
        f"--steps_scale again, delete {vit} to train vit anew, or give a new --out.")
    assert printed.getvalue() == ""  # before any work
    # Every member that differs is named at once (not one per run).
    configs = {m: demo.member_config(m, os.path.join(out, "data"), 0.01, 80, 30) for m in MODELS}
    with pytest.raises(synthetic.OutputPathError) as e:
        demo.check_same_settings(configs, out)
    assert "(training.num_steps=2 there, 30 here; " in str(e.value)
    folders = " ".join(os.path.join(out, m) for m in MODELS)
    assert str(e.value).endswith(
        f", as do its manet and resnet50, from a demo of another --steps_scale or cer_jax "
        f"version: give that --steps_scale again, delete {folders} to train them anew, or give "
        "a new --out.")
    # Another recipe (a cer_jax version whose smoke config differs): the same line.
    config = demo.member_config("resnet50", os.path.join(out, "data"), STEPS_SCALE, 80, 30)
    config.optimizer.lr = 1e-3
    with pytest.raises(synthetic.OutputPathError, match=r"optimizer\.lr=0\.002 there, 0\.001 "):
        demo.check_same_settings({"resnet50": config}, out)


def test_models_names_the_misspelt_member():
    assert demo.check_models(["vit", "manet"])
    with pytest.raises(demo.flags.ValidationError) as e:
        demo.check_models(["vit", "manett"])
    assert str(e.value) == ("--models: 'manett' is not a member (did you mean manet?); give one "
                            "or more of: vit, manet, resnet50.")
    for each_once in ([], ["vit", "vit"]):
        with pytest.raises(demo.flags.ValidationError, match="each once"):
            demo.check_models(each_once)


@pytest.mark.parametrize("scale", ["0", "-1", "inf", "nan"])
def test_a_steps_scale_that_is_no_multiplier_is_a_flag_error(scale):
    """Before: --steps_scale=inf passed the check and was OverflowError's traceback."""
    with pytest.raises(demo.flags.ValidationError) as e:
        demo.check_steps_scale(float(scale))
    assert str(e.value) == ("--steps_scale must be a finite number > 0 (a multiplier of the "
                            "training steps).")
    assert demo.check_steps_scale(0.02)


def test_too_few_train_images_for_a_batch_stop_the_demo_in_a_line_of_its_own():
    """Before: after drawing and building, the trainer's 'training.global_batch_size=32 is
    larger than the 11 examples of split 'train_fit'; lower it', a key the demo has no flag for
    (--num_train_images=22, the smallest the drawing takes)."""
    configs = {m: demo.member_config(m, "/tmp/unused", STEPS_SCALE, 22, 11) for m in MODELS}
    with pytest.raises(synthetic.SyntheticSizeError) as e:
        demo.check_batches(configs, {"train": 22, "validation": 11, "train_fit": 11, "test": 11})
    assert str(e.value) == ("--num_train_images=22 gives 11 train_fit images, fewer than vit's "
                            "batch of 32: give more train images (the default is 3000).")
    demo.check_batches(configs, {"train": 80, "validation": 20, "train_fit": 60, "test": 30})


def test_fusion_reexports_stale_or_missing_member_exports(demo_run, tmp_path):
    """Members are restored from their best checkpoint when the export is stale or missing."""
    out, report, _ = demo_run
    vit, resnet = os.path.join(out, "vit"), os.path.join(out, "resnet50")
    manifest = os.path.join(vit, "export", "export.json")
    info = json.loads(open(manifest).read())
    with open(manifest, "w") as f:
        json.dump({**info, "step": -1}, f)  # stale: not the best checkpoint's step
    os.rename(os.path.join(resnet, "export"), os.path.join(tmp_path, "resnet_export_moved"))
    assert not export.export_is_current(vit) and not export.export_is_current(resnet)

    config = evaluator.resolve_config(
        evaluator.load_default_config(), workdirs=[vit, resnet], out=str(tmp_path / "fusion")
    )
    config.strategies = "performance_weighted"
    again = evaluator.fuse(config)
    assert export.export_is_current(vit) and export.export_is_current(resnet)
    first = {m["name"]: m for m in report["members"]}
    for member in again["members"]:
        assert member["step"] == first[member["name"]]["step"]
        assert member["metrics"]["test"]["accuracy"] == pytest.approx(
            first[member["name"]]["metrics"]["test"]["accuracy"]
        )


def test_too_few_images_stop_the_demo_before_anything_is_written(tmp_path):
    with pytest.raises(synthetic.SyntheticSizeError) as e:
        demo.run_demo(str(tmp_path / "demo"), num_train_images=21)
    assert str(e.value) == ("--num_train_images=21: 21 images cannot give each of the 11 "
                            "compound classes at least 2: ask for at least 22.")
    assert not (tmp_path / "demo").exists()


def test_a_bucket_out_stops_the_demo_in_one_line(tmp_path, monkeypatch):
    """Before: os.makedirs made a local folder named gs: in the working directory, and the whole
    demo was written there with no word of it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(synthetic.OutputPathError) as e:
        demo.run_demo("gs://b/demo", num_train_images=22, num_test_images=11)
    assert str(e.value) == ("--out=gs://b/demo: give a local folder (this writes on this machine "
                            "only; copy the folder to the bucket afterwards).")
    with pytest.raises(synthetic.OutputPathError):
        synthetic.write_tree("gs://b/compound", num_train_images=22, num_test_images=11)
    assert list(tmp_path.iterdir()) == []


def test_an_out_that_is_a_file_stops_the_demo_in_one_line(tmp_path):
    """Before: NotADirectoryError (a traceback) once the demo began to write."""
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    with pytest.raises(synthetic.OutputPathError) as e:
        demo.run_demo(str(file / "demo"), num_train_images=22, num_test_images=11)
    assert str(e.value) == (f"--out={file / 'demo'}: {file} is a file, not a folder; give --out "
                            "a folder path.")
    result = subprocess.run([sys.executable, "-m", "cer_jax.demo", f"--out={file}"],
                            capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stderr) == (
        2, f"error: --out={file}: {file} is a file, not a folder; give --out a folder path.\n")
    assert os.listdir(tmp_path) == ["notes.txt"] and file.read_text() == "mine"


def test_a_folder_of_the_users_own_is_refused_as_out(tmp_path):
    """The report would be merged into its fusion/ and a member would resume a workdir of the
    same name found there; an earlier demo's folder is written again (the run above)."""
    mine = tmp_path / "mine"
    (mine / "fusion").mkdir(parents=True)
    (mine / "fusion" / "notes.txt").write_text("mine")
    with pytest.raises(synthetic.OutputPathError) as e:
        demo.run_demo(str(mine), num_train_images=22, num_test_images=11)
    assert str(e.value) == (
        f"--out={mine} is a folder with other files (no .cer_jax_demo: not an earlier demo's); "
        "the demo would write data/, a workdir per member and fusion/ into it, and resume a "
        "workdir it found there. Give a new or empty folder.")
    assert sorted(os.listdir(mine)) == ["fusion"]


def test_an_out_that_cannot_be_written_stops_the_demo_in_one_line():
    """Before: a PermissionError traceback once the demo began to write."""
    out = "/sys/cer_jax_demo"  # sysfs: no one may make a folder there
    with pytest.raises(synthetic.OutputPathError) as e:
        demo.run_demo(out, num_train_images=22, num_test_images=11)
    assert str(e.value).startswith(f"--out={out}: cannot write there (")
    assert str(e.value).endswith("); give a folder you can write.")


def test_a_disk_that_fills_up_while_drawing_stops_the_demo_in_one_line(tmp_path, monkeypatch):
    """Before: OSError's traceback from the drawing's JPEG write (a real 3 MB tmpfs as --out)."""
    def full(root, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{root}/Image/original/1.jpg")

    monkeypatch.setattr(synthetic, "write_tree", full)
    out = str(tmp_path / "demo")
    with pytest.raises(synthetic.OutputPathError) as e:
        demo.run_demo(out, num_train_images=22, num_test_images=11)
    assert str(e.value).startswith(
        f"--out={out}: a write failed, the disk is full (No space left on device, writing {out}/")
    assert str(e.value).endswith(
        "/Image/original/1.jpg); free space there, or give a new --out on a larger disk, and "
        "run the same command again: it resumes where it stopped.")


def test_a_disk_that_fills_up_at_a_checkpoint_stops_the_demo_in_one_line(tmp_path,
                                                                        monkeypatch):
    """Before: Orbax's ValueError (RESOURCE_EXHAUSTED) at the end of a page of tracebacks, CLU's
    failed TensorBoard flush among them (a real 10 MB tmpfs as --out); another error stays as
    it was."""
    from cer_jax.data import pipeline

    out = str(tmp_path / "demo")
    file = f"{out}/vit/checkpoints/7.orbax-checkpoint-tmp/default.orbax-checkpoint-tmp/m.ocdbt"
    orbax = ValueError(f'RESOURCE_EXHAUSTED: Error writing local file "{file}": Failed to '
                       "write 116 bytes to file 11: No space left on device "
                       "[os_error_code='28']")
    monkeypatch.setattr(pipeline, "get_dataset_info", lambda config: (_ for _ in ()).throw(orbax))
    with pytest.raises(synthetic.OutputPathError) as e:
        demo.run_demo(out, num_train_images=22, num_test_images=11)
    assert str(e.value) == (
        f"--out={out}: a write failed, the disk is full (No space left on device, writing "
        f"{file}); free space there, or give a new --out on a larger disk, and run the same "
        "command again: it resumes where it stopped.")
    assert e.value.__cause__ is orbax
    other = ValueError("another error")
    monkeypatch.setattr(pipeline, "get_dataset_info", lambda config: (_ for _ in ()).throw(other))
    with pytest.raises(ValueError) as e:
        demo.run_demo(out, num_train_images=22, num_test_images=11)
    assert e.value is other


def test_a_member_stopped_by_sigterm_stops_the_demo_before_the_next(demo_run, monkeypatch):
    """A preempted member has no export: the demo says so instead of training the next one and
    failing in the fusion."""
    from cer_jax import trainer

    out, _, _ = demo_run
    started = []

    def preempted(config, workdir):
        started.append(os.path.basename(workdir))
        return {"stopped": "preempted", "step": 1, "train": {}, "eval": {}}

    monkeypatch.setattr(trainer, "train_and_evaluate", preempted)
    # As if unfinished, so that vit trains (on) rather than is skipped.
    monkeypatch.setattr(demo, "finished_member", lambda config, workdir: None)
    with pytest.raises(demo.DemoStopped) as e, contextlib.redirect_stdout(io.StringIO()):
        demo.run_demo(out, steps_scale=STEPS_SCALE, models=MODELS, num_train_images=80,
                      num_test_images=30)
    assert str(e.value) == ("vit stopped at step 1 (preempted): run the same command again to "
                            "resume.")
    assert started == ["vit"]
    assert e.value.exit_status == 143  # 128 + SIGTERM, as cer_jax.predict's; not 2 (bad input)


def test_the_demo_log_keeps_its_own_lines_and_drops_tfds_and_clu_echoes():
    """Before: 422 lines for a 300-image demo, 145 of them TFDS's notes on each dataset opened
    and 93 CLU echoes (hyper-parameters, images, each class's F1) around the trainer's own."""
    import logging as std_logging

    def record(path, level, msg):
        return std_logging.makeLogRecord(
            {"pathname": os.path.join(os.sep, "site-packages", *path.split("/")),
             "levelno": level, "msg": msg})

    info, error = std_logging.INFO, std_logging.ERROR
    dropped = [record("tensorflow_datasets/core/reader.py", info, "Creating a tf.data.Dataset"),
               record("tensorflow_datasets/core/features/feature.py", std_logging.WARNING, "x"),
               record("clu/metric_writers/logging_writer.py", info, "[Hyperparameters] {}"),
               record("clu/metric_writers/logging_writer.py", info, "[15] Got images: {}."),
               record("clu/metric_writers/logging_writer.py", info, "[15] test/f1/Sadly Angry=0")]
    kept = [record("tensorflow_datasets/core/reader.py", error, "cannot read"),
            record("clu/metric_writers/logging_writer.py", info, "[7] train/loss=2.99"),
            record("cer_jax/trainer.py", info, "step 15 validation: accuracy 0.21")]
    assert [demo.not_demo_chatter(r) for r in dropped] == [False] * len(dropped)
    assert [demo.not_demo_chatter(r) for r in kept] == [True] * len(kept)
