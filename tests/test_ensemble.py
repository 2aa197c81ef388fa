"""The ensemble artefact: numpy eval view == TF's, write / load round trip, no TensorFlow."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import cv2
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from matplotlib import cbook

from cer_jax import checkpointing
from cer_jax import ensemble as ensemble_lib
from cer_jax.config_loading import load_config
from cer_jax.fusion import strategies
from cer_jax.train_state import create_model

ABAW7 = (
    "Fearfully Surprised", "Happily Surprised", "Sadly Surprised", "Disgustedly Surprised",
    "Angrily Surprised", "Sadly Fearful", "Sadly Angry",
)


def tiny_members(class_names, seed=0):
    """Two untrained members at smoke size: a ViT ([-1, 1], resize) and a ResNet (ImageNet
    normalisation, resize-shorter + central crop)."""
    members = []
    for index, spec in enumerate(("configs/vit.py:smoke", "configs/resnet50.py:smoke")):
        config = load_config(spec)
        config.dataset_info = ml_collections.ConfigDict(
            {"class_names": list(class_names), "num_classes": len(class_names)}
        )
        config.input.image_size = 32
        if "resnet" in spec:
            config.input.eval_resize = "resize_crop"
            config.input.resize_size = 40
        else:
            config.input.eval_resize = "resize"
        model = create_model(config, len(class_names), seed=seed + index)
        members.append((config.model.name, model, config))
    return members


def build_tiny_ensemble(out, class_names=ABAW7, strategy="performance_weighted", seed=0):
    """A written ensemble directory of untrained tiny members (no training needed)."""
    rng = np.random.default_rng(seed)
    n, k = 30, len(class_names)
    labels = np.arange(n) % k
    data = strategies.FusionData(
        logits=rng.normal(size=(2, n, k)).astype(np.float32) + 2 * np.eye(k)[labels],
        features=(rng.normal(size=(n, 4)), rng.normal(size=(n, 4))),
        labels=labels,
    )
    fitted = strategies.fit_strategy(strategy, data)
    members = tiny_members(class_names, seed)
    path = ensemble_lib.write_ensemble(out, members, fitted, class_names,
                                       dataset="rafdb/compound_abaw7")
    return path, members, fitted


def photo():
    bgr = cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize(
    "size, normalization, eval_resize, resize_size, source_hw",
    [
        (32, "minus_one_one", "resize", 36, (100, 100)),  # shrink, ViT range
        (32, "imagenet", "resize_crop", 40, (100, 100)),
        (224, "imagenet", "resize", 256, (100, 100)),  # enlarge (the full recipes)
        (224, "unit", "resize_crop", 256, (100, 100)),
        (64, "unit", "resize_crop", 72, (120, 90)),  # not square
    ],
)
def test_numpy_eval_view_matches_tensorflow(size, normalization, eval_resize, resize_size,
                                            source_hw):
    import tensorflow as tf

    from cer_jax.data import augment

    cfg = ml_collections.ConfigDict(dict(
        image_size=size, normalization=normalization, eval_resize=eval_resize,
        resize_size=resize_size,
    ))
    rng = np.random.default_rng(0)
    images = [
        cv2.resize(photo()[60:420, 100:460], source_hw[::-1], interpolation=cv2.INTER_AREA),
        rng.integers(0, 256, (*source_hw, 3), dtype=np.uint8),
    ]
    for image in images:
        expected = augment.eval_view(tf.constant(image), cfg).numpy()
        got = ensemble_lib.eval_view(image, checkpointing.eval_preprocessing(cfg))
        assert got.shape == expected.shape == (size, size, 3)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


def test_round_trip_reproduces_every_member_and_the_fusion(tmp_path):
    path, members, fitted = build_tiny_ensemble(tmp_path / "ens")
    manifest = json.loads((path / "ensemble.json").read_text())
    assert manifest["format"] == 1 and manifest["class_names"] == list(ABAW7)
    assert manifest["strategy"]["name"] == "performance_weighted"
    assert [m["model"] for m in manifest["members"]] == ["vit", "resnet"]
    for entry in manifest["members"]:
        assert (path / entry["dir"] / "config.json").exists()
        assert (path / entry["dir"] / "model.npz").exists()

    loaded = ensemble_lib.load_ensemble(path)
    assert loaded.class_names == list(ABAW7) and loaded.member_names == ["vit", "resnet"]
    faces = np.stack([cv2.resize(photo()[80:400, 120:440], (100, 100)),
                      np.full((100, 100, 3), 128, np.uint8), photo()[:100, :100]])
    out = loaded.predict(faces)
    expected_logits = []
    assert [member.preprocessing for member in loaded.members] == [
        {"image_size": 32, "normalization": "minus_one_one", "eval_resize": "resize"},
        {"image_size": 32, "normalization": "imagenet", "eval_resize": "resize_crop",
         "resize_size": 40},
    ]
    mirrored_logits = []  # of the faces mirrored left-right (width is axis 2 of N, H, W, C)

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    for (_, model, _), member in zip(members, loaded.members, strict=True):
        for images, into in ((faces, expected_logits), (np.flip(faces, axis=2), mirrored_logits)):
            inputs = np.stack([ensemble_lib.eval_view(f, member.preprocessing) for f in images])
            into.append(np.asarray(model(jnp.asarray(inputs), train=False).logits))
    expected_member = np.stack([softmax(z) for z in expected_logits])
    np.testing.assert_allclose(out.member_probabilities, expected_member, atol=1e-5)
    weights = np.asarray(fitted.params["weights"])
    np.testing.assert_allclose(out.probabilities, np.einsum("m,mnk->nk", weights,
                                                            out.member_probabilities), atol=1e-9)
    np.testing.assert_allclose(out.probabilities.sum(-1), 1.0, atol=1e-6)
    # Flip TTA (README: predict --flip_tta): each member's logits averaged over the face and its
    # left-right mirror, then softmax, then the same fusion.
    flipped = loaded.predict(faces, flip_tta=True)
    expected_flipped = np.stack([softmax((a + b) / 2)
                                 for a, b in zip(expected_logits, mirrored_logits, strict=True)])
    assert np.abs(expected_flipped - expected_member).max() > 1e-3  # the mirror matters here
    np.testing.assert_allclose(flipped.member_probabilities, expected_flipped, atol=1e-5)
    np.testing.assert_allclose(flipped.probabilities,
                               np.einsum("m,mnk->nk", weights, expected_flipped), atol=1e-5)

    # Rewriting replaces the directory atomically; a broken one is refused clearly.
    build_tiny_ensemble(tmp_path / "ens", strategy="temperature_scaled", seed=1)
    assert ensemble_lib.load_ensemble(path).strategy_name == "temperature_scaled"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".ens")]
    with pytest.raises(ensemble_lib.EnsembleError, match="not an ensemble directory"):
        ensemble_lib.load_ensemble(tmp_path / "nothing")


def test_loading_and_predicting_needs_no_tensorflow_nor_sklearn(tmp_path):
    """A prediction's start stays short: TF and the fitting libraries (scikit-learn,
    scipy.optimize; ~1.3 s to import) are left out, even for stacking, which sklearn fitted."""
    path, _, _ = build_tiny_ensemble(tmp_path / "ens", strategy="stacking")
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from cer_jax import ensemble, predict
        ens = ensemble.load_ensemble({os.fspath(path)!r})
        out = ens.predict(np.zeros((2, 100, 100, 3), np.uint8))
        assert out.probabilities.shape == (2, 7)
        bad = [m for m in ("tensorflow", "tensorflow_datasets", "sklearn", "scipy.optimize")
               if m in sys.modules]
        assert not bad, bad
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout


def test_a_damaged_ensemble_is_one_line_naming_the_file(tmp_path):
    # The files are read before any model is built: a hand-written directory is enough.
    path = tmp_path / "ens"
    (path / "members" / "00_vit").mkdir(parents=True)
    manifest = path / "ensemble.json"
    good_manifest = json.dumps({
        "format": 1, "kind": "cer_jax.ensemble", "class_names": list(ABAW7),
        "strategy": {"name": "uniform_probabilities", "state_file": "strategy.npz"},
        "members": [{"name": "vit", "model": "vit", "dir": "members/00_vit", "preprocessing": {
            "image_size": 32, "normalization": "minus_one_one", "eval_resize": "resize"}}]})
    manifest.write_text(good_manifest)
    (path / "members" / "00_vit" / "config.json").write_text(
        '{"model": {"name": "vit"}, "dataset_info": {"num_classes": 7}}')
    model = path / "members" / "00_vit" / "model.npz"
    np.savez(model, **{"params/head/kernel": np.zeros((64, 64), np.float32)})
    good_model = model.read_bytes()
    fix = ("write the ensemble again with python -m cer_jax.fuse (its --out=OUT writes "
           "OUT/ensemble).")

    manifest.write_text("{\n")  # echo '{' > ensemble.json
    with pytest.raises(ensemble_lib.EnsembleError) as info:
        ensemble_lib.load_ensemble(path)
    assert str(info.value) == (
        f"{manifest} is damaged (not valid JSON: Expecting property name enclosed in double "
        f"quotes at line 2 column 1): {fix}")
    manifest.write_text("[]")
    with pytest.raises(ensemble_lib.EnsembleError) as info:
        ensemble_lib.load_ensemble(path)
    assert str(info.value) == f"{manifest} is damaged (it is an array, not an object): {fix}"
    manifest.write_text(good_manifest)
    model.write_bytes(good_model[:1000])  # head -c 1000 model.npz > model.npz
    with pytest.raises(ensemble_lib.EnsembleError) as info:
        ensemble_lib.load_ensemble(path)
    assert str(info.value) == (
        f"{model} is damaged (not a complete .npz archive: File is not a zip file): {fix}")
    model.write_bytes(b"")
    with pytest.raises(ensemble_lib.EnsembleError, match=r"model\.npz is damaged \(not a"):
        ensemble_lib.load_ensemble(path)
    model.write_bytes(good_model[:1000])
    # The command line: that one line, exit status 2, no traceback.
    image = tmp_path / "face.png"
    cv2.imwrite(os.fspath(image), np.zeros((100, 100, 3), np.uint8))
    result = subprocess.run(
        [sys.executable, "-m", "cer_jax.predict", f"--ensemble={path}", "--aligned",
         os.fspath(image)], capture_output=True, text=True, timeout=300,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {model} is damaged (not a complete .npz archive: File is not a zip file): "
        f"{fix}")
    assert "Traceback" not in result.stderr


def test_a_file_missing_from_an_ensemble_is_one_line_with_the_fix(tmp_path):
    """A copy of the directory cut short (rsync stopped, a partial download)."""
    path, _, _ = build_tiny_ensemble(tmp_path / "ens")
    fix = ("the ensemble directory is incomplete; copy it whole again, or write it again with "
           "python -m cer_jax.fuse (its --out=OUT writes OUT/ensemble).")
    manifest = json.loads((path / "ensemble.json").read_text())
    member = path / manifest["members"][0]["dir"]
    for missing in (member / "model.npz", member / "config.json",
                    path / manifest["strategy"]["state_file"]):
        kept = missing.read_bytes()
        missing.unlink()
        with pytest.raises(ensemble_lib.EnsembleError) as info:
            ensemble_lib.load_ensemble(path)
        assert str(info.value) == f"{missing} is missing: {fix}"
        missing.write_bytes(kept)


def test_a_member_of_other_classes_is_refused_and_leaves_no_temporary_folder(tmp_path):
    members = tiny_members(ABAW7[:6])
    data = strategies.FusionData(logits=np.zeros((2, 7, 7), np.float32), features=None,
                                 labels=np.arange(7))
    fitted = strategies.fit_strategy("uniform_probabilities", data)
    with pytest.raises(ensemble_lib.EnsembleError, match="Member vit predicts"):
        ensemble_lib.write_ensemble(tmp_path / "ens", members, fitted, ABAW7)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda m: m.pop("members"), "it has no 'members'"),
    (lambda m: m.update(members=[]), "its 'members' list is empty"),
    (lambda m: m.update(class_names="Happily Surprised"),
     "'class_names' is a string, not an array"),
    (lambda m: m["strategy"].pop("state_file"), "it has no 'strategy.state_file'"),
    (lambda m: m["members"][1].pop("dir"), "it has no 'members[1].dir'"),
    (lambda m: m["members"][0].update(preprocessing=None),
     "'members[0].preprocessing' is null, not an object"),
    (lambda m: m["members"][0]["preprocessing"].update(image_size="32"),
     "'members[0].preprocessing.image_size' is a string, not a whole number"),
    # The ResNet member's crop view reads resize_size too.
    (lambda m: m["members"][1]["preprocessing"].pop("resize_size"),
     "it has no 'members[1].preprocessing.resize_size'"),
])
def test_an_ensemble_json_edited_by_hand_names_what_it_lacks(tmp_path, edit, problem):
    path, _, _ = build_tiny_ensemble(tmp_path / "ens")
    manifest_path = path / "ensemble.json"
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ensemble_lib.EnsembleError) as info:
        ensemble_lib.load_ensemble(path)
    assert str(info.value) == (
        f"{manifest_path} is damaged ({problem}): write the ensemble again with python -m "
        "cer_jax.fuse (its --out=OUT writes OUT/ensemble).")


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda c: c.pop("model"), "it has no 'model'"),
    (lambda c: c["model"].pop("name"), "it has no 'model.name'"),
    (lambda c: c["dataset_info"].update(num_classes=True),
     "'dataset_info.num_classes' is a boolean, not a whole number"),
])
def test_a_member_config_edited_by_hand_names_what_it_lacks(tmp_path, edit, problem):
    path, _, _ = build_tiny_ensemble(tmp_path / "ens")
    config_path = path / json.loads((path / "ensemble.json").read_text())["members"][0]["dir"] \
        / "config.json"
    config = json.loads(config_path.read_text())
    edit(config)
    config_path.write_text(json.dumps(config))
    with pytest.raises(ensemble_lib.EnsembleError) as info:
        ensemble_lib.load_ensemble(path)
    assert str(info.value).startswith(f"{config_path} is damaged ({problem}): write the")


@pytest.mark.parametrize(("edit", "unknown"), [
    (lambda c: c["model"].update(attention_window=7),
     "option model.attention_window of model 'vit'"),
    (lambda c: c["model"].update(name="vit_v2"),
     "model 'vit_v2' (this cer_jax has: manet, resnet, vit)"),
])
def test_a_member_of_another_cer_jax_version_is_one_line(tmp_path, edit, unknown):
    """An artefact written by a newer install (a model option or model this one lacks) and
    copied to a machine with an older one: the model constructor's TypeError was a traceback."""
    path, _, _ = build_tiny_ensemble(tmp_path / "ens")
    member_dir = path / json.loads((path / "ensemble.json").read_text())["members"][0]["dir"]
    config = json.loads((member_dir / "config.json").read_text())
    edit(config)
    (member_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ensemble_lib.EnsembleError) as info:
        ensemble_lib.load_ensemble(path)
    assert str(info.value) == (
        f"{member_dir}/config.json names {unknown}, which this cer_jax does not know: the "
        "ensemble was written by another cer_jax version; predict with that version, or write "
        "the ensemble again with this one (python -m cer_jax.fuse; its --out=OUT writes "
        "OUT/ensemble).")


