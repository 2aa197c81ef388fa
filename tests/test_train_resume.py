"""Interrupting and resuming, preemption (SIGTERM) and non-finite losses, on a tiny ViT."""

from __future__ import annotations

import json
import os
import shutil
import signal

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from conftest import Killed, smoke_config

from cer_jax import checkpointing, evaluate, export, sharding, steps, train_state, trainer
from cer_jax.errors import UserError

# Shares its expensive session fixtures with other files: one xdist worker runs them all.
pytestmark = pytest.mark.xdist_group("smoke_data")

TOTAL_STEPS = 8


def tiny_config(cache_dir, **overrides):
    """A seconds-long ViT run with dropout, so the RNG state must resume too."""
    settings = {
        "model.variant": "test/8",
        "model.dropout": 0.1,
        "input.image_size": 32,
        "input.resize_size": 36,
        "training.global_batch_size": 16,
        "training.num_steps": TOTAL_STEPS,
        "training.log_every_steps": 2,
        "training.eval_every_steps": 4,
        "schedule.warmup_steps": 2,
        "export.splits": ("validation",),
    }
    settings.update(overrides)
    return smoke_config("vit", cache_dir, **settings)


def saved_steps(workdir) -> list[int]:
    path = os.path.join(workdir, "checkpoints")
    return sorted(int(name) for name in os.listdir(path) if name.isdigit())


def saved_state(workdir, step: int) -> dict:
    return ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(step), "default")
    )


@pytest.fixture(scope="module")
def halted_workdir(tmp_path_factory, synthetic_cache_dir):
    """A run stopped after 4 of its 8 steps by training.halt_after_steps."""
    workdir = tmp_path_factory.mktemp("halted") / "run"
    config = tiny_config(synthetic_cache_dir, **{"training.halt_after_steps": 4})
    result = trainer.train_and_evaluate(config, str(workdir))
    assert result["stopped"] == "halted" and result["step"] == 4
    return workdir


def test_halted_run_keeps_its_checkpoint_and_does_not_export(halted_workdir):
    assert saved_steps(halted_workdir) == [4]
    assert os.path.isfile(halted_workdir / "config.json")
    assert not os.path.exists(halted_workdir / "export")


def test_a_warm_up_as_long_as_the_run_is_cut_with_a_warning(tmp_path, synthetic_cache_dir,
                                                           monkeypatch, caplog):
    """A recipe's warm-up in a short run (20 steps of 8) is cut to the run's length less one,
    on purpose; it was cut without a word, and the learning rate never decayed."""
    from cer_jax import optim

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(optim, "create_optimizer", stop)  # the schedule is made: enough
    config = tiny_config(synthetic_cache_dir, **{"schedule.warmup_steps": 20})
    with caplog.at_level("WARNING"), pytest.raises(Stop):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert ("The warm-up (schedule.warmup_steps: 20 steps) is not shorter than the run's 8 "
            "steps: it is cut to 7, so the learning rate reaches optimizer.lr at the last step "
            "and never decays.") in caplog.text


def test_a_halt_between_log_points_stops_at_its_step(tmp_path, synthetic_cache_dir):
    """Step 3 is no log, evaluation or checkpoint step (every 2 and 4): halted there anyway."""
    workdir = tmp_path / "run"
    result = trainer.train_and_evaluate(
        tiny_config(synthetic_cache_dir, **{"training.halt_after_steps": 3}), str(workdir))
    assert (result["stopped"], result["step"]) == ("halted", 3)
    assert saved_steps(workdir) == [3]


def test_the_same_command_again_after_a_halt_trains_nothing(halted_workdir, tmp_path,
                                                            synthetic_cache_dir, caplog):
    """A run halted at step 4 and run again with the same training.halt_after_steps=4 trained
    on to its next log step (6) and halted there: each rerun trained a few steps past the halt
    it asked for. It now stops at once, saying so."""
    workdir = tmp_path / "run"
    shutil.copytree(halted_workdir, workdir)
    with caplog.at_level("WARNING"):
        result = trainer.train_and_evaluate(
            tiny_config(synthetic_cache_dir, **{"training.halt_after_steps": 4}), str(workdir))
    assert (result["stopped"], result["step"]) == ("halted", 4)
    assert saved_steps(workdir) == [4]
    assert "training.halt_after_steps=4 is reached, so nothing is trained" in caplog.text


def test_a_sampling_run_that_recorded_a_shuffle_buffer_resumes_without_it(halted_workdir,
                                                                           tmp_path):
    """balance=sampling reads no shuffle buffer, and the trainer now refuses one beside it: a
    workdir trained so before that (its config.json records both) could resume neither with the
    buffer (refused) nor without it (another run's data order)."""
    workdir = tmp_path / "run"
    shutil.copytree(halted_workdir, workdir)
    recorded = json.loads((workdir / "config.json").read_text())
    recorded["input"].update(balance="sampling", shuffle_buffer=100)
    (workdir / "config.json").write_text(json.dumps(recorded))
    config = ml_collections.ConfigDict(recorded)
    config.input.shuffle_buffer = None
    checkpointing.check_same_run(config, str(workdir))  # no error


@pytest.mark.parametrize(("key", "value", "there", "named"), [
    ("training.global_batch_size", 8, 16, None), ("input.num_data_shards", 2, 1, None),
    ("input.seed", 1, 0, None), ("seed", 1, 0, "input.seed"),  # input.seed=None follows seed
    ("input.shuffle_buffer", 4, None, None), ("input.balance", "sampling", "none", None),
    ("checkpoint.best_split", "test", "validation", None)])
def test_resuming_with_another_data_order_is_refused(halted_workdir, tmp_path,
                                                     synthetic_cache_dir, key, value, there,
                                                     named):
    """The stream resumes at step x batch over the shards of the same shuffles: another batch
    or shard count, seed, shuffle buffer or class balancing would skip or repeat examples, not
    go on with the same order. Another checkpoint.best_split would weigh its macro F1 against
    the recorded best's on validation, choosing best/ by neither split."""
    workdir = tmp_path / "run"
    shutil.copytree(halted_workdir, workdir)
    with pytest.raises(UserError) as e:
        trainer.train_and_evaluate(tiny_config(synthetic_cache_dir, **{key: value}), str(workdir))
    assert str(e.value) == (
        f"--workdir={workdir} holds checkpoints of another run ({named or key}={there!r} there, "
        f"{value!r} "
        "here). Resume with the settings it was trained with, use a new --workdir, or delete "
        "this one to start over.")
    assert saved_steps(workdir) == [4]


def test_input_seed_varies_the_data_order_alone_and_seed_the_initialisation(
        tmp_path, synthetic_cache_dir, monkeypatch):
    """`seed` initialises the model and, unless input.seed is set, seeds the data order too;
    input.seed varies the data order (and augmentations) with the same initialisation."""
    seen = []
    create_model = trainer.train_state.create_model

    def recording_create_model(config, num_classes, seed):
        seen.append(seed)
        return create_model(config, num_classes, seed=seed)

    class Stop(Exception):
        pass

    def recording_iterator(config, info, *, seed, **kwargs):
        seen.append(seed)
        raise Stop

    monkeypatch.setattr(trainer.train_state, "create_model", recording_create_model)
    monkeypatch.setattr(trainer.pipeline, "train_iterator", recording_iterator)
    for overrides, wanted in [({"seed": 3}, [3, 3]), ({"seed": 3, "input.seed": 7}, [3, 7])]:
        seen.clear()
        workdir = tmp_path / str(len(overrides))
        with pytest.raises(Stop):
            trainer.train_and_evaluate(tiny_config(synthetic_cache_dir, **overrides), str(workdir))
        assert seen == wanted, overrides
        with open(workdir / "config.json") as f:  # the data order's seed, resolved
            assert json.load(f)["input"]["seed"] == wanted[1]


