"""The production recipes (configs/vit.py, manet.py, resnet50.py) end to end, as a user with
RAF-DB and the public weights runs them, changed only in size.

Each config keeps its real optimizer, schedule, head learning-rate multiplier, normalisation,
augmentations and label smoothing (checked below); only the network's width / depth, the image
size, the batch and the number of steps shrink. The data is a RAF-DB tree (synthetic drawings in
RAF-DB's exact layout) built through `dataset.manual_dir` as for the real download. For every
model:

1. train on `rafdb/basic` from a pre-trained file of the model's first format;
2. fine-tune on `rafdb/compound` from that run's best checkpoint (`init.workdir`);
3. train on `rafdb/compound` from every other pre-trained format the README lists; resume a
   run halted after its first step, with the recipe's optimizer state;
4. restore the best checkpoint and re-export it; fuse the three members, one of them stale;
   start again from a compound run keeping its head (init.keep_head).

The README's "Train, fuse" section runs exactly these steps at full size (the resume and
keep_head ones where it and "Bring pre-trained weights" describe them).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
import weight_files
from flax import nnx
from helpers import smoothed_cross_entropy

from cer_jax import (
    checkpointing,
    ensemble,
    export,
    optim,
    synthetic,
    train_state,
    trainer,
    warm_start,
)
from cer_jax.config_loading import load_config
from cer_jax.data import pipeline
from cer_jax.fusion import evaluator
from cer_jax.pretrained import core, readers

# One xdist worker runs this group: its fixtures are built once (see pyproject addopts).
pytestmark = pytest.mark.xdist_group("production")

MEMBERS = ("vit", "manet", "resnet50")
MODEL_NAMES = {"vit": "vit", "manet": "manet", "resnet50": "resnet"}
# The only keys a test changes: size, and where the data and weights are.
SIZES = {
    "vit": {"model.variant": "test/8", "input.image_size": 32, "input.resize_size": 36},
    "manet": {"model.width": 8, "input.image_size": 32},
    "resnet50": {"model.width": 8, "input.image_size": 32, "input.resize_size": 36},
}
RUN_SIZE = {
    "training.global_batch_size": 8,
    "eval.global_batch_size": 16,
    "training.num_steps": 2,
    "training.eval_every_steps": 2,
    "training.log_every_steps": 1,
}
LOCATION_KEYS = ("dataset.name", "dataset.manual_dir", "dataset.data_dir", "init.checkpoint",
                 "init.workdir", "init.manet_code_version")


def implied(member: str, fmt: str) -> dict:
    """What a format implies for the model's function settings (weights.md, big_vision's and
    transformers' sources): .npz -> tanh GELU and LayerNorm epsilon 1e-6; Hugging Face -> its
    config.json (the writer's: exact GELU, 1e-12); timm -> exact GELU, 1e-6; MA-Net -> the path
    B order of the code version."""
    if member == "vit":
        if fmt.endswith("_npz"):
            return {"gelu_approximate": True, "layer_norm_eps": 1e-6}
        if fmt == "hf_safetensors":
            return {"gelu_approximate": False, "layer_norm_eps": 1e-12}
        return {"gelu_approximate": False, "layer_norm_eps": 1e-6}
    if member == "manet":
        return {"path_b_order": {"2021": "forward", "2023": "reverse"}[
            weight_files.MANET_CODE_VERSIONS[fmt]]}
    return {}


def _set(config, key: str, value) -> None:
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    assert leaf in node, f"no config key {key}: a misspelt override would be silently added"
    node[leaf] = value


def _flat(config) -> dict:
    out = {}

    def visit(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                visit(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    visit("", config.to_dict())
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """RAF-DB-layout trees of both kinds and a TFDS data_dir they are built into on first use."""
    root = tmp_path_factory.mktemp("rafdb")
    for kind in ("basic", "compound"):
        synthetic.write_tree(root / kind, kind=kind, num_train_images=220, num_test_images=44,
                             seed=3)
    return root


def production_config(member: str, data: pathlib.Path, kind: str = "compound", arg: str = "",
                      **location):
    config = load_config(f"configs/{member}.py" + (f":{arg}" if arg else ""))
    for key, value in {**SIZES[member], **RUN_SIZE}.items():
        _set(config, key, value)
    config.dataset.name = f"rafdb/{kind}"
    config.dataset.manual_dir = str(data / kind)
    config.dataset.data_dir = str(data / "tfds")
    for key, value in location.items():
        _set(config, key.replace("__", "."), value)
    return config


def source_model(config, num_classes: int = 7, **settings) -> nnx.Module:
    """A model of the config's architecture with random, non-trivial weights to write."""
    config = config.copy_and_resolve_references()
    config.model.update(settings)
    return weight_files.randomise(train_state.create_model(config, num_classes, seed=11), seed=5)


# The recipes besides each file's default: the follow-up paper's (configs/<member>.py:follow_up).
FOLLOW_UP = ("vit", "resnet50")


@pytest.mark.parametrize(("member", "arg"), [(m, "") for m in MEMBERS]
                         + [(m, "follow_up") for m in FOLLOW_UP])
def test_only_size_differs_from_the_production_recipe(member, arg, tmp_path):
    production = _flat(load_config(f"configs/{member}.py" + (f":{arg}" if arg else "")))
    tested = _flat(production_config(member, tmp_path, arg=arg))
    assert tested.keys() == production.keys()
    changed = {key for key in production if production[key] != tested[key]}
    allowed = set(SIZES[member]) | set(RUN_SIZE) | set(LOCATION_KEYS) | {"model.image_size"}
    assert changed <= allowed, changed - allowed
    # What the issue names explicitly stays the recipe's.
    for key in ("optimizer.name", "optimizer.lr", "optimizer.head_lr_multiplier",
                "schedule.name", "input.normalization", "input.train_resize",
                "input.color_jitter", "input.affine.prob", "training.label_smoothing"):
        assert tested[key] == production[key], key


def _formats(member: str) -> list[str]:
    return list(weight_files.FORMATS[MODEL_NAMES[member]])


def _backbone(arrays: dict[str, np.ndarray], model: nnx.Module) -> dict[str, np.ndarray]:
    """The tensors a pre-trained file sets (the heads are new; big_vision layouts fold the
    class token's position entry into `cls`, which changes both but not the function)."""
    return {name: value for name, value in arrays.items()
            if not core.is_head(name, model.HEAD_NAMES) and name not in ("cls", "pos_embedding")}


def _arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(jax.device_get(var.get_value()))
        for name, var in core.model_arrays(model).items()
    }