def _edited_copy(path, to, edit_manifest=None, edit_config=None):
    shutil.copytree(path, to)
    manifest = json.loads((to / "ensemble.json").read_text())
    if edit_config:
        config_path = to / manifest["members"][0]["dir"] / "config.json"
        config = json.loads(config_path.read_text())
        edit_config(config)
        config_path.write_text(json.dumps(config))
    if edit_manifest:
        edit_manifest(manifest)
        (to / "ensemble.json").write_text(json.dumps(manifest))
    return to


def with_a_misfit_feature_fusion(path, to):
    """A copy of the ensemble at `path` whose feature_mlp fusion is for 4-wide features."""
    rng = np.random.default_rng(0)
    data = strategies.FusionData(logits=rng.normal(size=(2, 30, 7)).astype(np.float32),
                                 features=(rng.normal(size=(30, 4)),) * 2,
                                 labels=np.arange(30) % 7)
    mlp = strategies.fit_strategy("feature_mlp", data, data, max_epochs=1)
    to = _edited_copy(path, to, lambda m: m["strategy"].update(name="feature_mlp"))
    ensemble_lib._write_npz(to / "strategy.npz", mlp.state)
    return to


def test_a_fusion_or_member_that_does_not_fit_ensemble_json_is_one_line(tmp_path):
    """A member taken out of ensemble.json by hand (to predict faster, say) left its weight in
    strategy.npz, which numpy broadcast over the other member: a silently different fusion (a
    stacking fusion failed at the first face); a member of another label space, or a strategy
    this version lacks, failed mid-run in a traceback."""
    path, _, _ = build_tiny_ensemble(tmp_path / "ens")
    fix = ("write the ensemble again with python -m cer_jax.fuse, with the members you want "
           "(its --out=OUT writes OUT/ensemble).")
    one = _edited_copy(path, tmp_path / "one", lambda m: m["members"].pop())
    with pytest.raises(ensemble_lib.EnsembleError) as info:
        ensemble_lib.load_ensemble(one)
    assert str(info.value) == (f"{one / 'strategy.npz'} does not fit ensemble.json (its weights "
                               f"are for 2 members, ensemble.json lists 1): {fix}")
    eleven = _edited_copy(path, tmp_path / "eleven",
                          edit_config=lambda c: c["dataset_info"].update(num_classes=11))
    config_path = eleven / "members" / "00_vit" / "config.json"
    with pytest.raises(ensemble_lib.EnsembleError) as info:
        ensemble_lib.load_ensemble(eleven)
    assert str(info.value) == (f"{config_path} does not fit ensemble.json (its model predicts 11 "
                               f"classes, ensemble.json names 7): {fix}")
    newer = _edited_copy(path, tmp_path / "newer",
                         lambda m: m["strategy"].update(name="ranked_voting"))
    with pytest.raises(ensemble_lib.EnsembleError, match=re.escape(
            f"{newer / 'ensemble.json'} names the fusion strategy 'ranked_voting', which this "
            "cer_jax does not know (it has: performance_weighted, ")):
        ensemble_lib.load_ensemble(newer)
    # A fusion of the members' logits is tried at load, one of their features at the first
    # face: either way one line, not numpy's broadcasting error.
    stacking, _, _ = build_tiny_ensemble(tmp_path / "stacking", strategy="stacking")
    dropped = _edited_copy(stacking, tmp_path / "stacking_one", lambda m: m["members"].pop())
    with pytest.raises(ensemble_lib.EnsembleError, match=re.escape(
            f"{dropped / 'strategy.npz'} does not fit ensemble.json (its stacking fusion, for 1 "
            "members and 7 classes: ")) as info:
        ensemble_lib.load_ensemble(dropped)
    assert str(info.value).endswith(fix)
    other = with_a_misfit_feature_fusion(path, tmp_path / "mlp")
    loaded = ensemble_lib.load_ensemble(other)
    with pytest.raises(ensemble_lib.EnsembleError, match=re.escape(
            f"{other / 'strategy.npz'} does not fit ensemble.json (its feature_mlp fusion, for "
            "2 members and 7 classes: ")) as info:
        loaded.predict(np.zeros((1, 40, 40, 3), np.uint8))
    assert str(info.value).endswith(fix)