def test_a_workdir_without_checkpoints_starts_anew_with_any_config(halted_workdir, tmp_path,
                                                                   synthetic_cache_dir):
    """A run stopped before its first save (a non-finite loss, Ctrl-C while compiling) leaves
    its config.json and maybe an unfinished save: nothing to resume, so another seed, shard
    count or model.dtype (the non-finite hint's float32) must not be refused as another run's
    checkpoints, nor the old shard count taken over."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    shutil.copy(halted_workdir / "config.json", workdir)
    (workdir / "checkpoints" / "4.orbax-checkpoint-tmp-1").mkdir(parents=True)
    (workdir / "best").mkdir()
    config = tiny_config(synthetic_cache_dir, **{"seed": 1, "model.dtype": "float32",
                                                 "input.num_data_shards": None})
    recorded = checkpointing.load_config(str(workdir))
    recorded.input.num_data_shards = 2
    checkpointing.save_config(recorded, str(workdir))
    _, resolved = trainer.prepare(config, str(workdir))
    assert (resolved.seed, resolved.input.num_data_shards) == (1, jax.process_count())
    # With a committed step the same config is another run's.
    shutil.copytree(halted_workdir / "checkpoints" / "4", workdir / "checkpoints" / "4")
    with pytest.raises(checkpointing.WorkdirError, match="holds checkpoints of another run"):
        trainer.prepare(config, str(workdir))


@pytest.mark.parametrize("key", ["init.checkpoint", "init.workdir"])
def test_a_resume_needs_no_init_source_which_a_fresh_run_still_checks(
        halted_workdir, tmp_path, synthetic_cache_dir, caplog, key):
    """The pre-trained weights (or warm-start run) load only at step 0: a resume on another
    machine, where that file is gone, goes on from its checkpoint, with an info line."""
    workdir = tmp_path / "run"
    shutil.copytree(halted_workdir, workdir)
    config = tiny_config(synthetic_cache_dir, **{key: str(tmp_path / "gone")})
    with caplog.at_level("INFO"):
        _, resolved = trainer.prepare(config, str(workdir))
    recorded = checkpointing.load_config(str(workdir)).model
    assert resolved.model.to_dict() == recorded.to_dict()
    assert f"{key}={tmp_path / 'gone'} cannot be read, and need not be" in caplog.text
    with pytest.raises(trainer.ConfigError, match=f"^{key}='{tmp_path / 'gone'}'"):
        trainer.prepare(config, str(tmp_path / "fresh"))


@pytest.mark.parametrize("key", ["init.checkpoint", "init.workdir"])
def test_an_init_source_on_a_bucket_without_access_is_one_line_and_no_matter_on_a_resume(
        halted_workdir, tmp_path, synthetic_cache_dir, caplog, monkeypatch, key):
    """gs:// on a machine without access to the bucket (no credentials, no network): the
    check that the file exists raised (TF's 'Could not resolve host', PermissionDenied) as a
    traceback, also on a resume, which README says needs no init source."""
    from etils import epath

    gpath = type(epath.Path("gs://bucket/x"))
    exists = gpath.exists

    def no_access(self):
        if os.fspath(self).startswith("gs://no-access/"):
            raise PermissionError(13, "Permission denied", os.fspath(self))
        return exists(self)

    monkeypatch.setattr(gpath, "exists", no_access)
    workdir = tmp_path / "run"
    shutil.copytree(halted_workdir, workdir)
    config = tiny_config(synthetic_cache_dir, **{key: "gs://no-access/weights"})
    with caplog.at_level("INFO"):
        trainer.prepare(config, str(workdir))
    assert f"{key}=gs://no-access/weights cannot be read, and need not be" in caplog.text
    with pytest.raises(trainer.ConfigError) as e:
        trainer.prepare(config, str(tmp_path / "fresh"))
    assert str(e.value) == (
        f"{key}='gs://no-access/weights' cannot be read (Permission denied): check the path, "
        "and this machine's access to its bucket (gcloud auth application-default login), or "
        f"unset {key} to train from scratch.")


def test_a_workdir_or_member_on_a_bucket_without_access_is_one_line(
        tmp_path, synthetic_cache_dir, monkeypatch):
    """--workdir=gs://... (or a fusion member there) on a machine without access to the bucket
    was a traceback from the first listing."""
    from etils import epath

    from cer_jax.fusion import members as members_lib

    gpath = type(epath.Path("gs://bucket/x"))
    for method in ("exists", "is_dir"):
        def no_access(self, original=getattr(gpath, method)):
            if os.fspath(self).startswith("gs://no-access/"):
                raise PermissionError(13, "Permission denied", os.fspath(self))
            return original(self)
        monkeypatch.setattr(gpath, method, no_access)
    with pytest.raises(checkpointing.WorkdirError) as e:
        trainer.prepare(tiny_config(synthetic_cache_dir), "gs://no-access/runs/vit")
    assert str(e.value) == (
        "--workdir=gs://no-access/runs/vit cannot be read (Permission denied): check the path, "
        "and this machine's access to its bucket (gcloud auth application-default login).")
    with pytest.raises(members_lib.MemberError) as e:
        members_lib.check_members(["gs://no-access/runs/vit"], ["validation"])
    assert str(e.value) == (
        "Member workdir gs://no-access/runs/vit cannot be read (Permission denied): check the "
        "path, and this machine's access to its bucket (gcloud auth application-default login) "
        "(flag --workdirs / config key workdirs).")


def test_a_resume_without_its_init_source_builds_the_network_its_weights_implied(
        halted_workdir, tmp_path, synthetic_cache_dir):
    """A run from an AugReg .npz records the tanh GELU that the file implies. Relaunched without
    init.checkpoint (read at step 0 only), the resume took the model's default, exact GELU, and
    was refused as another run (model.gelu_approximate=True there, False here)."""
    workdir = tmp_path / "run"
    shutil.copytree(halted_workdir, workdir)
    recorded = json.loads((workdir / "config.json").read_text())
    recorded["model"]["gelu_approximate"] = True  # as an AugReg / big_vision .npz implies it
    (workdir / "config.json").write_text(json.dumps(recorded))
    _, resolved = trainer.prepare(tiny_config(synthetic_cache_dir), str(workdir))
    assert resolved.model.gelu_approximate is True
    # Another value set on the command line is still refused, naming where the value comes from.
    contradiction = r"model\.gelu_approximate=False contradicts .*config\.json"
    with pytest.raises(UserError, match=contradiction):
        trainer.prepare(tiny_config(synthetic_cache_dir, **{"model.gelu_approximate": False}),
                        str(workdir))


@pytest.mark.parametrize(("num_steps", "says"), [
    (12, "the learning-rate schedule is now the one of a 12-step run"),
    (3, "it ends here: nothing is trained, its best checkpoint is exported")])
def test_a_resume_of_another_run_length_says_so(halted_workdir, tmp_path, synthetic_cache_dir,
                                                caplog, num_steps, says):
    """An 8-step run halted at step 4, resumed as a 12- or 3-step one (num_epochs in a command
    relaunched without its override, say): the learning rate went onto another schedule, or the
    run ended at once with status 0, and nothing said so."""
    workdir = tmp_path / "run"
    shutil.copytree(halted_workdir, workdir)
    config = tiny_config(synthetic_cache_dir, **{"training.num_steps": num_steps,
                                                  "training.halt_after_steps": 6})
    with caplog.at_level("WARNING"):
        result = trainer.train_and_evaluate(config, str(workdir))
    assert result["step"] == (6 if num_steps == 12 else 4)
    assert (f"Resuming {workdir} at step 4: it was a {TOTAL_STEPS}-step run and is now a "
            f"{num_steps}-step one (training.num_steps / num_epochs, or the size of "
            f"dataset.train_split, changed); {says}.") in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # the same length again: no warning
        trainer.train_and_evaluate(config, str(workdir))
    assert "Resuming" not in caplog.text


def test_a_resume_on_changed_data_says_so(halted_workdir, tmp_path, synthetic_cache_dir, caplog):
    """The same dataset name over other images (a dataset.folder added to, another synthetic
    size): the resumed run trained, and chose its best checkpoint, on other examples than the
    run it went on, without a word (with training.num_steps its length does not change)."""
    workdir = tmp_path / "run"
    shutil.copytree(halted_workdir, workdir)
    recorded = json.loads((workdir / "config.json").read_text())
    size = recorded["dataset_info"]["split_sizes"]["validation"]
    recorded["dataset_info"]["split_sizes"]["validation"] = size - 2  # 2 images added since
    (workdir / "config.json").write_text(json.dumps(recorded))
    config = tiny_config(synthetic_cache_dir, **{"training.halt_after_steps": 4})
    with caplog.at_level("WARNING"):
        trainer.train_and_evaluate(config, str(workdir))
    assert (f"Resuming {workdir} at step 4: its data changed since config.json was written "
            f"(examples per split: validation {size - 2} there, {size} here); it goes on "
            "training, and choosing its best checkpoint, on other examples than before. Resume "
            "with the data it was trained on, or train anew in another --workdir."
            ) in caplog.text
    assert "-step run and is now" not in caplog.text  # the same length


def test_a_resume_lists_the_workdirs_checkpoints_once_before_training(
        halted_workdir, tmp_path, synthetic_cache_dir, monkeypatch):
    """Each listing is several requests on gs://: the checks before training listed the
    checkpoints three times (resuming?, the recorded shard count, the same run?)."""
    workdir = tmp_path / "run"
    shutil.copytree(halted_workdir, workdir)
    listed = []
    any_checkpoint_step = ocp.path.step.any_checkpoint_step

    def listing(folder):
        listed.append(folder)
        return any_checkpoint_step(folder)

    monkeypatch.setattr(ocp.path.step, "any_checkpoint_step", listing)
    config = tiny_config(synthetic_cache_dir, **{"input.num_data_shards": None})
    trainer.prepare(config, str(workdir))
    assert [str(folder) for folder in listed] == [str(workdir / "checkpoints")]


def test_a_resume_with_another_seed_keeps_the_runs_seed(halted_workdir, synthetic_cache_dir,
                                                         caplog):
    """With input.seed given (the same data order), another `seed` resumed: it changes nothing
    (the resume restores the model it initialised), yet config.json, export.json and the
    fusion report then named it as the run's seed."""
    recorded = json.loads((halted_workdir / "config.json").read_text())
    config = tiny_config(synthetic_cache_dir, **{
        "seed": recorded["seed"] + 1, "input.seed": recorded["input"]["seed"]})
    with caplog.at_level("WARNING"):
        _, resolved = trainer.prepare(config, str(halted_workdir))
    assert resolved.seed == recorded["seed"]
    assert (f"Resuming {halted_workdir}: seed={recorded['seed'] + 1} here, {recorded['seed']} "
            "there; the seed only initialises the model, which the resume restores, so the run "
            f"keeps seed={recorded['seed']}.") in caplog.text


def test_a_run_whose_train_states_were_deleted_is_not_trained_anew_beside_its_export(
        halted_workdir, tmp_path, synthetic_cache_dir):
    """checkpoints/ deleted to save space once a run was over: the same command again (a SLURM
    script run again re-exports finished members) trained a new run from step 0 beside the old
    best checkpoint and export, each new evaluation having to beat the old run's best."""
    workdir = tmp_path / "train_states_deleted"
    shutil.copytree(halted_workdir, workdir)
    shutil.rmtree(workdir / "checkpoints")
    config = tiny_config(synthetic_cache_dir)
    trainer.prepare(config, str(workdir))  # no export: a run killed before its first save
    (workdir / "export").mkdir()
    (workdir / "export" / "export.json").write_text("{}")
    with pytest.raises(UserError) as e:
        trainer.prepare(config, str(workdir))
    assert str(e.value) == (
        f"{workdir} holds an export and a best checkpoint but no train state to resume "
        f"({workdir / 'checkpoints'} is empty or deleted): training here would start another "
        "run beside them. Use it as it is (python -m cer_jax.fuse, cer_jax.predict), or train "
        "anew with a new --workdir.")


def test_fine_tuning_from_a_run_that_stopped_early_says_so(
        halted_workdir, tmp_path, synthetic_cache_dir, caplog):
    """The README's fine-tuning from the basic run, after that run was halted or preempted (a
    `;` in a script goes on after its exit status 143), started from a partly trained model
    without a word."""
    message = (f"init.workdir={halted_workdir} stopped at step 4 of {TOTAL_STEPS} (halted or "
               "preempted, or still training): this run starts from its best checkpoint so "
               f"far, not its finished run's; run python -m cer_jax.train on {halted_workdir} "
               "again to finish it first, unless that is meant.")
    config = tiny_config(synthetic_cache_dir, **{"init.workdir": str(halted_workdir)})
    with caplog.at_level("WARNING"):
        trainer.prepare(config, str(tmp_path / "fine_tuned"))
    assert message in caplog.text

    finished = tmp_path / "finished"  # at its last step: no warning
    shutil.copytree(halted_workdir, finished)
    recorded = json.loads((finished / "config.json").read_text())
    recorded["dataset_info"]["total_steps"] = 4
    (finished / "config.json").write_text(json.dumps(recorded))
    caplog.clear()
    with caplog.at_level("WARNING"):
        trainer.prepare(tiny_config(synthetic_cache_dir, **{"init.workdir": str(finished)}),
                        str(tmp_path / "fine_tuned_from_finished"))
    assert "stopped at step" not in caplog.text


def test_keep_head_of_a_run_on_other_classes_is_refused_in_one_line(
        halted_workdir, tmp_path, synthetic_cache_dir):
    """basic-7 and the 7 C-EXPR-DB classes give heads of one shape: keep_head must compare the
    class names (and their order), or it keeps a head of other classes silently."""
    source = tmp_path / "source"
    shutil.copytree(halted_workdir, source)
    recorded = checkpointing.load_config(str(source))
    names = list(recorded.dataset_info.class_names)
    config = tiny_config(synthetic_cache_dir, **{"init.workdir": str(source),
                                                 "init.keep_head": True})
    trainer.prepare(config, str(tmp_path / "same"))  # the same classes: kept
    for other, order in ((names[::-1], " (the same classes in another order)"),
                         ([*names[:-1], "Neutral"], "")):
        recorded.dataset_info.class_names = other
        checkpointing.save_config(recorded, str(source))
        with pytest.raises(UserError) as e:
            trainer.prepare(config, str(tmp_path / "new"))
        assert str(e.value) == (
            f"init.keep_head=True keeps the head of init.workdir={source}, trained on classes "
            f"{other}, but this dataset's are {names}{order}: set --config.init.keep_head=False "
            "to learn a new head, or start from a run on these classes.")


def test_a_best_step_saved_again_replaces_the_first(tmp_path, synthetic_cache_dir):
    """A run killed (SIGKILL, out of memory) after best/S was committed but before checkpoints/
    reached S evaluates S again when resumed; scoring higher there, it saves best/S again, which
    Orbax refused (StepAlreadyExistsError) on every resume."""
    config = tiny_config(synthetic_cache_dir)
    model = train_state.create_model(config, num_classes=7, seed=0)
    _, state = train_state.create_train_state(model, optax.sgd(0.1))
    workdir = str(tmp_path / "run")
    ckpts = checkpointing.Checkpoints(workdir, keep=1)
    ckpts.save_best(4, state, {checkpointing.BEST_METRIC: 0.25})
    ckpts.wait()
    ckpts.save_best(4, state, {checkpointing.BEST_METRIC: 0.5})
    ckpts.wait()
    assert (checkpointing.best_step(workdir), ckpts.best_value()) == (4, 0.5)
    ckpts.close()


def test_a_save_cut_short_is_cleaned_up_by_the_next_run(tmp_path):
    """A preemption's save killed in its grace period left Orbax's temporary folder, a whole
    train state that no save of another step removed: each such kill cost that much disk."""
    workdir = tmp_path / "run"
    for folder in (checkpointing.LATEST_DIR, checkpointing.BEST_DIR):
        leftover = workdir / folder / "5.orbax-checkpoint-tmp"
        leftover.mkdir(parents=True)
        (leftover / "array").write_bytes(bytes(1024))
    state = {"step": np.int32(7), "params": {"w": np.ones(3, np.float32)},
             "rest": {"mean": np.zeros(3, np.float32)}, "opt_state": {"mu": np.zeros(3)}}
    ckpts = checkpointing.Checkpoints(str(workdir), keep=2)
    try:
        ckpts.save_latest(7, state)
        ckpts.save_best(7, state, {checkpointing.BEST_METRIC: 0.5})
        ckpts.wait()
    finally:
        ckpts.close()
    for folder in (checkpointing.LATEST_DIR, checkpointing.BEST_DIR):
        assert not [name for name in os.listdir(workdir / folder) if "tmp" in name], folder
        assert os.path.isdir(workdir / folder / "7")


def test_a_best_checkpoint_replaced_while_it_is_restored_gives_the_new_one(
        tmp_path, synthetic_cache_dir, monkeypatch):
    """Fusion (its export) reading a member whose run, still training, saves a better step and
    deletes the one being read: Orbax's "Must provide `args` of type `Composite`" traceback."""
    config = tiny_config(synthetic_cache_dir)
    config.dataset_info = ml_collections.ConfigDict({"num_classes": 7})
    model = train_state.create_model(config, num_classes=7, seed=0)
    _, state = train_state.create_train_state(model, optax.sgd(0.1))
    workdir = str(tmp_path / "run")
    checkpointing.save_config(config, workdir)
    ckpts = checkpointing.Checkpoints(workdir, keep=1)
    ckpts.save_best(4, state, {checkpointing.BEST_METRIC: 0.25})
    ckpts.wait()
    ckpts.save_best(8, state, {checkpointing.BEST_METRIC: 0.5})  # best/4 deleted
    ckpts.wait()
    ckpts.close()
    read = checkpointing.best_step
    calls = []

    def best_step(workdir):  # the first read came just before step 8 was saved
        calls.append(workdir)
        return 4 if len(calls) == 1 else read(workdir)

    monkeypatch.setattr(checkpointing, "best_step", best_step)
    _, step, restored, _ = checkpointing.restore_best_state(workdir, sharding.local_mesh())
    assert step == 8
    assert jax.tree.structure(restored) == jax.tree.structure(train_state.model_state(state))


def _tensorboard_steps(workdir) -> dict[str, list[int]]:
    """{tag: steps} as TensorBoard's loader (the one of --load_fast=false) reads the workdir."""
    from tensorboard.backend.event_processing import plugin_event_accumulator

    events = plugin_event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
    events.Reload()
    return {tag: [event.step for event in events.Tensors(tag)]
            for tag in events.Tags()["tensors"]}


def test_the_best_steps_confusion_matrices_stay_in_tensorboards_sample(
    tmp_path, synthetic_cache_dir
):
    """TensorBoard shows a sample of 10 images per tag, always with the latest: over a run's
    evaluations the best step's confusion matrices were often sampled away. Each new best
    writes them again under `<split>/confusion_matrix_best`, whose latest is the best step's."""
    from tensorboard.backend.event_processing import data_ingester, plugin_event_accumulator

    workdir = tmp_path / "run"
    config = tiny_config(synthetic_cache_dir, **{"training.eval_every_steps": 2})
    result = trainer.train_and_evaluate(config, str(workdir))
    events = plugin_event_accumulator.EventAccumulator(
        str(workdir), tensor_size_guidance=data_ingester.DEFAULT_TENSOR_SIZE_GUIDANCE)
    events.Reload()
    for split in ("validation", "test"):
        steps = [event.step for event in events.Tensors(f"{split}/confusion_matrix_best")]
        assert steps[-1] == result["best_step"], (split, steps)
        assert set(steps) <= {2, 4, 6, 8}


def test_a_run_resumed_after_a_kill_replaces_the_steps_it_logs_again_in_tensorboard(
    halted_workdir, tmp_path, synthetic_cache_dir, monkeypatch
):
    """Killed after logging (and evaluating) step 8 but before saving it, a run resumes from
    step 4 and logs steps 6 and 8 again: TensorBoard held two values of each (a zig-zag)."""
    workdir = tmp_path / "run"
    shutil.copytree(halted_workdir, workdir)
    save_latest = checkpointing.Checkpoints.save_latest

    def killed_at_the_last_save(self, step, *args, **kwargs):
        if step == TOTAL_STEPS:
            raise Killed
        return save_latest(self, step, *args, **kwargs)

    config = tiny_config(synthetic_cache_dir)
    with monkeypatch.context() as patch:
        patch.setattr(checkpointing.Checkpoints, "save_latest", killed_at_the_last_save)
        with pytest.raises(Killed):
            trainer.train_and_evaluate(config, str(workdir))
    assert saved_steps(workdir) == [4]
    result = trainer.train_and_evaluate(config, str(workdir))
    assert result["step"] == TOTAL_STEPS
    logged = _tensorboard_steps(workdir)
    assert logged["train/loss"] == [2, 4, 6, 8]
    assert logged["validation/macro_f1"] == [4, 8]
    assert all(steps == sorted(set(steps)) for steps in logged.values()), logged
    # best/ may hold step 8, saved before the kill: its images, dropped by the purge, return.
    assert logged["validation/confusion_matrix_best"][-1] == result["best_step"]


def test_a_writer_without_the_private_hook_trains_on_with_a_warning(tmp_path, caplog):
    """The session marker goes through CLU's and TF's private API: a release that moves it
    costs only the marker, never the run."""
    from clu import metric_writers

    events = metric_writers.SummaryWriter(str(tmp_path))
    del events._summary_writer  # as a CLU release without that attribute
    trainer._write_session_start(events, 5)
    assert "TensorBoard session marker not written" in caplog.text


def _assert_same_state(got, want) -> None:
    """Float leaves to float32 rounding, everything else (step, RNG keys and counts) exactly."""
    assert jax.tree.structure(got) == jax.tree.structure(want)

    def same(path, a, b):
        name = jax.tree_util.keystr(path)
        a, b = (np.asarray(jax.random.key_data(x)
                           if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
                for x in (a, b))
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)

    jax.tree_util.tree_map_with_path(same, got, want)


def test_resume_gives_the_train_state_of_an_uninterrupted_run(
    halted_workdir, tmp_path, synthetic_cache_dir
):
    resumed = tmp_path / "resumed"
    shutil.copytree(halted_workdir, resumed)
    result = trainer.train_and_evaluate(tiny_config(synthetic_cache_dir), str(resumed))
    assert result["stopped"] is None and result["step"] == TOTAL_STEPS

    straight = tmp_path / "straight"
    expected = trainer.train_and_evaluate(tiny_config(synthetic_cache_dir), str(straight))
    got, want = saved_state(resumed, TOTAL_STEPS), saved_state(straight, TOTAL_STEPS)
    # Parameters, the optimizer's moments and count, the dropout RNG state: all of it.
    _assert_same_state(got, want)
    assert set(got) >= {"params", "opt_state", "rest"}
    assert int(got["step"]) == TOTAL_STEPS
    # The parameters did move away from the halted state.
    halted = saved_state(halted_workdir, 4)["params"]
    assert not np.allclose(got["params"]["head"]["kernel"], halted["head"]["kernel"])
    assert result["eval"]["validation"]["accuracy"] == pytest.approx(
        expected["eval"]["validation"]["accuracy"]
    )


def test_a_trainer_started_on_the_same_workdir_takes_it_over_and_the_first_stops_unsaved(
    halted_workdir, tmp_path, synthetic_cache_dir, monkeypatch
):
    """A second trainer on one workdir (the command run twice, a job requeued while the first
    still ran): both saved there, and the first crashed in Orbax or exported the other's best."""
    workdir = tmp_path / "twice"
    shutil.copytree(halted_workdir, workdir)
    other = {"token": "another", "host": "elsewhere", "pid": 4242, "started": "just now"}
    predict_split = evaluate.predict_split

    def second_trainer_starts(*args, **kwargs):  # during this run's evaluation of step 8
        (workdir / "trainer.json").write_text(json.dumps(other))
        return predict_split(*args, **kwargs)

    monkeypatch.setattr(evaluate, "predict_split", second_trainer_starts)
    config = tiny_config(synthetic_cache_dir)
    with pytest.raises(checkpointing.WorkdirError,
                       match=r"Another trainer started on .* \(host elsewhere, pid 4242, .*"
                             r"stops at step 8, saving nothing more"):
        trainer.train_and_evaluate(config, str(workdir))
    assert saved_steps(workdir) == [4]  # nothing of step 8, best or latest, no export
    assert os.listdir(workdir / "best") == os.listdir(halted_workdir / "best")
    assert not os.path.exists(workdir / "export")
    assert json.loads((workdir / "trainer.json").read_text()) == other


def test_a_best_step_whose_best_checkpoint_was_never_written_is_evaluated_again(
    halted_workdir, tmp_path, synthetic_cache_dir
):
    """The best and the latest checkpoint of a step are written in the background together: a
    kill (SIGKILL, a lost host) that committed only the latest lost the new best for good (the
    resumed run went on from an earlier best, which the export then used)."""
    workdir = tmp_path / "lost_best"
    shutil.copytree(halted_workdir, workdir)
    assert sorted(os.listdir(workdir / "best")) == ["4"]  # the first evaluation: the best
    shutil.rmtree(workdir / "best" / "4")  # as if killed before its commit
    config = tiny_config(synthetic_cache_dir, **{"training.halt_after_steps": 4})
    result = trainer.train_and_evaluate(config, str(workdir))
    assert (result["stopped"], saved_steps(workdir)) == ("halted", [4])  # nothing trained
    assert sorted(os.listdir(workdir / "best")) == ["4"]  # evaluated again and kept
    ckpts = checkpointing.Checkpoints(str(workdir), keep=1)
    try:
        assert ckpts.best_value() == pytest.approx(result["eval"]["validation"]["macro_f1"])
    finally:
        ckpts.close()


def test_non_finite_loss_stops_with_a_hint_and_keeps_the_last_good_checkpoint(
    halted_workdir, tmp_path, synthetic_cache_dir
):
    workdir = tmp_path / "nan"
    shutil.copytree(halted_workdir, workdir)
    config = tiny_config(synthetic_cache_dir, **{"optimizer.lr": 1e30})
    with pytest.raises(trainer.NonFiniteLossError,
                       match=r"steps 5 and \d.*its checkpoint of step 4 is kept.*optimizer\.lr"):
        trainer.train_and_evaluate(config, str(workdir))
    assert saved_steps(workdir) == [4]
    state = saved_state(workdir, 4)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state["params"]))
    # The advice holds: a lower learning rate resumes from the kept step ...
    lower = tiny_config(synthetic_cache_dir, **{"optimizer.lr": 1e-4,
                                                "training.halt_after_steps": 6})
    result = trainer.train_and_evaluate(lower, str(workdir))
    assert (result["step"], result["stopped"]) == (6, "halted")
    assert np.isfinite(result["train"]["train/loss"])
    # ... while another clipping setting is another optimizer state, which cannot resume it.
    unclipped = tiny_config(synthetic_cache_dir, **{"optimizer.grad_clip_norm": None})
    with pytest.raises(checkpointing.WorkdirError) as error:
        trainer.train_and_evaluate(unclipped, str(workdir))
    # The line names what changed (the last run's config.json: the lower rate, clipping 1.0).
    assert str(error.value) == (
        f"Cannot resume {workdir / 'checkpoints'} at step 6: its train state does not fit this "
        "config (the optimizer or model settings changed since it was saved; its config.json "
        "differs in optimizer.grad_clip_norm=1.0 there, None here; optimizer.lr=0.0001 there, "
        "0.001 here). Resume with the config it was trained with, or use a new --workdir.")