def _train_with_spy(config, workdir) -> tuple[dict, dict[str, np.ndarray]]:
    """train_and_evaluate, recording the model's arrays right after its initial weights were
    loaded (the real loader runs; the spy only copies what it produced)."""
    loaded = {}
    real = warm_start.load_initial_weights

    def spy(model, config):
        real(model, config)
        loaded.update(_backbone(_arrays(model), model))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(warm_start, "load_initial_weights", spy)
        result = trainer.train_and_evaluate(config, str(workdir))
    assert loaded, "the trainer did not load initial weights"
    return result, loaded


def _train_from_file(member, fmt, data, workdir, kind="compound", halt=False, **sizes):
    """Trains from a file of format `fmt` written from random weights; checks the trainer
    started from exactly those weights. `halt`: stop after the first step (no evaluation or
    export, which do not depend on the weights' format). `sizes`: more RUN_SIZE keys."""
    config = production_config(member, data, kind, **sizes)
    if halt:
        _set(config, "training.halt_after_steps", 1)
    source = source_model(config, **implied(member, fmt))
    path = weight_files.FORMATS[MODEL_NAMES[member]][fmt](source, workdir.parent / f"w-{fmt}")
    config.init.checkpoint = str(path)
    if fmt in weight_files.MANET_CODE_VERSIONS:
        config.init.manet_code_version = weight_files.MANET_CODE_VERSIONS[fmt]
    reads, dispatch = [], readers._dispatch
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(readers, "_dispatch", lambda path, *, keys_only: (
            reads.append(keys_only), dispatch(path, keys_only=keys_only))[1])
        result, loaded = _train_with_spy(config, workdir)
    # The file is read whole once (its names, its check and its load share that read); an
    # .npz or safetensors file's names come from its index. A PyTorch pickle has no index: it
    # was loaded for its names, then again for the check.
    assert reads == ([False] if "pth" in fmt else [True, False]), reads
    expected = _backbone(_arrays(source), source)
    assert loaded.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    if halt:
        assert (result["stopped"], result["step"]) == ("halted", 1)
    else:
        # Every test example once: the dataset's own count, not one the export computed.
        test_size = pipeline.get_dataset_info(config).split_sizes["test"]
        assert result["stopped"] is None and test_size > 0
        assert result["export"]["test"]["num_examples"] == test_size
    return result