@pytest.mark.parametrize(("format_", "kind"), [(2, "cer_jax.ensemble"), (None, None)])
def test_an_ensemble_of_another_format_names_the_fix(tmp_path, format_, kind):
    path = tmp_path / "ens"
    path.mkdir()
    (path / "ensemble.json").write_text(json.dumps({"format": format_, "kind": kind}))
    with pytest.raises(ensemble_lib.EnsembleError) as info:
        ensemble_lib.load_ensemble(path)
    assert str(info.value) == (
        f"{path / 'ensemble.json'} is format {format_!r} of {kind!r}; this cer_jax reads format "
        "1 of 'cer_jax.ensemble': predict with the cer_jax version that wrote it, or write the "
        "ensemble again with this one (python -m cer_jax.fuse; its --out=OUT writes "
        "OUT/ensemble).")


def test_predict_takes_no_faces_refuses_unit_range_floats_and_names_a_missing_array(tmp_path):
    path, _, _ = build_tiny_ensemble(tmp_path / "ens")
    loaded = ensemble_lib.load_ensemble(path)
    # No face (a frame where detection found none): an empty prediction, not a numpy error.
    empty = loaded.predict(np.zeros((0, 100, 100, 3), np.uint8))
    assert empty.probabilities.shape == (0, len(ABAW7)) and empty.classes.shape == (0,)
    assert empty.member_probabilities.shape == (2, 0, len(ABAW7))
    # Images already scaled to [0, 1] would be divided by 255 again (near-black faces).
    face = cv2.resize(photo()[80:400, 120:440], (100, 100))
    with pytest.raises(ValueError, match=r"faces must be uint8 RGB in \[0, 255\], got float32"):
        loaded.predict((face[None] / 255.0).astype(np.float32))
    assert loaded.predict(face[None].astype(np.int64)).probabilities.shape == (1, len(ABAW7))
    # A 16-bit image (cv2.IMREAD_UNCHANGED of a 16-bit PNG) would be clipped to near white.
    with pytest.raises(ValueError) as info:
        loaded.predict([face.astype(np.uint16) * 257])
    assert str(info.value) == (
        f"faces must be uint8 RGB in [0, 255], got uint16 values from {int(face.min()) * 257} to "
        f"{int(face.max()) * 257} (16-bit images: divide by 257 and cast to uint8)")
    # A member's model.npz without one of the model's arrays (another version's layout).
    model = path / "members" / "00_vit" / "model.npz"
    with np.load(model) as data:
        arrays = {key: data[key] for key in data.files if key != "params/head/kernel"}
    np.savez(model, **arrays)
    with pytest.raises(ensemble_lib.EnsembleError) as info:
        ensemble_lib.load_ensemble(path)
    assert str(info.value) == (
        f"{path / 'members' / '00_vit'} lacks 1 array(s) the model needs (e.g. "
        "'params/head/kernel'): the member was written by an incompatible version; write the "
        "ensemble again with python -m cer_jax.fuse.")