def nan_config(grad_clip_norm=None, dtype="float32"):
    return ml_collections.ConfigDict({
        "optimizer": {"lr": 0.5, "grad_clip_norm": grad_clip_norm}, "model": {"dtype": dtype}})


NAN_SUMS = {"nonfinite": 1.0, "loss_sum": float("nan"), "count": 8.0}


def test_a_non_finite_loss_before_any_checkpoint_says_so_in_one_line():
    with pytest.raises(UserError, match=r"^Non-finite loss or gradients between steps 1 and "
                                        r"3 \(loss nan\)\. Training stopped; no checkpoint had "
                                        r"been saved yet\. Lower optimizer\.lr \(now 0\.5\), or "
                                        r"enable clipping with optimizer\.grad_clip_norm=1\.0\.$"):
        trainer.check_finite(NAN_SUMS, 1, 3, last_saved=0, config=nan_config())
    trainer.check_finite({"nonfinite": 0.0, "loss_sum": 2.0, "count": 8.0}, 1, 3, last_saved=0,
                         config=nan_config())


@pytest.mark.parametrize("clip, dtype, last_saved, says, never", [
    # With a kept checkpoint only the learning rate resumes it; clipping and float32 would not
    # fit its optimizer state / model.dtype, so they are named with a new --workdir.
    (None, "float32", 4, "to resume from it; optimizer.grad_clip_norm=1.0 cannot resume that "
     "checkpoint: set it with a new --workdir.", "model.dtype"),
    (None, "bfloat16", 4, "optimizer.grad_clip_norm=1.0 and model.dtype='float32' cannot "
     "resume that checkpoint: set them with a new --workdir.", None),
    (1.0, "bfloat16", 4, "model.dtype='float32' cannot resume that checkpoint", "grad_clip"),
    (1.0, "float32", 4, "Lower optimizer.lr (now 0.5) and run the same command again to resume "
     "from it.", "grad_clip"),
    # Without one, clipping can go on the same workdir; float32 is another run's model.dtype.
    (1.0, "bfloat16", 0, "Lower optimizer.lr (now 0.5), or train in float32 "
     "(model.dtype='float32') with a new --workdir.", "grad_clip"),
])
def test_the_non_finite_hint_offers_only_fixes_that_work_where_it_says(
    clip, dtype, last_saved, says, never
):
    with pytest.raises(trainer.NonFiniteLossError) as error:
        trainer.check_finite(NAN_SUMS, 5, 6, last_saved, config=nan_config(clip, dtype))
    message = str(error.value)
    assert says in message
    assert never is None or never not in message