def _trained_config(workdir, num_classes: int):
    """The run's saved config; its best model has the run's classes."""
    model, config = checkpointing.restore_best_model(str(workdir))
    head = core.model_arrays(model)[f"{model.HEAD_NAMES[0]}/kernel"].get_value()
    assert head.shape[-1] == num_classes
    return config


@pytest.fixture(scope="module")
def fine_tuned(data, tmp_path_factory):
    """member -> (basic workdir, compound workdir fine-tuned from it)."""
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for member in MEMBERS:
        basic = root / f"{member}-basic"
        _train_from_file(member, _formats(member)[0], data, basic, kind="basic")
        _trained_config(basic, num_classes=7)
        compound = root / member
        config = production_config(member, data, init__workdir=str(basic))
        _, loaded = _train_with_spy(config, compound)
        runs[member] = (basic, compound, loaded)
    return runs


@pytest.mark.parametrize("member", MEMBERS)
def test_fine_tune_from_a_basic_run_starts_from_its_best_checkpoint(fine_tuned, member):
    basic, compound, loaded = fine_tuned[member]
    source, _ = checkpointing.restore_best_model(str(basic))
    expected = _backbone(_arrays(source), source)
    assert loaded.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
    config = _trained_config(compound, num_classes=11)
    basic_model = checkpointing.load_config(str(basic)).model
    for key in warm_start.FUNCTION_SETTINGS:  # the settings came along from the basic run
        if key in basic_model:
            assert config.model[key] == basic_model[key], key


@pytest.mark.parametrize(
    ("member", "fmt"),
    [(m, f) for m in MEMBERS for f in _formats(m)[2:]],
)
def test_training_starts_from_every_pretrained_format(member, fmt, data, tmp_path):
    """Each format through a training step (the first format's runs, in `fine_tuned`, also
    evaluate, export and fine-tune; the second's, in `test_the_trainer_minimises_the_recipes_
    loss`, also check the loss)."""
    workdir = tmp_path / "run"
    _train_from_file(member, fmt, data, workdir, halt=True)
    _assert_records_implied(member, fmt, workdir)


def _assert_records_implied(member: str, fmt: str, workdir) -> None:
    """"auto" took what the file implies, and config.json records it."""
    config = checkpointing.load_config(str(workdir))
    for key, value in implied(member, fmt).items():
        assert config.model[key] == value, key


@pytest.mark.parametrize("member", FOLLOW_UP)
def test_the_follow_up_recipe_moves_each_weight_by_the_papers_learning_rates(member, data,
                                                                             tmp_path):
    """The follow-up paper (arXiv 2407.12257): "Adam, lr 3e-6 backbone / 1e-5 head, exponential
    decay 0.9 per epoch, 50 epochs, batch 96", ImageNet mean/std. Adam's first step moves every
    weight with a gradient by exactly the learning rate (m / sqrt(v) = sign(g)), so one step
    from pre-trained weights shows both rates."""
    recipe = load_config(f"configs/{member}.py:follow_up")
    assert (recipe.optimizer.name, recipe.schedule.name) == ("adam", "exponential")
    assert (recipe.training.num_epochs, recipe.training.global_batch_size) == (50, 96)
    assert recipe.input.normalization == "imagenet"
    schedule = optim.create_schedule(recipe, total_steps=500, steps_per_epoch=10)
    assert [float(schedule(s)) for s in (0, 9, 10, 35)] == pytest.approx(
        [3e-6, 3e-6, 3e-6 * 0.9, 3e-6 * 0.9 ** 3], rel=1e-6)
    config = production_config(member, data, arg="follow_up", **{
        "training.num_steps": 1, "training.eval_every_steps": 1})
    source = source_model(config, **implied(member, _formats(member)[0]))
    config.init.checkpoint = str(weight_files.FORMATS[MODEL_NAMES[member]][_formats(member)[0]](
        source, tmp_path / "w"))
    start = {}
    real = warm_start.load_initial_weights

    def spy(model, config):
        real(model, config)
        start.update(_arrays(model))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(warm_start, "load_initial_weights", spy)
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    model, _ = checkpointing.restore_best_model(str(tmp_path / "run"))
    moves = {name: np.abs(value - start[name]) for name, value in _arrays(model).items()
             if name in start and np.issubdtype(value.dtype, np.floating)
             and "batch_stats" not in name and not name.endswith(("mean", "var"))}
    head = np.concatenate([m.ravel() for n, m in moves.items()
                           if core.is_head(n, model.HEAD_NAMES)])
    body = np.concatenate([m.ravel() for n, m in moves.items()
                           if not core.is_head(n, model.HEAD_NAMES)])
    assert np.median(body) == pytest.approx(3e-6, rel=0.02)
    assert np.median(head) == pytest.approx(1e-5, rel=0.02)