def moved_member_and_earlier_ensemble(tmp_path, monkeypatch, best):
    """A member whose export was of step 5 while its best checkpoint is now `best["step"]`, a
    fitted fusion of it, and an earlier fusion's ensemble folder: (member, fitted, out)."""
    import types

    from cer_jax import train_state
    [(name, model, config)] = tiny_members(ABAW7)[:1]
    graphdef, params, rest = train_state.split_model(model)
    monkeypatch.setattr(checkpointing, "restore_best_state", lambda workdir, mesh: (
        graphdef, best["step"], {"params": params, "rest": rest}, config))
    member = types.SimpleNamespace(name=name, workdir=os.fspath(tmp_path / "run"),
                                   info={"step": 5, "dataset": "rafdb/compound_abaw7"})
    data = strategies.FusionData(logits=np.zeros((1, 7, 7), np.float32), features=None,
                                 labels=np.arange(7))
    fitted = strategies.fit_strategy("uniform_probabilities", data)
    out = tmp_path / "fusion" / "ensemble"
    out.mkdir(parents=True)
    (out / "ensemble.json").write_text('{"strategy": {"name": "an earlier run"}}')
    return member, fitted, out


def test_fusion_writes_no_ensemble_when_a_members_best_step_moved_since_its_export(
        tmp_path, monkeypatch, caplog):
    """A run still training saves a better step while fusion fits on its export: the artefact
    would pair the fitted fusion with another model than the one whose outputs it was fitted
    on, so it is not written (an earlier one is removed) and the log says why."""
    best = {"step": 7}
    member, fitted, out = moved_member_and_earlier_ensemble(tmp_path, monkeypatch, best)
    assert ensemble_lib.write_from_fusion(out, [member], fitted, ABAW7) is None
    assert not out.exists()
    assert ("member vit's best checkpoint is now step 7, but the fusion was fitted on the "
            "outputs of step 5") in caplog.text
    # The step the fusion saw: written, with each member's step recorded.
    best["step"] = 5
    path = ensemble_lib.write_from_fusion(out, [member], fitted, ABAW7)
    assert json.loads((path / "ensemble.json").read_text())["steps"] == [5]
    assert ensemble_lib.load_ensemble(path).member_names == ["vit"]