def test_sigterm_saves_a_checkpoint_at_the_next_log_point_and_returns(
        tmp_path, synthetic_cache_dir, monkeypatch):
    """SIGTERM during step 7 (no log or checkpoint step: logs every 2, saves every 3) is acted
    on at step 8, the next log point, which is saved although no checkpoint step; the earlier
    checkpoint is kept. The signal is sent from inside the run at a known step (no thread
    racing the training)."""
    workdir = tmp_path / "preempted"
    config = tiny_config(synthetic_cache_dir, **{
        "training.num_steps": 100_000, "training.eval_every_steps": 100_000,
        "checkpoint.every_steps": 3,
    })
    add_metrics, calls = steps.add_metrics, []

    def preempting(*args, **kwargs):  # called once per training step
        calls.append(None)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return add_metrics(*args, **kwargs)

    monkeypatch.setattr(steps, "add_metrics", preempting)
    previous_handler = signal.getsignal(signal.SIGTERM)
    result = trainer.train_and_evaluate(config, str(workdir))
    assert (result["stopped"], result["step"]) == ("preempted", 8)
    assert len(calls) == 8  # no step trained after the stop
    assert saved_steps(workdir) == [6, 8]
    assert not os.path.exists(workdir / "export")
    # The trainer restored the previous SIGTERM handler on the way out.
    assert signal.getsignal(signal.SIGTERM) is previous_handler