# Each recipe's loss, as its config file's docstring states it: (label smoothing, head weights).
RECIPE_LOSS = {"vit": (0.1, (1.0,)), "manet": (0.0, (0.6, 0.4)), "resnet50": (0.1, (1.0,))}


def _numpy(tree):
    """The arrays of a train state, PRNG keys as their raw data."""
    return jax.tree.map(lambda a: np.asarray(jax.random.key_data(a)) if jax.dtypes.issubdtype(
        a.dtype, jax.dtypes.prng_key) else np.asarray(a), tree)


@contextlib.contextmanager
def _recorded_steps():
    """Records each training step the trainer compiles: (graphdef, state before, images,
    labels, metrics, state after), the states copied (the step donates, i.e. overwrites, their
    buffers)."""
    from cer_jax import steps

    seen = []
    real = steps.jit_train_step

    def recording_jit_train_step(graphdef, *args, **kwargs):
        step = real(graphdef, *args, **kwargs)

        def recording(state, batch):
            start = jax.tree.map(lambda a: a.copy(), state)
            images, labels = np.asarray(batch["image"]), np.asarray(batch["label"])
            new_state, metrics = step(state, batch)
            seen.append((graphdef, start, images, labels, jax.device_get(metrics),
                         jax.tree.map(lambda a: a.copy(), new_state)))
            return new_state, metrics

        return recording

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(steps, "jit_train_step", recording_jit_train_step)
        yield seen


# The first-step runs are 3 steps long, halted after the first: a resume can halt again at the
# second without the final evaluation and export.
FIRST_STEP_RUN_STEPS = 3


@pytest.fixture(scope="module")
def first_step(data, tmp_path_factory):
    """member -> (workdir, recorded steps) of a run from the member's second pre-trained format
    halted after its first step; run on first use, shared by the tests that read it."""
    runs = {}

    def run(member):
        if member not in runs:
            workdir = tmp_path_factory.mktemp(f"first-step-{member}") / "run"
            with _recorded_steps() as seen:
                _train_from_file(member, _formats(member)[1], data, workdir, halt=True,
                                 training__num_steps=FIRST_STEP_RUN_STEPS)
            runs[member] = (workdir, seen)
        return runs[member]

    return run


@pytest.mark.parametrize("member", MEMBERS)
def test_the_trainer_minimises_the_recipes_loss(member, first_step):
    """The first training step's loss, recomputed here from the logits the model gives on that
    step's batch (train mode, from the state the step started from): label smoothing 0.1 for
    ViT and ResNet50, MA-Net's 0.6 x CE(local head) + 0.4 x CE(global head) without smoothing.
    ViT's head starts at zero (head_zeroinit), so its first loss is exactly log K. The run
    starts from the member's second pre-trained format, which it also checks."""
    smoothing, head_weights = RECIPE_LOSS[member]
    recipe = load_config(f"configs/{member}.py")
    assert recipe.training.label_smoothing == smoothing
    workdir, seen = first_step(member)
    _assert_records_implied(member, _formats(member)[1], workdir)
    assert len(seen) == 1
    graphdef, start, images, labels, metrics, _ = seen[0]
    model = train_state.merge_model(graphdef, start["params"], start["rest"])
    heads = [np.asarray(h) for h in model(jax.numpy.asarray(images), train=True).head_logits]
    assert len(heads) == len(head_weights)
    want = sum(w * smoothed_cross_entropy(h, labels, smoothing)
               for w, h in zip(head_weights, heads, strict=True)).mean()
    got = float(metrics["loss_sum"] / metrics["count"])
    assert got == pytest.approx(want, rel=1e-5)
    if member == "vit":
        assert got == pytest.approx(np.log(11), rel=1e-6)
        # Stochastic depth 0.1, rising linearly over the blocks to the last (timm's rule).
        rates = [block.drop_path.rate for block in model.blocks]
        assert rates == pytest.approx(np.linspace(0.0, 0.1, len(rates)))
    else:  # the logits are far enough from uniform that another loss would show
        other_smoothing = 0.1 - smoothing
        other = sum(w * smoothed_cross_entropy(h, labels, other_smoothing)
                    for w, h in zip(head_weights, heads, strict=True)).mean()
        assert abs(other - want) > 1e-3 * want, (other, want)
        if len(heads) == 2:
            equal = np.mean([smoothed_cross_entropy(h, labels, 0.0) for h in heads], 0).mean()
            assert abs(equal - want) > 1e-3 * want, (equal, want)