def test_an_earlier_ensemble_that_cannot_be_removed_is_one_line(tmp_path, monkeypatch):
    """No new ensemble (a member's best step moved) and the earlier one cannot be removed: an
    OSError traceback on process 0 only, while the other hosts exited 0; now a one-line error
    after a vote, on every process."""
    import errno

    import jax
    from etils import epath

    from cer_jax import sharding
    from cer_jax.errors import UserError
    member, fitted, out = moved_member_and_earlier_ensemble(tmp_path, monkeypatch, {"step": 7})

    def read_only(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(type(epath.Path(out)), "rmtree", read_only)
    with pytest.raises(UserError) as info:
        ensemble_lib.write_from_fusion(out, [member], fitted, ABAW7)
    assert str(info.value).startswith(
        f"The earlier ensemble at {out} could not be removed (Permission denied) and does not "
        "match the new report (no new one is written: member vit's best checkpoint is now "
        "step 7, but the fusion was fitted on the outputs of step 5")
    assert str(info.value).endswith(
        "; remove it yourself, or python -m cer_jax.predict --ensemble would still use it.")
    # Process 1's view: process 0 failed to remove it; process 1 stops too, naming it.
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    votes = []
    monkeypatch.setattr(sharding, "_failed_processes",
                        lambda failed: votes.append(failed) or [0])
    with pytest.raises(UserError) as info:
        ensemble_lib.write_from_fusion(out, [member], fitted, ABAW7)
    assert votes == [False] and out.exists()
    assert str(info.value) == (
        "process 0 stopped in the removal of the earlier ensemble on an error that this process "
        f"did not meet (process 0 removes {out}: see its log).")


def test_an_ensemble_that_cannot_be_written_is_one_line_naming_the_folder(tmp_path,
                                                                          monkeypatch):
    """A full disk under the fusion's --out: an OSError traceback on process 0 only, while the
    other hosts exited 0; now a one-line error after a vote, on every process."""
    import errno
    import types

    from cer_jax import train_state
    from cer_jax.errors import UserError
    [(name, model, config)] = tiny_members(ABAW7)[:1]
    graphdef, params, rest = train_state.split_model(model)
    monkeypatch.setattr(checkpointing, "restore_best_state", lambda workdir, mesh: (
        graphdef, 5, {"params": params, "rest": rest}, config))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ensemble_lib, "write_ensemble", full_disk)
    member = types.SimpleNamespace(name=name, workdir=os.fspath(tmp_path / "run"),
                                   info={"step": 5, "dataset": "rafdb/compound_abaw7"})
    data = strategies.FusionData(logits=np.zeros((1, 7, 7), np.float32), features=None,
                                 labels=np.arange(7))
    fitted = strategies.fit_strategy("uniform_probabilities", data)
    out = tmp_path / "fusion" / "ensemble"
    with pytest.raises(UserError) as info:
        ensemble_lib.write_from_fusion(out, [member], fitted, ABAW7)
    assert str(info.value) == (
        f"The ensemble could not be written to {out} (No space left on device); free space "
        "there or give a folder this user may write, and run the fusion again.")


def test_an_ensemble_written_under_home_is_loaded_from_there(tmp_path, monkeypatch):
    """write_ensemble('~/x') and load_ensemble('~/x') name one folder (was: './~/x' written)."""
    members = tiny_members(ABAW7)[:1]  # configs/ is read from the repository root
    monkeypatch.setenv("HOME", os.fspath(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    data = strategies.FusionData(logits=np.zeros((1, 7, 7), np.float32), features=None,
                                 labels=np.arange(7))
    fitted = strategies.fit_strategy("uniform_probabilities", data)
    path = ensemble_lib.write_ensemble("~/ens", members, fitted, ABAW7)
    assert os.fspath(path) == os.fspath(tmp_path / "home" / "ens")
    assert not (tmp_path / "~").exists()
    assert ensemble_lib.load_ensemble("~/ens").member_names == ["vit"]