def terminal_ctrl_c(signum, frame):
    """A terminal's Ctrl-C, as the SIGINT handler the trainer finds (and must put back)."""
    raise KeyboardInterrupt


@pytest.fixture
def press_ctrl_c(monkeypatch):
    """press_ctrl_c(module, name, call, presses): Ctrl-C `presses` times in the `call`-th call
    of module.name (1-based), e.g. steps.add_metrics: once per training step. The SIGINT
    handler is `terminal_ctrl_c` meanwhile (a test runner may ignore SIGINT)."""
    previous = signal.signal(signal.SIGINT, terminal_ctrl_c)

    def arm(module, name: str, call: int, presses: int = 1) -> None:
        original, calls = getattr(module, name), []

        def pressing(*args, **kwargs):
            calls.append(None)
            if len(calls) == call:
                for _ in range(presses):
                    os.kill(os.getpid(), signal.SIGINT)
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, pressing)

    yield arm
    signal.signal(signal.SIGINT, previous)


def train_until_stopped(config, workdir) -> KeyboardInterrupt:
    """The KeyboardInterrupt (trainer.Interrupted or not) a run stopped with."""
    # pytest.raises(KeyboardInterrupt), not of the subclass: another would end the test session.
    with pytest.raises(KeyboardInterrupt) as stopped:
        trainer.train_and_evaluate(config, str(workdir))
    assert signal.getsignal(signal.SIGINT) is terminal_ctrl_c  # put back
    return stopped.value