@pytest.mark.parametrize("member", MEMBERS)
def test_a_halted_recipe_resumes_from_the_state_its_last_step_ended_with(member, first_step,
                                                                        data, tmp_path):
    """Each recipe resumes with its own optimizer state (ViT's AdamW moments with masked decay,
    clipping and the x10 head; MA-Net's SGD momentum with decay on every parameter; ResNet50's
    Nesterov momentum): the resumed run's first step starts from exactly the state (parameters,
    batch statistics, RNG, optimizer state, step) that the halted run's last step ended with.
    (test_multiprocess resumes ViT's too, but compares only the best checkpoint, which may be
    from before the stop.)"""
    halted, seen = first_step(member)
    workdir = tmp_path / "run"
    shutil.copytree(halted, workdir)
    recorded = checkpointing.load_config(str(halted)).init
    config = production_config(
        member, data, training__num_steps=FIRST_STEP_RUN_STEPS, training__halt_after_steps=2,
        init__checkpoint=recorded.checkpoint, init__manet_code_version=recorded.manet_code_version)
    with _recorded_steps() as resumed:
        result = trainer.train_and_evaluate(config, str(workdir))
    assert (result["stopped"], result["step"]) == ("halted", 2)
    assert len(resumed) == 1
    ended, started = _numpy(seen[-1][-1]), _numpy(resumed[0][1])
    assert int(started["step"]) == 1
    # After one step the momentum (Adam's moments) holds the first gradient: not a fresh
    # optimizer state.
    assert any(leaf.ndim and leaf.dtype.kind == "f" and np.any(leaf)
               for leaf in jax.tree.leaves(ended["opt_state"]))
    assert jax.tree.structure(started) == jax.tree.structure(ended)
    jax.tree_util.tree_map_with_path(
        lambda path, got, want: np.testing.assert_array_equal(
            got, want, err_msg=jax.tree_util.keystr(path)), started, ended)


@pytest.mark.parametrize("member", MEMBERS)
def test_keep_head_starts_from_the_whole_model_of_a_run_on_the_same_classes(fine_tuned, member,
                                                                           data, tmp_path):
    """init.workdir with init.keep_head=True (going on from a run on the same classes): the
    model starts from every array of that run's best checkpoint, the classification head(s)
    included (MA-Net's two; ViT's instead of its zero-initialised one), checked and loaded as
    the trainer does at step 0 (prepare, create_model, load_initial_weights)."""
    _, compound, _ = fine_tuned[member]
    config = production_config(member, data, init__workdir=str(compound), init__keep_head=True)
    info, config = trainer.prepare(config, str(tmp_path / "run"))
    model = train_state.create_model(config, info.num_classes, seed=config.seed)
    fresh = _arrays(model)
    warm_start.load_initial_weights(model, config)
    source, _ = checkpointing.restore_best_model(str(compound))
    got, want = _arrays(model), _arrays(source)
    assert got.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    head_kernels = [name for name in want if core.is_head(name, model.HEAD_NAMES)
                    and name.endswith("kernel")]
    assert len(head_kernels) == len(model.HEAD_NAMES)
    for name in head_kernels:  # the run's heads, not the ones a new model starts with
        assert not np.array_equal(fresh[name], want[name]), name