def test_ctrl_c_saves_a_checkpoint_stops_and_the_next_run_resumes(
        tmp_path, synthetic_cache_dir, press_ctrl_c):
    workdir = tmp_path / "interrupted"
    config = tiny_config(synthetic_cache_dir, **{"training.eval_every_steps": 100_000})
    press_ctrl_c(steps, "add_metrics", call=3)  # seen at the next log step (every 2): 4
    stopped = train_until_stopped(config, workdir)
    assert isinstance(stopped, trainer.Interrupted)
    assert saved_steps(workdir) == [4]
    assert str(stopped) == (f"stopped by Ctrl-C at step 4, saved in {workdir}: run the same "
                            "command again to resume.")
    assert not os.path.exists(workdir / "export")

    press_ctrl_c(steps, "add_metrics", call=0)  # none
    result = trainer.train_and_evaluate(config, str(workdir))
    assert result["stopped"] is None and result["step"] == TOTAL_STEPS


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(
        tmp_path, synthetic_cache_dir, press_ctrl_c, caplog):
    workdir = tmp_path / "interrupted_twice"
    config = tiny_config(synthetic_cache_dir, **{"checkpoint.every_steps": 2})
    press_ctrl_c(steps, "add_metrics", call=3, presses=2)
    with caplog.at_level("WARNING"):
        stopped = train_until_stopped(config, workdir)
    assert not isinstance(stopped, trainer.Interrupted)  # nothing saved for it
    assert saved_steps(workdir) == [2]
    assert ("Stopped by Ctrl-C after step 2; the checkpoint of step 2 is kept: run again to "
            "resume from it.") in caplog.text


def test_ctrl_c_in_the_last_evaluation_stops_before_the_export_which_the_next_run_does(
        tmp_path, synthetic_cache_dir, press_ctrl_c):
    """After the loop's last check: the last step is saved, so only the export is left."""
    workdir = tmp_path / "interrupted_at_the_end"
    config = tiny_config(synthetic_cache_dir)
    splits = len(config.dataset.eval_splits)
    press_ctrl_c(evaluate, "predict_split", call=splits + 1)  # step 8's (4's came first)
    stopped = train_until_stopped(config, workdir)
    assert str(stopped).startswith(f"stopped by Ctrl-C at step {TOTAL_STEPS}, saved in")
    assert saved_steps(workdir)[-1] == TOTAL_STEPS
    assert not os.path.exists(workdir / "export")

    press_ctrl_c(evaluate, "predict_split", call=0)
    result = trainer.train_and_evaluate(config, str(workdir))
    assert result["step"] == TOTAL_STEPS and result["export"]


def test_sigterm_in_the_last_evaluation_stops_before_the_export_which_the_next_run_does(
        tmp_path, synthetic_cache_dir, monkeypatch):
    """Before: the flag was read by nobody after the loop, and the run went on to its export
    (every split, cut short by the SIGKILL that follows a preemption) and exited 0."""
    workdir = tmp_path / "preempted_at_the_end"
    config = tiny_config(synthetic_cache_dir)
    splits = len(config.dataset.eval_splits)
    predict_split, calls = evaluate.predict_split, []

    def preempting(*args, **kwargs):
        calls.append(None)
        if len(calls) == splits + 1:  # step 8's evaluation (4's came first)
            os.kill(os.getpid(), signal.SIGTERM)
        return predict_split(*args, **kwargs)

    monkeypatch.setattr(evaluate, "predict_split", preempting)
    result = trainer.train_and_evaluate(config, str(workdir))
    assert (result["stopped"], result["step"]) == ("preempted", TOTAL_STEPS)
    assert saved_steps(workdir)[-1] == TOTAL_STEPS
    assert not os.path.exists(workdir / "export")

    monkeypatch.setattr(evaluate, "predict_split", predict_split)
    result = trainer.train_and_evaluate(config, str(workdir))
    assert result["stopped"] is None and result["step"] == TOTAL_STEPS and result["export"]


def test_a_run_preempted_in_its_last_log_interval_is_unfinished_until_resumed(
        tmp_path, synthetic_cache_dir, monkeypatch, caplog):
    """SIGTERM in step 7 of 8 saves step 8 without evaluating it (the resumed run does): its
    best checkpoint is then step 4's. Fine-tuning or fusion from it said nothing, the run's last
    step being saved."""
    workdir = tmp_path / "preempted_in_the_last_interval"
    add_metrics, calls = steps.add_metrics, []

    def preempting(*args, **kwargs):
        calls.append(None)
        if len(calls) == TOTAL_STEPS - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return add_metrics(*args, **kwargs)

    monkeypatch.setattr(steps, "add_metrics", preempting)
    result = trainer.train_and_evaluate(tiny_config(synthetic_cache_dir), str(workdir))
    assert (result["stopped"], result["step"]) == ("preempted", TOTAL_STEPS)
    assert checkpointing.best_step(str(workdir)) < TOTAL_STEPS
    assert checkpointing.stopped_early(str(workdir)) == (
        f"at step {TOTAL_STEPS} of {TOTAL_STEPS} before evaluating it")
    config = tiny_config(synthetic_cache_dir, **{"init.workdir": str(workdir)})
    with caplog.at_level("WARNING"):
        trainer.prepare(config, str(tmp_path / "fine_tuned"))
    assert (f"init.workdir={workdir} stopped at step {TOTAL_STEPS} of {TOTAL_STEPS} before "
            "evaluating it (halted or preempted, or still training)") in caplog.text

    monkeypatch.setattr(steps, "add_metrics", add_metrics)
    result = trainer.train_and_evaluate(tiny_config(synthetic_cache_dir), str(workdir))
    assert result["stopped"] is None and result["export"]
    assert checkpointing.stopped_early(str(workdir)) is None


class SigtermDeath(Exception):
    """SIGTERM's default action, death at once, as a test can see it."""


def test_sigterm_while_the_last_checkpoint_is_written_keeps_it(
        tmp_path, synthetic_cache_dir, monkeypatch):
    """Orbax writes a save in the background. The trainer waited for its last one after putting
    the SIGTERM handler it found back: a preemption then killed the process mid-save, and the
    step was lost with the training since the save before."""
    workdir = tmp_path / "preempted_in_the_last_save"
    wait, calls = checkpointing.Checkpoints.wait, []

    def preempting(self):
        calls.append(None)
        if len(calls) == 1:  # the wait for step 8's save
            os.kill(os.getpid(), signal.SIGTERM)
        wait(self)

    def dying(signum, frame):
        raise SigtermDeath

    monkeypatch.setattr(checkpointing.Checkpoints, "wait", preempting)
    previous = signal.signal(signal.SIGTERM, dying)
    try:
        result = trainer.train_and_evaluate(tiny_config(synthetic_cache_dir), str(workdir))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (result["stopped"], result["step"]) == ("preempted", TOTAL_STEPS)
    assert saved_steps(workdir)[-1] == TOTAL_STEPS
    assert not os.path.exists(workdir / "export")  # the next run does it


def test_an_ignored_ctrl_c_stays_ignored(tmp_path, synthetic_cache_dir, press_ctrl_c):
    """A job started in the background (`cmd &` in a script) ignores SIGINT: so does its run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    press_ctrl_c(steps, "add_metrics", call=3)
    result = trainer.train_and_evaluate(tiny_config(synthetic_cache_dir), str(tmp_path / "bg"))
    assert result["stopped"] is None and result["step"] == TOTAL_STEPS
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_sigterm_at_an_evaluation_saves_first_and_the_resumed_run_evaluates_that_step(
    tmp_path, synthetic_cache_dir, monkeypatch
):
    workdir = tmp_path / "preempted_at_eval"
    config = tiny_config(synthetic_cache_dir, **{
        "training.num_steps": 9, "training.eval_every_steps": 3,
        "training.log_every_steps": 3, "checkpoint.every_steps": 3,
    })
    splits = len(config.dataset.eval_splits)
    evaluated = []  # the train step of each split's evaluation ("export": the export's)
    predict_split, write_eval, write_export = (
        evaluate.predict_split, trainer.write_eval, export.write_export)

    def recording_eval(writer, step, *args):
        evaluated.append(step)
        return write_eval(writer, step, *args)

    def recording_export(*args, **kwargs):
        evaluated.append("export")
        return write_export(*args, **kwargs)

    weights = []  # the head kernel of each evaluated model state, in evaluation order

    def weighing(eval_fn, state, *args):
        weights.append(np.asarray(state["params"]["head"]["kernel"]))
        return predict_split(eval_fn, state, *args)

    add_metrics, trained = steps.add_metrics, []

    def preempting(*args):  # SIGTERM in step 5 (no log step): seen at step 6, an eval step
        trained.append(None)
        if len(trained) == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return add_metrics(*args)

    def assert_evaluated_the_saved_weights():
        """Each periodic evaluation saw the weights its step's checkpoint holds."""
        steps = [step for step in evaluated if step != "export"]
        for step, kernel in zip(steps, weights, strict=False):
            np.testing.assert_array_equal(kernel, saved_state(workdir, step)["params"]["head"][
                "kernel"], err_msg=f"step {step}")

    monkeypatch.setattr(trainer, "write_eval", recording_eval)
    monkeypatch.setattr(export, "write_export", recording_export)
    monkeypatch.setattr(evaluate, "predict_split", weighing)
    monkeypatch.setattr(steps, "add_metrics", preempting)
    result = trainer.train_and_evaluate(config, str(workdir))
    assert result["stopped"] == "preempted" and result["step"] == 6
    assert saved_steps(workdir) == [3, 6]
    assert evaluated == [3] * splits  # step 6 was saved without evaluating it
    assert_evaluated_the_saved_weights()

    evaluated.clear()
    weights.clear()
    monkeypatch.setattr(steps, "add_metrics", add_metrics)
    result = trainer.train_and_evaluate(config, str(workdir))
    assert result["stopped"] is None and result["step"] == 9
    # The resumed run evaluates step 6 (restored) before it trains on, as an unstopped run
    # would have.
    assert evaluated == [6] * splits + [9] * splits + ["export"]
    assert len(weights) == 2 * splits + len(config.export.splits)  # then the export's
    assert_evaluated_the_saved_weights()