def test_a_setting_that_contradicts_the_weights_stops_before_training(data, tmp_path):
    config = production_config("vit", data)
    config.model.gelu_approximate = False
    path = weight_files.VIT_FORMATS["augreg_npz"](source_model(config), tmp_path / "w")
    config.init.checkpoint = str(path)
    with pytest.raises(warm_start.ModelSettingError,
                       match=r"model\.gelu_approximate=False contradicts .* need True"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("member", MEMBERS)
def test_best_checkpoint_restores_and_reexports_the_same_outputs(fine_tuned, member):
    """The best checkpoint holds the whole model state (BatchNorm statistics included) and no
    optimizer: restoring it reproduces the export."""
    _, workdir, _ = fine_tuned[member]
    _, before = export.load_export(str(workdir))
    shutil.rmtree(workdir / "export")
    export.export_workdir(str(workdir))
    _, after = export.load_export(str(workdir))
    for split in before:
        assert list(after[split]["file_names"]) == list(before[split]["file_names"])
        np.testing.assert_allclose(after[split]["logits"], before[split]["logits"],
                                   rtol=1e-5, atol=1e-5)


def test_fusion_of_the_production_members_reexports_a_stale_one(fine_tuned, data, tmp_path):
    """...and its ensemble artefact gives, on the test photos, each member's exported
    probabilities (MA-Net's two heads and BatchNorm statistics included)."""
    workdirs = [fine_tuned[m][1] for m in MEMBERS]
    exported = [export.load_export(str(w))[1]["test"] for w in workdirs]
    manifest_path = workdirs[1] / "export" / "export.json"
    manifest = json.loads(manifest_path.read_text())
    best = manifest["step"]
    manifest["step"] = best - 1  # as if a later evaluation had found a better step
    manifest_path.write_text(json.dumps(manifest))
    config = load_config("configs/fusion.py")  # as README's step 3 runs it: ablation too
    config.workdirs = ",".join(map(str, workdirs))
    config.out = str(tmp_path / "fusion")
    report = evaluator.fuse(config)
    assert [m["name"] for m in report["members"]] == list(MEMBERS)
    # The ablation refits the paper's strategy on every subset of the members: one member
    # alone scores as that member, all three as the strategy itself.
    rows = {tuple(row["members"]): row["metrics"] for row in report["ablation"][
        evaluator.strategies_lib.PAPER_STRATEGY]}
    assert len(rows) == 7 and rows.keys() >= {(m,) for m in MEMBERS} | {MEMBERS}
    for member in report["members"]:
        for split in ("validation", "test"):
            assert rows[(member["name"],)][split]["macro_f1"] == pytest.approx(
                member["metrics"][split]["macro_f1"]), (member["name"], split)
    paper = report["strategies"][evaluator.strategies_lib.PAPER_STRATEGY]["metrics"]["test"]
    assert rows[MEMBERS]["test"]["macro_f1"] == pytest.approx(paper["macro_f1"])
    assert json.loads(manifest_path.read_text())["step"] == best  # re-exported
    reexported = export.load_export(str(workdirs[1]))[1]["test"]
    np.testing.assert_allclose(reexported["logits"], exported[1]["logits"], rtol=1e-5, atol=1e-5)
    assert (tmp_path / "fusion" / "report.json").exists()

    from cer_jax import predict

    artefact = ensemble.load_ensemble(tmp_path / "fusion" / "ensemble")
    assert artefact.member_names == list(MEMBERS)
    names = [str(n) for n in exported[0]["file_names"][:12]]
    aligned = data / "compound" / "Image" / "aligned"
    # The faces as cer_jax.predict reads them (OpenCV), which are the pixels the export saw.
    faces = np.stack([predict.read_image(str(aligned / name.replace(".jpg", "_aligned.jpg")))[0]
                      for name in names])
    out = artefact.predict(faces)
    for member, arrays, probabilities in zip(MEMBERS, exported, out.member_probabilities,
                                             strict=True):
        rows = {str(n): i for i, n in enumerate(arrays["file_names"])}
        logits = arrays["logits"][[rows[name] for name in names]].astype(np.float64)
        expected = np.exp(logits - logits.max(-1, keepdims=True))
        expected /= expected.sum(-1, keepdims=True)
        np.testing.assert_allclose(probabilities, expected, atol=1e-5, err_msg=member)


def test_the_recipe_in_bfloat16_trains_exports_fuses_and_predicts_in_bfloat16(data, tmp_path):
    """--config.model.dtype=bfloat16 (the configs' mixed precision for TPU / GPU) through a whole
    run of the ViT recipe from its pre-trained file: float32 weights load into float32
    parameters, the run evaluates and exports float32 arrays computed in bfloat16, re-exports its
    best checkpoint the same, fuses, and the ensemble artefact predicts as the export.
    test_train_steps checks that each member's step computes in bfloat16; what follows the step
    is the same code for every member, so the cheapest recipe stands for the three."""
    import ml_dtypes

    from cer_jax import predict

    member = "vit"
    config = production_config(member, data)
    config.model.dtype = "bfloat16"
    source = source_model(config, **implied(member, _formats(member)[0]))
    config.init.checkpoint = str(weight_files.FORMATS[MODEL_NAMES[member]][_formats(member)[0]](
        source, tmp_path / "w"))
    workdir = tmp_path / "run"
    result, loaded = _train_with_spy(config, workdir)
    assert result["stopped"] is None
    assert {value.dtype for value in loaded.values()} == {np.dtype(np.float32)}
    model, saved = checkpointing.restore_best_model(str(workdir))
    assert saved.model.dtype == "bfloat16"
    assert {v.get_value().dtype for v in core.model_arrays(model).values()} == {
        np.dtype(np.float32)}
    _, exported = export.load_export(str(workdir))
    for split, arrays in exported.items():
        features = arrays["features"]
        assert arrays["logits"].dtype == features.dtype == np.float32, split
        # The pooled features are the bfloat16 network's (each value a bfloat16 one), which a
        # float32 evaluation would not give.
        np.testing.assert_array_equal(
            features.astype(ml_dtypes.bfloat16).astype(np.float32), features, err_msg=split)
    shutil.rmtree(workdir / "export")
    export.export_workdir(str(workdir))
    _, again = export.load_export(str(workdir))
    for split in exported:
        np.testing.assert_array_equal(again[split]["features"], exported[split]["features"])

    fusion = load_config("configs/fusion.py")
    fusion.workdirs, fusion.out = str(workdir), str(tmp_path / "fusion")
    # The strategies, ablation and bootstrap are the float32 fusion test's.
    fusion.strategies, fusion.ablation, fusion.bootstrap_samples = "performance_weighted", False, 0
    evaluator.fuse(fusion)
    artefact = ensemble.load_ensemble(tmp_path / "fusion" / "ensemble")
    test = {key: value[:12] for key, value in exported["test"].items()}
    aligned = data / "compound" / "Image" / "aligned"
    faces = np.stack([predict.read_image(str(aligned / str(name).replace(
        ".jpg", "_aligned.jpg")))[0] for name in test["file_names"]])
    # To bfloat16's precision: its numpy preprocessing matches TensorFlow's to ~1e-6, which
    # may round a bfloat16 value the other way (8 bits of mantissa: 2**-8 relative).
    _, features, count = artefact.members[0].dispatch(faces, batch_bucket=1)
    np.testing.assert_allclose(np.asarray(features)[:count], test["features"], rtol=2**-6,
                               atol=2**-6)
    expected = np.exp(test["logits"] - test["logits"].max(-1, keepdims=True))
    np.testing.assert_allclose(artefact.predict(faces).member_probabilities[0],
                               expected / expected.sum(-1, keepdims=True), atol=1e-4)


def _scalar_series(workdir: pathlib.Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the workdir's TensorBoard scalars."""
    import tensorflow as tf

    series: dict[str, dict[int, float]] = {}
    for path in sorted(workdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    series.setdefault(value.tag, {})[int(event.step)] = float(
                        tf.make_ndarray(value.tensor))
    return series


def _recipe_learning_rate(config, step: int, total: int, per_epoch: int) -> float:
    """The recipe's learning rate at `step`, written out: linear warm-up from 0 over
    warmup_epochs, then cosine to lr * end_lr_fraction at the last step, or x step_factor
    every step_every_epochs."""
    lr, sched = config.optimizer.lr, config.schedule
    warmup = round(sched.warmup_epochs * per_epoch)
    if step < warmup:
        return lr * step / warmup
    if sched.name == "cosine":
        end = lr * sched.end_lr_fraction
        return end + (lr - end) * 0.5 * (1 + np.cos(np.pi * (step - warmup) / (total - warmup)))
    assert sched.name == "step", sched.name
    return lr * sched.step_factor ** ((step - warmup) // round(sched.step_every_epochs * per_epoch))



@pytest.mark.parametrize("member", MEMBERS)
def test_each_recipes_schedule_is_its_stated_rule_over_the_whole_run(member):
    """Every step of each full-length recipe (its own number of epochs, 10 steps an epoch)
    against its rule written out: ViT 2 and ResNet50 1 warm-up epochs, then cosine; MA-Net
    x0.1 every 15 epochs, no warm-up. The trainer logs this schedule at each step (below, for
    ViT's recipe)."""
    recipe = load_config(f"configs/{member}.py")
    per_epoch = 10
    total = optim.epochs_to_steps(recipe.training.num_epochs, per_epoch)
    schedule = optim.create_schedule(recipe, total_steps=total, steps_per_epoch=per_epoch)
    got = np.asarray(jax.vmap(schedule)(jax.numpy.arange(total)))
    want = [_recipe_learning_rate(recipe, step, total, per_epoch) for step in range(total)]
    # float32 near the cosine's end: to a millionth of the peak rate.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * recipe.optimizer.lr)


def test_the_recipe_counts_epochs_and_evaluates_and_checkpoints_at_each(data, tmp_path):
    """The recipes train by epochs (num_steps, eval_every_steps and checkpoint.every_steps
    unset): the run's length, its warm-up and decay, its evaluations and its checkpoints all
    follow from the training split's size. Only the batch and the number of epochs shrink.
    The trainer's epoch arithmetic is the same for every member, so the ViT recipe (the
    cheapest on CPU, with a 2-epoch warm-up) stands for all three."""
    import tensorflow_datasets as tfds

    member = "vit"

    config = production_config(member, data)
    recipe = load_config(f"configs/{member}.py")
    for key in ("training.num_steps", "training.eval_every_steps", "checkpoint.every_steps"):
        _set(config, key, None)
    _set(config, "training.global_batch_size", 64)
    _set(config, "training.num_epochs", 4.0)
    source = source_model(config, **implied(member, _formats(member)[0]))
    config.init.checkpoint = str(weight_files.FORMATS[MODEL_NAMES[member]][_formats(member)[0]](
        source, tmp_path / "w"))
    workdir = tmp_path / "run"
    result = trainer.train_and_evaluate(config, str(workdir))

    train_size = tfds.builder("rafdb/compound", data_dir=str(data / "tfds")).info.splits[
        recipe.dataset.train_split].num_examples
    per_epoch = train_size // 64
    assert per_epoch >= 2
    total = 4 * per_epoch
    saved = checkpointing.load_config(str(workdir)).dataset_info
    assert (saved.steps_per_epoch, saved.total_steps) == (per_epoch, total)
    assert result["step"] == total and result["stopped"] is None

    epochs_ends = [per_epoch * epoch for epoch in range(1, 5)]
    series = _scalar_series(workdir)
    for split in recipe.dataset.eval_splits:
        assert sorted(series[f"{split}/macro_f1"]) == epochs_ends, split
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()
                  ) == epochs_ends[-recipe.checkpoint.keep:]
    logged = series["train/learning_rate"]  # each step's rate, logged at the step's end
    assert sorted(logged) == list(range(1, total + 1))
    head = series["train/learning_rate_head"]  # the recipe's 10x head rate, logged too
    assert recipe.optimizer.head_lr_multiplier == 10 and sorted(head) == sorted(logged)
    for step, value in logged.items():
        expected = _recipe_learning_rate(recipe, step - 1, total, per_epoch)
        assert value == pytest.approx(expected, rel=1e-5, abs=1e-12), step
        assert head[step] == pytest.approx(10 * expected, rel=1e-5, abs=1e-12), step

    # The best checkpoint is the first evaluation with the highest validation macro F1.
    validation = series[f"{recipe.checkpoint.best_split}/macro_f1"]
    best = max(epochs_ends, key=lambda step: (validation[step], -step))
    manifest, _ = export.load_export(str(workdir))
    assert manifest["step"] == result["best_step"] == best
    assert manifest["metrics"][recipe.checkpoint.best_split]["macro_f1"] == pytest.approx(
        validation[best], abs=1e-6)