def test_sigterm_during_an_evaluation_saves_that_step_and_the_resumed_run_trains_on(
        tmp_path, synthetic_cache_dir, monkeypatch):
    """Before: the run trained on to the next log step (6) and saved that one; step 3, no
    checkpoint step, was never saved, and the time left after a preemption went on training."""
    workdir = tmp_path / "preempted_in_eval"
    config = tiny_config(synthetic_cache_dir, **{
        "training.num_steps": 9, "training.eval_every_steps": 3,
        "training.log_every_steps": 3, "checkpoint.every_steps": 100_000,
    })
    splits = len(config.dataset.eval_splits)
    evaluated, write_eval = [], trainer.write_eval

    def recording_eval(writer, step, *args):
        evaluated.append(step)
        if step == 3:  # during step 3's evaluation, after its first split
            os.kill(os.getpid(), signal.SIGTERM)
        return write_eval(writer, step, *args)

    monkeypatch.setattr(trainer, "write_eval", recording_eval)
    result = trainer.train_and_evaluate(config, str(workdir))
    assert (result["stopped"], result["step"]) == ("preempted", 3)
    assert saved_steps(workdir) == [3]
    assert evaluated == [3] * splits  # the evaluation was finished, then saved

    evaluated.clear()
    result = trainer.train_and_evaluate(config, str(workdir))
    assert result["stopped"] is None and result["step"] == 9
    assert evaluated == [6] * splits + [9] * splits  # step 3 is not evaluated again


def test_a_halt_at_the_last_step_finishes_the_run_with_one_compiled_eval_step(
    tmp_path, synthetic_cache_dir
):
    """halt_after_steps=num_steps is a finished run (exported), and the export evaluates the
    best checkpoint with the eval step the periodic evaluations compiled. Each step is traced
    (so compiled) once: the train step over every step, the eval step over two evaluations of
    two splits (a partial last batch in each) and the export of the best checkpoint."""
    from cer_jax import steps

    built = []
    traced = {"train_step": 0, "eval_step": 0}
    real = steps.jit_eval_step

    def counting(*args, **kwargs):
        built.append(args)
        return real(*args, **kwargs)

    def tracing(name):
        step = getattr(steps, name)

        def traced_step(*args, **kwargs):  # jit calls the Python function only to trace it
            traced[name] += 1
            return step(*args, **kwargs)

        return traced_step

    config = tiny_config(synthetic_cache_dir, **{"training.halt_after_steps": TOTAL_STEPS})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(steps, "jit_eval_step", counting)
        for name in traced:
            patch.setattr(steps, name, tracing(name))
        result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert result["stopped"] is None and result["step"] == TOTAL_STEPS
    assert os.path.isfile(tmp_path / "run" / "export" / "export.json")
    assert len(built) == 1
    assert traced == {"train_step": 1, "eval_step": 1}
    assert config.dataset.eval_splits == ("validation", "test")
    # A re-export (fusion's, of a stale export) writes the splits the run's export.splits
    # names, as the run did (it wrote the train and eval splits instead).
    assert config.export.splits == ("validation",)
    manifest = export.export_workdir(str(tmp_path / "run"))
    assert list(manifest["splits"]) == ["validation"]


def _scalar_series(workdir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar in a workdir's TensorBoard events."""
    import glob

    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator

    series: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        events = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        events.Reload()
        for tag in events.Tags()["tensors"]:
            for event in events.Tensors(tag):
                value = tf.make_ndarray(event.tensor_proto)
                if value.ndim == 0 and value.dtype.kind == "f":
                    series.setdefault(tag, []).append((event.step, float(value)))
    return series


def test_a_run_reports_training_throughput_its_best_step_and_its_seeds(
        tmp_path, synthetic_cache_dir, monkeypatch, caplog, request):
    """steps_per_sec (and images_per_sec) measure the training steps: CLU's figure counted the
    evaluations and saves since the last log point, and fell after each, and the first point
    counted the compilation of the metrics' sum and the learning rate's. A fake clock: a
    training step takes 1 s, an evaluation of a split 1000 s, a compilation 500 s. The export
    records the seeds."""
    now = [0.0]
    clock = type("Clock", (), {"monotonic": lambda: now[0], "time": lambda: now[0]})
    monkeypatch.setattr(trainer, "time", clock, raising=False)

    def compiled(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            now[0] += 500.0

    jax.clear_caches()  # what an earlier test compiled is compiled here again
    jax.monitoring.register_event_duration_secs_listener(compiled)
    request.addfinalizer(lambda: jax.monitoring.unregister_event_duration_listener(compiled))
    jit_train_step, predict_split = steps.jit_train_step, evaluate.predict_split

    def slow_train_step(*args, **kwargs):
        train_fn = jit_train_step(*args, **kwargs)

        def timed(*a):
            now[0] += 1.0
            return train_fn(*a)
        return timed

    def slow_predict_split(*args, **kwargs):
        now[0] += 1000.0
        return predict_split(*args, **kwargs)

    monkeypatch.setattr(steps, "jit_train_step", slow_train_step)
    monkeypatch.setattr(evaluate, "predict_split", slow_predict_split)
    config = tiny_config(synthetic_cache_dir, **{"seed": 2, "input.seed": 5})
    caplog.set_level("INFO")
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
    series = _scalar_series(tmp_path / "run")
    log_steps = list(range(2, TOTAL_STEPS + 1, 2))
    assert series["steps_per_sec"] == [(step, 1.0) for step in log_steps]
    assert series["images_per_sec"] == [(step, 16.0) for step in log_steps]
    # Each evaluation says which split chooses best/ and its best macro F1 so far, and where.
    for step in (4, TOTAL_STEPS):
        best = [r.getMessage() for r in caplog.records
                if r.getMessage().startswith(f"step {step}: ") and "validation macro F1" in
                r.getMessage()]
        assert len(best) == 1 and "(checkpoint.best_split: it chooses best/" in best[0], best
    last = checkpointing.best_step(str(tmp_path / "run"))
    assert f"at step {last} " in best[0]
    manifest = export.read_manifest(str(tmp_path / "run"))
    assert (manifest["seed"], manifest["data_seed"]) == (2, 5)
