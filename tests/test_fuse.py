"""The fusion job on hand-made exported workdirs (the trainer's export format, written here)."""

import glob
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import texts_cut_off
from PIL import Image
from sklearn import metrics as skm

from cer_jax.fusion import evaluator
from cer_jax.fusion import members as members_lib

CLASSES = ["Happily Surprised", "Sadly Fearful", "Sadly Angry", "Fearfully Surprised"]
SIZES = {"train_fit": 80, "validation": 48, "test": 48}
QUALITY_SEED = {"vit": (2.5, 1), "manet": (2.0, 2), "resnet": (1.5, 3)}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_outputs(quality: float, seed: int, shuffle: bool = True) -> dict[str, dict]:
    """One member's outputs on a fixed problem: logits as good as `quality`, rows shuffled."""
    truth = np.random.default_rng(0)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES), 6)) * 3
    outputs = {}
    for split, n in SIZES.items():
        labels = truth.integers(0, len(CLASSES), size=n).astype(np.int32)
        names = np.array([f"{split}_{i:04d}.jpg" for i in range(n)])
        logits = quality * np.eye(len(CLASSES))[labels] + rng.normal(size=(n, len(CLASSES)))
        features = centres[labels] + rng.normal(size=(n, 6))
        rows = rng.permutation(n) if shuffle else np.arange(n)
        outputs[split] = {
            "logits": logits[rows].astype(np.float32),
            "features": features[rows].astype(np.float32),
            "labels": labels[rows],
            "file_names": names[rows],
        }
    return outputs


def write_export(workdir: str, model: str, outputs: dict, class_names=CLASSES,
                 train_split: str = "train_fit", **recorded) -> str:
    """A workdir holding only export/, exactly in the trainer's export format."""
    export = os.path.join(workdir, "export")
    os.makedirs(export)
    for split, arrays in outputs.items():
        np.savez(os.path.join(export, f"{split}.npz"), **arrays)
    info = {
        "format": 2,
        "member": model,
        "model": model,
        "dataset": "rafdb/compound",
        "train_split": train_split,
        "class_names": list(class_names),
        "step": 7,
        "splits": {split: f"{split}.npz" for split in outputs},
        "metrics": {
            split: {
                "accuracy": float(np.mean(a["logits"].argmax(-1) == a["labels"])),
                "macro_f1": float(skm.f1_score(a["labels"], a["logits"].argmax(-1),
                                               average="macro")),
            }
            for split, a in outputs.items() if split != train_split
        },
        **recorded,
    }
    with open(os.path.join(export, "export.json"), "w") as f:
        json.dump(info, f)
    return workdir


@pytest.fixture(scope="module")
def three_members(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    return [
        write_export(str(root / name), name, make_outputs(quality, seed))
        for name, (quality, seed) in QUALITY_SEED.items()
    ]


def fusion_config(workdirs, out, **overrides):
    config = evaluator.resolve_config(
        evaluator.load_default_config(), workdirs=workdirs, out=str(out)
    )
    config.feature_mlp.max_epochs = 30
    config.optimised_weights.grid_step = 0.1
    config.update(overrides)
    return config


def sklearn_scores(outputs: dict, split: str) -> tuple[float, float]:
    labels, predictions = outputs[split]["labels"], outputs[split]["logits"].argmax(-1)
    return (skm.accuracy_score(labels, predictions),
            skm.f1_score(labels, predictions, average="macro"))


def test_fuse_reports_every_member_and_strategy(three_members, tmp_path):
    out = tmp_path / "fusion"
    report = evaluator.fuse(fusion_config(three_members, out))

    assert [m["name"] for m in report["members"]] == ["vit", "manet", "resnet"]
    for member, workdir in zip(report["members"], three_members, strict=True):
        assert member["workdir"] == workdir
        outputs = make_outputs(*QUALITY_SEED[member["name"]])
        for split in ("validation", "test"):
            accuracy, f1 = sklearn_scores(outputs, split)
            assert member["metrics"][split]["accuracy"] == pytest.approx(accuracy)
            assert member["metrics"][split]["macro_f1"] == pytest.approx(f1)
    assert set(report["strategies"]) == {
        "performance_weighted", "uniform_probabilities", "uniform_logits", "optimised_weights",
        "temperature_scaled", "stacking", "feature_mlp",
    }
    best = report["best_strategy"]
    cv_f1 = {n: s["selection_cv_macro_f1"] for n, s in report["strategies"].items()}
    assert cv_f1[best] == max(cv_f1.values())
    assert cv_f1["uniform_probabilities"] == pytest.approx(
        report["strategies"]["uniform_probabilities"]["metrics"]["validation"]["macro_f1"]
    )
    paper = report["strategies"]["performance_weighted"]["params"]
    member_f1 = [m["metrics"]["validation"]["macro_f1"] for m in report["members"]]
    np.testing.assert_allclose(paper["weights"], np.array(member_f1) / sum(member_f1))
    # The paper's fused scores, recomputed here: each member's softmax on the test photos (rows
    # matched by file name), weighted by its validation macro F1 (scikit-learn), summed.
    fused, labels = 0.0, None
    for name in QUALITY_SEED:
        outputs = make_outputs(*QUALITY_SEED[name])
        f1 = sklearn_scores(outputs, "validation")[1]
        test = outputs["test"]
        order = np.argsort(test["file_names"])
        logits = test["logits"][order].astype(np.float64)
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        fused = fused + f1 * probabilities / probabilities.sum(-1, keepdims=True)
        labels = test["labels"][order]
    paper_test = report["strategies"]["performance_weighted"]["metrics"]["test"]
    assert paper_test["accuracy"] == pytest.approx(skm.accuracy_score(labels, fused.argmax(-1)))
    assert paper_test["macro_f1"] == pytest.approx(
        skm.f1_score(labels, fused.argmax(-1), average="macro"))
    assert set(report["ablation"]) == {"performance_weighted", best}
    for rows in report["ablation"].values():
        assert len(rows) == 7  # every non-empty subset of three members
        singles = {tuple(r["members"]): r for r in rows if len(r["members"]) == 1}
        for member in report["members"]:
            single = singles[(member["name"],)]["metrics"]["test"]
            assert single["accuracy"] == pytest.approx(member["metrics"]["test"]["accuracy"])

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["strategies"][best]["metrics"] == report["strategies"][best]["metrics"]
    markdown = (out / "report.md").read_text()
    assert "chosen on the validation split; test is held out" in markdown
    assert "## Ablation over member subsets: performance_weighted" in markdown
    paper_row = report["strategies"]["performance_weighted"]["metrics"]["test"]
    assert f"{100 * paper_row['macro_f1']:.2f}" in markdown
    low, high = paper_row["macro_f1_ci"]  # the figure and its bootstrap interval, in one cell
    assert f"| {100 * paper_row['macro_f1']:.2f} [{100 * low:.1f}, {100 * high:.1f}] |" in markdown
    assert "## Fusion minus each member (paired bootstrap)" in markdown
    assert (out / f"confusion_{best}_test.png").stat().st_size > 1000
    assert (out / "per_class_f1_test.png").stat().st_size > 1000
    assert not glob.glob(str(out / ".report-*"))
    events = glob.glob(str(out / "events.out.tfevents.*"))
    assert len(events) == 1
    summaries = tensorboard_summaries(events[0])
    # The report's tables as Markdown text and its figures as images; no single-point scalars.
    assert summaries["scalars"] == {}
    texts = summaries["text"]
    assert set(texts) == {
        "fusion/summary", "fusion/members", "fusion/per_class_f1/validation",
        "fusion/per_class_f1/test", "fusion/ablation/performance_weighted", "fusion/chosen",
        "fusion/fusion_minus_member",
    } | {f"fusion/ablation/{best}"}
    assert texts["fusion/summary"].startswith("Fusion weights and hyper-parameters were chosen")
    assert "| performance_weighted | fusion (paper)" in texts["fusion/summary"]
    assert f"{100 * paper_row['macro_f1']:.2f}" in texts["fusion/summary"]
    assert "| vit + manet + resnet |" in texts["fusion/ablation/performance_weighted"]
    images = summaries["images"]
    assert set(images) == {
        f"fusion/figures/confusion_{best}_test", "fusion/figures/per_class_f1_test"
    }
    for name in (f"confusion_{best}_test", "per_class_f1_test"):
        with Image.open(out / f"{name}.png") as png:  # the same figure (the PNG at 120 dpi)
            width, height = images[f"fusion/figures/{name}"]
            assert width > 300 and width / height == pytest.approx(png.width / png.height, 0.01)


def tensorboard_summaries(path: str) -> dict[str, dict]:
    """{"scalars": {tag: value}, "text": {tag: Markdown}, "images": {tag: (width, height)}}."""
    import tensorflow as tf

    found = {"scalars": {}, "text": {}, "images": {}}
    for event in tf.compat.v1.train.summary_iterator(path):
        for value in event.summary.value:
            plugin = value.metadata.plugin_data.plugin_name
            tensor = tf.make_ndarray(value.tensor)
            if plugin == "scalars":
                found["scalars"][value.tag] = float(tensor)
            elif plugin == "text":
                found["text"][value.tag] = tensor.item().decode()
            elif plugin == "images":
                found["images"][value.tag] = (int(tensor[0]), int(tensor[1]))  # then the PNG
            else:
                raise AssertionError(f"unexpected {plugin!r} summary {value.tag}")
    return found


def test_the_report_records_each_members_seeds(tmp_path):
    """A paper table's members can be retrained: each one's initialisation and data order
    seeds (from its export.json; '?' for an export from before they were recorded)."""
    workdirs = [
        write_export(str(tmp_path / "vit"), "vit", make_outputs(0.8, 0), seed=3, data_seed=7),
        write_export(str(tmp_path / "manet"), "manet", make_outputs(0.7, 1)),
    ]
    out = tmp_path / "fusion"
    report = evaluator.fuse(fusion_config(workdirs, out, strategies="uniform_probabilities",
                                          ablation=False))
    assert [(m["seed"], m["data_seed"]) for m in report["members"]] == [(3, 7), (None, None)]
    with open(out / "report.json") as f:
        assert [m["seed"] for m in json.load(f)["members"]] == [3, None]
    markdown = (out / "report.md").read_text()
    assert f"| vit | 7 | 3 | 7 | {workdirs[0]} |" in markdown
    assert f"| manet | 7 | ? | ? | {workdirs[1]} |" in markdown


def test_a_class_without_a_test_example_is_reported_as_undefined(tmp_path):
    """Its F1 is 0/0 where it is never predicted: 'n/a' (JSON null), not 0.00, with a note
    that macro F1 leaves it out; not a class that every system failed on."""
    absent = CLASSES[3]
    workdirs = []
    for name, (quality, seed) in QUALITY_SEED.items():
        outputs = make_outputs(quality, seed)
        test = outputs["test"]
        kept = test["labels"] != 3
        # No system predicts it either: its logits are the lowest in every kept row.
        test["logits"][:, 3] = -100.0
        outputs["test"] = {key: value[kept] for key, value in test.items()}
        workdirs.append(write_export(str(tmp_path / name), name, outputs))
    out = tmp_path / "fusion"
    report = evaluator.fuse(fusion_config(
        workdirs, out, strategies="performance_weighted,uniform_probabilities", ablation=False))
    assert report["absent_classes"] == {"test": [absent]}
    on_disk = json.loads((out / "report.json").read_text())
    for system in [*on_disk["members"], *on_disk["strategies"].values()]:
        assert system["metrics"]["test"]["per_class_f1"][absent] is None
        assert system["metrics"]["validation"]["per_class_f1"][absent] is not None
    markdown = (out / "report.md").read_text()
    test_table = markdown.split("## Per-class F1 (%) on test")[1].split("## ")[0]
    assert "| vit | " in test_table and test_table.count(" n/a |") == 5
    # Each member's row: its per-class F1 on test by scikit-learn, in the header's class order.
    header = next(line for line in test_table.splitlines() if line.startswith("| system |"))
    assert header == "| system | " + " | ".join(CLASSES) + " |"
    for name, workdir in zip(QUALITY_SEED, workdirs, strict=True):
        with np.load(os.path.join(workdir, "export", "test.npz")) as test:
            labels, predicted = test["labels"], test["logits"].argmax(-1)
        f1 = skm.f1_score(labels, predicted, labels=range(len(CLASSES)), average=None,
                          zero_division=0)
        cells = [f"{100 * v:.2f}" if c != absent else "n/a" for c, v in zip(CLASSES, f1,
                                                                             strict=True)]
        assert f"| {name} | " + " | ".join(cells) + " |" in test_table.splitlines(), name
    assert f"test has no example of {absent}: its F1 is n/a (0/0, undefined)" in test_table
    assert (out / "per_class_f1_test.png").stat().st_size > 1000
    # In the figure an undefined F1 draws no bar, as an F1 of 0 does: each is marked 'n/a'.
    from cer_jax.fusion import report as report_lib

    axes = report_lib.per_class_f1_figure(on_disk, "test").axes[0]
    marks = [text for text in axes.texts if text.get_text() == "n/a"]
    assert len(marks) == len(on_disk["members"]) + 1  # each member and the fused system
    assert {round(text.get_position()[0]) for text in marks} == {CLASSES.index(absent)}
    assert not report_lib.per_class_f1_figure(on_disk, "validation").axes[0].texts


def test_the_report_gives_what_a_paper_table_quotes(three_members, tmp_path):
    """The number of examples each split's figures are over, and each member's fusion weight by
    name: report.md had neither (the sizes only in report.json, the weights as a bare list)."""
    out = tmp_path / "fusion"
    report = evaluator.fuse(fusion_config(
        three_members, out, strategies="performance_weighted,temperature_scaled", ablation=False))
    markdown = (out / "report.md").read_text()
    assert "Examples (each scored once): validation 48, test 48." in markdown
    paper = report["strategies"]["performance_weighted"]["params"]
    weights = ", ".join(f'"{name}": {round(w, 4)}'
                        for name, w in zip(QUALITY_SEED, paper["weights"], strict=True))
    assert f'"weights": {{{weights}}}' in markdown
    assert '"temperatures": {"vit": ' in markdown
    assert isinstance(json.loads((out / "report.json").read_text())["strategies"][
        "performance_weighted"]["params"]["weights"], list)  # report.json keeps the members' order


def _aligned_predictions(split: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and every member's, the uniform logits' and the paper's predicted classes on
    `split`, recomputed from the members' outputs, rows in the first member's file order (as
    fusion aligns them)."""
    predictions, logits, paper, labels = {}, [], 0.0, None
    first = make_outputs(*QUALITY_SEED["vit"])[split]["file_names"]
    for name in QUALITY_SEED:
        outputs = make_outputs(*QUALITY_SEED[name])
        row = {file: i for i, file in enumerate(outputs[split]["file_names"])}
        order = [row[file] for file in first]
        member = outputs[split]["logits"][order].astype(np.float64)
        labels = outputs[split]["labels"][order]
        predictions[name] = member.argmax(-1)
        logits.append(member)
        probabilities = np.exp(member - member.max(-1, keepdims=True))
        weight = sklearn_scores(outputs, "validation")[1]
        paper = paper + weight * probabilities / probabilities.sum(-1, keepdims=True)
    predictions["uniform_logits"] = np.mean(logits, axis=0).argmax(-1)
    predictions["performance_weighted"] = paper.argmax(-1)
    return labels, predictions


def test_bootstrap_intervals_match_a_slow_sklearn_reference(three_members, tmp_path):
    """Every system's interval on every split, and fusion minus each member (paired: the same
    resamples), against a loop calling scikit-learn on resamples drawn as bootstrap.py says.
    Before: point figures only."""
    samples, seed, confidence = 60, 5, 0.9
    report = evaluator.fuse(fusion_config(
        three_members, tmp_path / "fusion", strategies="uniform_logits,performance_weighted",
        ablation=False, bootstrap_samples=samples, bootstrap_seed=seed,
        bootstrap_confidence=confidence))
    assert {k: report["bootstrap"][k] for k in ("samples", "seed", "confidence", "best_member")} \
        == {"samples": samples, "seed": seed, "confidence": confidence, "best_member": "vit"}
    systems = {m["name"]: m["metrics"] for m in report["members"]}
    systems.update({n: r["metrics"] for n, r in report["strategies"].items()})
    fusions = list(dict.fromkeys([report["best_strategy"], "performance_weighted"]))
    differences = report["bootstrap"]["fusion_minus_member"]
    assert len(differences) == 2 * len(fusions) * len(QUALITY_SEED)
    for split in ("validation", "test"):
        labels, predictions = _aligned_predictions(split)
        rows = np.random.default_rng(seed).integers(0, len(labels), size=(samples, len(labels)))
        resampled = {
            name: {"accuracy": np.array([skm.accuracy_score(labels[r], p[r]) for r in rows]),
                   "macro_f1": np.array([skm.f1_score(labels[r], p[r], average="macro")
                                         for r in rows])}
            for name, p in predictions.items()
        }
        tails = [(1 - confidence) / 2, (1 + confidence) / 2]
        for name, metrics in systems.items():
            for metric in ("accuracy", "macro_f1"):
                np.testing.assert_allclose(metrics[split][f"{metric}_ci"],
                                           np.quantile(resampled[name][metric], tails))
        for fusion in fusions:
            for member in QUALITY_SEED:
                (row,) = [d for d in differences if (d["split"], d["fusion"], d["member"])
                          == (split, fusion, member)]
                assert row["best_member"] == (member == "vit")
                for metric in ("accuracy", "macro_f1"):
                    assert row[metric] == pytest.approx(
                        systems[fusion][split][metric] - systems[member][split][metric])
                    np.testing.assert_allclose(row[f"{metric}_ci"], np.quantile(
                        resampled[fusion][metric] - resampled[member][metric], tails))


def test_a_strategy_named_twice_keeps_every_interval_on_its_own_system(three_members, tmp_path):
    """--config.strategies=uniform_logits,uniform_logits,performance_weighted: the intervals
    are matched to systems by position, and the strategy fitted twice took the paper's fusion's
    place, so its intervals were uniform_logits'. A split named twice in eval_splits is
    reported once (it was scored, tabled and bootstrapped twice)."""
    reports = [evaluator.fuse(fusion_config(
        three_members, tmp_path / f"fusion{i}", strategies=strategies, ablation=False,
        bootstrap_samples=50, eval_splits=eval_splits)) for i, (strategies, eval_splits) in
        enumerate([("uniform_logits,performance_weighted", ("validation", "test")),
                   ("uniform_logits,uniform_logits,performance_weighted",
                    ("validation", "test", "validation"))])]
    assert reports[1]["eval_splits"] == ["validation", "test"]
    once_md, twice_md = ((tmp_path / f"fusion{i}" / "report.md").read_text() for i in (0, 1))
    header = "| system | kind | validation acc % | validation macro F1 % | test acc % |"
    assert once_md.count(header) == twice_md.count(header) == 1
    once, twice = (report["strategies"]["performance_weighted"]["metrics"]["test"]
                   for report in reports)
    assert twice["accuracy_ci"] == once["accuracy_ci"]
    assert twice["macro_f1_ci"] == once["macro_f1_ci"]
    assert reports[1]["bootstrap"]["fusion_minus_member"] == \
        reports[0]["bootstrap"]["fusion_minus_member"]


def test_a_report_that_cannot_be_written_is_one_line_naming_out(three_members, tmp_path,
                                                                 monkeypatch):
    """A full disk (or a folder without write permission) at --out: an OSError traceback on
    process 0 only, while the other hosts went on into the ensemble's restore; now one line,
    after a vote that stops every process (tests/test_multiprocess.py runs two)."""
    import errno

    from cer_jax.errors import UserError

    def full_disk(out, report):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(evaluator.report_lib, "write_report", full_disk)
    out = tmp_path / "fusion"
    with pytest.raises(UserError) as info:
        evaluator.fuse(fusion_config(three_members, out, strategies="uniform_logits",
                                     ablation=False, bootstrap_samples=0))
    assert str(info.value) == (
        f"--out={out} (config key out): the report could not be written there (No space left "
        "on device); free space there or give a folder this user may write, and run the "
        "fusion again.")


def test_the_bootstrap_finds_each_systems_predictions_by_kind_and_name_not_by_position():
    """The intervals were matched to systems by the order the predictions were recorded in:
    any other order (or one system too many or too few) gave a system another's intervals
    without a word. Now each system's are found by ("member" | "strategy", name), and a
    system without predictions, or predictions without a system, is an error."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=40)
    data = {"test": evaluator.strategies_lib.FusionData(
        logits=np.zeros((2, 40, 4)), features=(np.zeros((40, 1)),) * 2, labels=labels)}
    # A member and a strategy of the same name, and systems of distinct quality.
    quality = {("member", "vit"): 0.9, ("member", "manet"): 0.3, ("strategy", "vit"): 0.6,
               ("strategy", "stacking"): 0.0}
    predicted = {key: np.where(rng.random(40) < q, labels, (labels + 1) % 4)
                 for key, q in quality.items()}
    config = fusion_config(["a", "b"], "out", eval_splits=("test",), select_on="test",
                           bootstrap_samples=200, bootstrap_seed=1)

    def metrics(key):
        return {"test": {"accuracy": float(np.mean(predicted[key] == labels)),
                         "macro_f1": float(skm.f1_score(labels, predicted[key],
                                                        average="macro"))}}

    member_rows = [{"name": name, "metrics": metrics(("member", name))}
                   for name in ("vit", "manet")]
    strategy_rows = {name: {"metrics": metrics(("strategy", name))}
                     for name in ("vit", "stacking")}
    # Recorded in another order than the report's rows.
    predictions = {key: {"test": predicted[key]} for key in reversed(list(quality))}
    evaluator._bootstrap(config, data, predictions, member_rows, strategy_rows, "vit")
    systems = {("member", r["name"]): r["metrics"]["test"] for r in member_rows}
    systems.update({("strategy", n): r["metrics"]["test"] for n, r in strategy_rows.items()})
    rows = np.random.default_rng(1).integers(0, 40, size=(200, 40))
    for key, got in systems.items():
        accuracy = np.mean(predicted[key][rows] == labels[rows], axis=1)
        np.testing.assert_allclose(got["accuracy_ci"], np.quantile(accuracy, [0.025, 0.975]))
    del predictions[("strategy", "stacking")]
    with pytest.raises(RuntimeError, match="not those it scored"):
        evaluator._bootstrap(config, data, predictions, member_rows, strategy_rows, "vit")


def test_bootstrap_samples_0_reports_point_figures_only(three_members, tmp_path):
    out = tmp_path / "fusion"
    report = evaluator.fuse(fusion_config(three_members, out, strategies="uniform_logits",
                                          ablation=False, bootstrap_samples=0))
    assert report["bootstrap"] is None
    assert all("accuracy_ci" not in m["metrics"]["test"] for m in report["members"])
    markdown = (out / "report.md").read_text()
    assert "[" not in markdown.split("## Accuracy and macro F1")[1].split("## Members")[0]
    assert "paired bootstrap" not in markdown


def test_no_fitted_number_or_choice_depends_on_the_test_labels(tmp_path):
    """A guard (it passes at the review's start): every strategy's fitted values, its
    out-of-fold selection score and the best strategy are the same when the test labels are
    replaced, so the test figures are held out."""
    reports = []
    for relabelled in (False, True):
        workdirs = []
        for name, (quality, seed) in QUALITY_SEED.items():
            outputs = make_outputs(quality, seed)
            if relabelled:
                outputs["test"]["labels"] = (outputs["test"]["labels"] + 1) % len(CLASSES)
            workdirs.append(write_export(str(tmp_path / f"{name}{relabelled}"), name, outputs))
        reports.append(evaluator.fuse(fusion_config(
            workdirs, tmp_path / f"fusion{relabelled}", ablation=False)))
    before, after = reports
    assert before["best_strategy"] == after["best_strategy"]
    assert before["bootstrap"]["best_member"] == after["bootstrap"]["best_member"]
    for name, row in before["strategies"].items():
        assert row["params"] == after["strategies"][name]["params"], name
        assert row["selection_cv_macro_f1"] == after["strategies"][name]["selection_cv_macro_f1"]
        assert row["metrics"]["test"] != after["strategies"][name]["metrics"]["test"]


def test_importing_fusion_leaves_matplotlib_alone():
    """No import-time side effects: importing cer_jax.fusion (report, plots) in a fresh
    interpreter neither sets matplotlib's backend nor loads pyplot."""
    code = (
        "import sys, matplotlib; before = matplotlib.rcParams._get_backend_or_none(); "
        "import cer_jax.fusion, cer_jax.fusion.report, cer_jax.plots; "
        "print(before == matplotlib.rcParams._get_backend_or_none(), "
        "'matplotlib.pyplot' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "False"]


@pytest.mark.parametrize("classes", [CLASSES[:2], CLASSES, CLASSES * 2 + CLASSES[:3]], ids=len)
def test_every_word_of_the_per_class_figure_is_inside_the_picture(classes):
    """Five members (seeds of one model) and the fused system in one legend row above the
    bars ran past both edges of a figure of 7 classes or fewer, cutting the names off."""
    from cer_jax.fusion import report as report_lib

    def metrics():
        return {"test": {"per_class_f1": {c: 0.5 for c in classes} | {classes[0]: None}}}

    members = [f"{m}:{m}_seed{s}" for m in ("vit", "resnet50") for s in range(2)] + ["manet"]
    report = {"class_names": classes, "best_strategy": "performance_weighted",
              "members": [{"name": name, "metrics": metrics()} for name in members],
              "strategies": {"performance_weighted": {"metrics": metrics()}}}
    assert texts_cut_off(report_lib.per_class_f1_figure(report, "test")) == []


def test_rows_are_aligned_by_file_name(tmp_path):
    outputs = make_outputs(2.0, seed=4, shuffle=False)
    rng = np.random.default_rng(9)
    shuffled = {
        split: {k: v[rows] for k, v in arrays.items()}
        for split, arrays in outputs.items()
        for rows in [rng.permutation(len(arrays["labels"]))]
    }
    a = write_export(str(tmp_path / "a"), "vit", outputs)
    b = write_export(str(tmp_path / "b"), "vit", shuffled)
    members = members_lib.load_members([a, b], ["validation", "test"])
    assert [m.name for m in members] == ["vit:a", "vit:b"]
    _, data = members_lib.align_members(members, ["validation", "test"])
    for split in ("validation", "test"):
        np.testing.assert_array_equal(data[split].logits[0], data[split].logits[1])
        np.testing.assert_array_equal(data[split].labels, outputs[split]["labels"])
    report = evaluator.fuse(fusion_config(
        [a, b], tmp_path / "out", strategies="uniform_probabilities", ablation=False
    ))
    fused = report["strategies"]["uniform_probabilities"]["metrics"]["test"]
    assert fused == report["members"][0]["metrics"]["test"]
    assert fused["accuracy"] == pytest.approx(sklearn_scores(outputs, "test")[0])


def refusal(tmp_path, **changes) -> str:
    base = make_outputs(2.0, seed=5)
    other = make_outputs(2.0, seed=6)
    class_names = changes.pop("class_names", CLASSES)
    for split, arrays in changes.pop("outputs", {}).items():
        other[split].update(arrays)
    a = write_export(str(tmp_path / "a"), "vit", base)
    b = write_export(str(tmp_path / "b"), "resnet", other, class_names)
    with pytest.raises(ValueError) as error:
        evaluator.fuse(fusion_config([a, b], tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    return str(error.value).replace(str(tmp_path), "<tmp>")


def test_an_export_beside_only_a_cut_short_best_save_is_used_as_it_is(tmp_path):
    """An interrupted first best save leaves only Orbax's temporary folder in best/: no
    checkpoint to export, so the export beside it is the member (it was refused as untrained)."""
    outputs = make_outputs(2.0, seed=4)
    workdir = write_export(str(tmp_path / "a"), "vit", outputs)
    os.makedirs(os.path.join(workdir, "best", "15.orbax-checkpoint-tmp-1733000000"))
    (member,) = members_lib.load_members([workdir], ["validation", "test"])
    got, want = member.outputs["test"], outputs["test"]
    np.testing.assert_array_equal(got["labels"][np.argsort(got["file_names"])],
                                  want["labels"][np.argsort(want["file_names"])])


def test_an_out_folder_under_home_in_the_config_form_is_expanded(tmp_path, monkeypatch):
    """The shell leaves `--config.out=~/x` alone: the report goes under the home folder, not
    into a folder named `~` in the working directory; a bucket path is left as it is."""
    from cer_jax.fusion import config as fusion_config
    from cer_jax.fusion import evaluator

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = fusion_config.get_config()
    config.out = "~/fusion"
    assert evaluator.resolve_config(config).out == str(tmp_path / "home" / "fusion")
    config.out = "gs://bucket/runs/fusion/"
    assert evaluator.resolve_config(config).out == "gs://bucket/runs/fusion/"


def test_refuses_different_label_spaces(tmp_path):
    message = refusal(tmp_path, class_names=[*CLASSES[:3], "Happily Disgusted"])
    assert message == (
        "Members vit (<tmp>/a) and resnet (<tmp>/b) have different label spaces: only in vit: "
        "['Fearfully Surprised']; only in resnet: ['Happily Disgusted']. Fuse only models "
        "trained on the same dataset config."
    )


def test_refuses_a_different_class_order(tmp_path):
    swapped = [CLASSES[1], CLASSES[0], *CLASSES[2:]]
    message = refusal(tmp_path, class_names=swapped)
    assert message == (
        f"Members vit (<tmp>/a) and resnet (<tmp>/b) list the same classes in a different "
        f"order: {CLASSES} vs {swapped}. Retrain or re-export them with the same class order."
    )


def test_a_class_clash_is_refused_before_a_member_is_exported(tmp_path, monkeypatch):
    """Members whose classes come in another order (or another label space: rafdb/compound_abaw7
    beside rafdb/compound). Before: a member to export (one without an export, a stale one, or
    every one with --config.reexport) was exported first, minutes of evaluation each, and only
    then was the clash refused; now from their config.json / export.json, before any export."""
    from cer_jax import export

    trained = tmp_path / "vit"  # a best checkpoint (faked below) and its config.json, no export
    trained.mkdir()
    (trained / "config.json").write_text(json.dumps({
        "member": "vit", "model": {"name": "vit"}, "checkpoint": {"best_split": "validation"},
        "dataset": {"train_split": "train_fit"},
        "dataset_info": {"class_names": CLASSES, "split_sizes": dict.fromkeys(SIZES, 1)}}))
    b = write_export(str(tmp_path / "b"), "manet", make_outputs(2.0, seed=2))
    other_order = CLASSES[::-1]
    c = write_export(str(tmp_path / "c"), "resnet", make_outputs(2.0, seed=3), other_order)
    exported = []
    monkeypatch.setattr(members_lib.checkpointing, "holds_best_checkpoint",
                        lambda workdir: workdir == str(trained))

    def export_workdir(workdir, splits=None):  # the best checkpoint's export, as the trainer's
        exported.append(workdir)
        write_export(workdir, "vit", make_outputs(2.0, seed=1))

    monkeypatch.setattr(export, "export_workdir", export_workdir)
    with pytest.raises(members_lib.MemberError) as e:
        evaluator.fuse(fusion_config([str(trained), b, c], tmp_path / "out"))
    assert str(e.value) == (
        f"Members vit ({trained}) and resnet ({c}) list the same classes in a different order: "
        f"{CLASSES} vs {other_order}. Retrain or re-export them with the same class order.")
    assert exported == [] and not (tmp_path / "out").exists()


def test_refuses_different_example_sets(tmp_path):
    names = np.array([f"test_{i:04d}.jpg" for i in range(SIZES["test"])])
    names[names == "test_0003.jpg"] = "test_9999.jpg"
    message = refusal(tmp_path, outputs={"test": {"file_names": names}})
    assert message == (
        "Members vit (<tmp>/a) and resnet (<tmp>/b) were evaluated on different test examples: "
        "1 file(s) only in vit ['test_0003.jpg'], 1 only in resnet ['test_9999.jpg']. Export "
        "both from the same dataset build."
    )


def test_refuses_a_member_with_non_finite_logits(tmp_path):
    """argmax of a NaN row is class 0: such a member would drag the fusion without a word."""
    logits = make_outputs(2.0, seed=6)["test"]["logits"].copy()
    logits[[2, 5], 1] = [np.nan, np.inf]
    message = refusal(tmp_path, outputs={"test": {"logits": logits}})
    assert message == (
        f"Member workdir <tmp>/b: 2 of {SIZES['test']} test examples have non-finite logits "
        "(NaN or inf) in its export; its best checkpoint computes overflowing values: retrain it "
        "(e.g. a lower optimizer.lr, or model.dtype='float32') or leave it out of --workdirs.")


def test_refuses_a_member_without_the_needed_split(tmp_path):
    outputs = make_outputs(2.0, seed=7)
    del outputs["train_fit"]
    a = write_export(str(tmp_path / "a"), "vit", outputs)
    with pytest.raises(ValueError) as e:
        evaluator.fuse(fusion_config([a], tmp_path / "out"))
    # Before: "or change config keys eval_splits / train_split", and every other split is refused
    # as train_split; only feature_mlp (a default strategy) needs it.
    # An export copied from elsewhere: export_workdir on it failed ("config.json not found");
    # the split is exported where the member was trained (with a checkpoint, fusion does it).
    assert str(e.value) == (
        f"Member workdir {a} has no exported train_fit split (it has: test, validation); it has "
        "no best checkpoint to export it from (an export copied from elsewhere): export it where "
        "the member was trained, with cer_jax.export.export_workdir(WORKDIR, splits=[...]), and "
        "copy that export/ here, or drop feature_mlp from config key strategies (only it needs "
        "the training split).")
    del outputs["test"]
    b = write_export(str(tmp_path / "b"), "vit", outputs)
    with pytest.raises(ValueError, match=re.escape(
        "has no exported test split (it has: validation); it has no best checkpoint to export it "
        "from (an export copied from elsewhere): export it where the member was trained, with "
        "cer_jax.export.export_workdir(WORKDIR, splits=[...]), and copy that export/ here, or "
        "change config key eval_splits.")):
        evaluator.fuse(fusion_config([b], tmp_path / "out", strategies="uniform_logits"))
    with pytest.raises(members_lib.MemberError, match="has neither a best checkpoint"):
        evaluator.fuse(fusion_config([str(tmp_path)], tmp_path / "out"))


def test_select_on_test_is_flagged_in_the_report(three_members, tmp_path):
    out = tmp_path / "fusion"
    report = evaluator.fuse(fusion_config(
        three_members, out, select_on="test", ablation=False,
        strategies="performance_weighted,optimised_weights",
    ))
    assert report["select_on"] == "test"
    optimised = report["strategies"]["optimised_weights"]
    assert optimised["params"]["selection_macro_f1"] == pytest.approx(
        optimised["metrics"]["test"]["macro_f1"]
    )
    warning = "**WARNING: fusion weights and hyper-parameters were chosen on the test split"
    markdown = (out / "report.md").read_text()
    assert markdown.splitlines()[2].startswith(warning)
    assert evaluator.report_lib.summary_table(report).startswith(warning)


def test_command_line_flags_and_config_form(three_members, tmp_path):
    """`--workdirs/--out` override the config file given by `--config`, as `--config.*` do; a
    tuple key takes a comma list like the other list keys (`--config.eval_splits=test,validation`
    was the one split 'test,validation', refused as not holding select_on)."""
    out = tmp_path / "cli"
    command = [
        sys.executable, "-m", "cer_jax.fuse", "--config=configs/fusion.py",
        f"--workdirs={','.join(three_members)}", f"--out={out}",
        "--config.strategies=uniform_logits,performance_weighted",
        "--config.ablation=False", "--config.performance_weighted.metric=accuracy",
        "--config.eval_splits=test,validation",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| performance_weighted | fusion (paper)" in result.stdout
    assert f"Report written to {out}" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["strategies"]["performance_weighted"]["params"]["metric"] == "accuracy"
    assert report["config"]["workdirs"] == ",".join(three_members)
    assert report["eval_splits"] == ["test", "validation"]


def test_bad_config_values_are_named(three_members, tmp_path):
    with pytest.raises(ValueError, match="Unknown fusion strategy 'median' in config key "):
        evaluator.fuse(fusion_config(three_members, tmp_path, strategies="uniform_logits,median"))
    with pytest.raises(ValueError, match=re.escape(
        "config key select_on='train_fit' must be one of the reported splits"
    )):
        evaluator.fuse(fusion_config(three_members, tmp_path, select_on="train_fit"))
    with pytest.raises(ValueError, match=re.escape("No members to fuse: set --workdirs=A,B,C")):
        evaluator.fuse(fusion_config([], tmp_path))


@pytest.mark.parametrize(("key", "value", "message"), [
    ("performance_weighted.metric", "auc", "Unknown performance metric 'auc' (config key "
                                           "performance_weighted.metric); choose 'accuracy' or "
                                           "'macro_f1'."),
    ("optimised_weights.grid_step", 0.3, "grid step 0.3 (config key optimised_weights.grid_step) "
                                         "must divide 1"),
    ("selection_folds", 1, "config key selection_folds=1 must be >= 2 (folds of the select_on "
                           "split that choose the best strategy)."),
    ("feature_mlp.learning_rate", 0.0, "config key feature_mlp.learning_rate=0.0 must be > 0."),
    ("feature_mlp.hidden_sizes", (256, 0), "config key feature_mlp.hidden_sizes=(256, 0) must be "
                                           "a list of whole sizes >= 1."),
    # A word among the numbers (--config.feature_mlp.hidden_sizes=256,l28, a letter l): was the
    # comparison's TypeError traceback.
    ("feature_mlp.hidden_sizes", (256, "l28"), "config key feature_mlp.hidden_sizes=(256, 'l28') "
                                               "must be a list of whole sizes >= 1."),
    ("stacking.inverse_regularisation", (0.1, "l0"), "config key "
                                                     "stacking.inverse_regularisation=(0.1, "
                                                     "'l0') must be a non-empty list of values "
                                                     "> 0."),
    ("stacking.inverse_regularisation", (), "config key stacking.inverse_regularisation=() must "
                                            "be a non-empty list of values > 0."),
    ("optimised_weights.refine_rounds", 5, "config key optimised_weights.refine_rounds=5 must be "
                                           "in 0..3 (concentrations 50, 200, 1000)."),
    ("bootstrap_samples", -1, "config key bootstrap_samples=-1 must be a whole number >= 0 "
                              "(resamples of each split for the confidence intervals; 0 = point "
                              "figures only)."),
    ("bootstrap_confidence", 95.0, "config key bootstrap_confidence=95.0 must be between 0 and 1 "
                                   "(e.g. 0.95 for 95 % intervals)."),
    ("bootstrap_seed", -3, "config key bootstrap_seed=-3 must be a whole number >= 0."),
    # numpy / scikit-learn refused these in the fit, a traceback after the members' loading.
    ("stacking.seed", -1, "config key stacking.seed=-1 must be a whole number in 0 .. 2**32 - 1."),
    ("feature_mlp.seed", 2**32, "config key feature_mlp.seed=4294967296 must be a whole number in "
                                "0 .. 2**32 - 1."),
    ("optimised_weights.seed", -2, "config key optimised_weights.seed=-2 must be a whole number "
                                   "in 0 .. 2**32 - 1."),
    ("strategies", " , ", "No fusion strategy: set --config.strategies=A,B (config key "
                          "strategies) to some of: performance_weighted, uniform_probabilities, "
                          "uniform_logits, optimised_weights, temperature_scaled, stacking, "
                          "feature_mlp."),
])
def test_a_bad_strategy_option_stops_before_any_member_is_read(tmp_path, key, value, message):
    """Before: a traceback after the members were loaded and re-exported (or, for the folds,
    silently 2; for no strategy, "max() arg is an empty sequence" after every member's work)."""
    config = fusion_config([str(tmp_path / "not_read")], tmp_path / "out")
    *parents, leaf = key.split(".")
    (config[parents[0]] if parents else config)[leaf] = value
    with pytest.raises(evaluator.FusionConfigError) as e:
        evaluator.fuse(config)
    assert str(e.value) == message
    assert not (tmp_path / "out").exists()


def test_a_grid_too_fine_for_the_members_stops_before_any_member_is_read(tmp_path):
    """optimised_weights.grid_step=0.001 and 4 members: 167,668,501 weight vectors, built one by
    one, then searched 6 times or more (hours, tens of GB) before any word. The same step for
    3 members (501,501) or with the grid left to 3 members passes this check."""
    workdirs = [str(tmp_path / f"not_read_{i}") for i in range(4)]
    config = fusion_config(workdirs, tmp_path / "out")
    config.optimised_weights.grid_step = 0.001
    with pytest.raises(evaluator.FusionConfigError) as e:
        evaluator.fuse(config)
    assert str(e.value) == (
        "config key optimised_weights.grid_step=0.001 gives 4 members a grid of 167,668,501 "
        "weight vectors (at most 1,000,000: the search would run for hours); use a coarser "
        "grid_step (0.05: 1,771), or set optimised_weights.max_grid_members below 4 to search "
        "by Dirichlet samples.")
    for members, max_grid_members in ((workdirs[:3], 4), (workdirs, 3)):
        config = fusion_config(members, tmp_path / "out")
        config.optimised_weights.update(grid_step=0.001, max_grid_members=max_grid_members)
        with pytest.raises(members_lib.MemberError, match="does not exist"):
            evaluator.fuse(config)
    assert not (tmp_path / "out").exists()


def _outputs_with_train(quality, seed):
    """make_outputs plus RAF-DB's `train`: train_fit and validation together."""
    outputs = make_outputs(quality, seed)
    outputs["train"] = {key: np.concatenate([outputs["train_fit"][key],
                                             outputs["validation"][key]])
                        for key in outputs["train_fit"]}
    return outputs


def test_members_trained_on_a_split_holding_validation_are_reported_as_not_held_out(
        tmp_path, caplog):
    """RAF-DB's `train` holds `validation`: members trained on it have seen the images fusion
    chooses its weights on. feature_mlp, fitted on their training split, is fitted on the part
    that is in no reported split."""
    workdirs = []
    for name, (quality, seed) in QUALITY_SEED.items():
        outputs = _outputs_with_train(quality, seed)
        del outputs["train_fit"]
        workdirs.append(write_export(str(tmp_path / name), name, outputs, train_split="train"))
    report = evaluator.fuse(fusion_config(workdirs, tmp_path / "out", ablation=False))
    assert report["config"]["train_split"] == "train"  # the members' own
    assert report["training_leaks"] == [
        f"member {name} was trained on train, which holds 48 of the validation images"
        for name in QUALITY_SEED]
    assert ("**WARNING: the members' training saw what fusion treats as unseen: member vit was "
            "trained on train, which holds 48 of the validation images;") in (
        tmp_path / "out" / "report.md").read_text()
    assert ("feature_mlp is fitted on the 80 of the 128 train examples that are in no reported "
            "split (validation, test).") in caplog.text


def test_members_trained_on_rafdbs_train_without_exporting_it_are_still_reported(tmp_path):
    """export.splits without the training split: no file names to compare, but RAF-DB's `train`
    holds `validation` by its builder's rule (the report said nothing)."""
    workdirs = []
    for name, (quality, seed) in QUALITY_SEED.items():
        outputs = make_outputs(quality, seed)
        del outputs["train_fit"]
        workdirs.append(write_export(str(tmp_path / name), name, outputs, train_split="train"))
    report = evaluator.fuse(fusion_config(workdirs, tmp_path / "out", ablation=False,
                                          strategies="performance_weighted", bootstrap_samples=0))
    assert report["training_leaks"] == [
        f"member {name} was trained on train, which holds the validation images"
        for name in QUALITY_SEED]


def test_a_folder_datasets_splits_numbered_alike_are_not_taken_for_shared_images(tmp_path,
                                                                                 caplog):
    """A `folder` dataset names an example `<class>/<file>` inside its split's folder, and many
    exports number each split's files from 0 (Kaggle's FER-2013: train/angry/im0.png and
    test/angry/im0.png): the report said the members were trained on validation's images and
    feature_mlp was fitted on the 32 train_fit examples whose names validation lacks."""
    workdirs = []
    for name, (quality, seed) in QUALITY_SEED.items():
        outputs = make_outputs(quality, seed)
        for split, arrays in outputs.items():  # "validation_0003.jpg" -> "class/0003.jpg"
            arrays["file_names"] = np.char.replace(arrays["file_names"], f"{split}_", "class/")
        workdirs.append(write_export(str(tmp_path / name), name, outputs, dataset="folder"))
    caplog.set_level("WARNING")
    report = evaluator.fuse(fusion_config(workdirs, tmp_path / "out", ablation=False,
                                          bootstrap_samples=0))
    assert report["training_leaks"] == []
    assert "feature_mlp is fitted on the" not in caplog.text  # on all 80 train_fit examples
    assert "WARNING: the members' training saw" not in (tmp_path / "out" / "report.md").read_text()


def test_feature_mlp_fitted_on_another_split_never_sees_the_reported_ones(tmp_path, caplog):
    """Members trained on train_fit; the MLP asked to fit on `train` (which holds validation)
    is fitted on train_fit's images only, and no member is flagged: what they were trained on
    is held out."""
    workdirs = [write_export(str(tmp_path / name), name, _outputs_with_train(quality, seed))
                for name, (quality, seed) in QUALITY_SEED.items()]
    config = fusion_config(workdirs, tmp_path / "out", ablation=False, train_split="train",
                           strategies="feature_mlp")
    report = evaluator.fuse(config)
    assert report["training_leaks"] == []
    assert ("feature_mlp is fitted on the 80 of the 128 train examples that are in no reported "
            "split (validation, test).") in caplog.text
    # The same fit as on train_fit itself: the validation rows took no part.
    on_train_fit = evaluator.fuse(fusion_config(workdirs, tmp_path / "out2", ablation=False,
                                                train_split="train_fit",
                                                strategies="feature_mlp"))
    assert report["strategies"] == on_train_fit["strategies"]


@pytest.mark.parametrize("split", ["validation", "test"])
def test_feature_mlp_is_never_fitted_on_a_reported_split(three_members, tmp_path, split):
    """Before: fitted on it, then chosen and scored on it (test macro F1 1.0), with no word."""
    config = fusion_config(three_members, tmp_path / "out", train_split=split)
    with pytest.raises(evaluator.FusionConfigError) as e:
        evaluator.fuse(config)
    assert str(e.value) == (
        f"config key train_split={split!r} (empty: the members' own) is a reported split "
        "(config key eval_splits=['validation', 'test']): feature_mlp would be fitted on the "
        "examples it is chosen and scored on. Give it the members' training split (e.g. "
        "train_fit), or drop feature_mlp from config key strategies.")
    assert not (tmp_path / "out").exists()


def test_members_trained_on_different_splits_fuse_without_feature_mlp(tmp_path):
    """Only feature_mlp needs one training split. Before: every fusion was refused ("Members were
    trained on different splits ... choose the split feature_mlp trains on") even when
    feature_mlp was not asked for."""
    a = write_export(str(tmp_path / "a"), "vit", make_outputs(2.5, 1), train_split="train_fit")
    b = write_export(str(tmp_path / "b"), "manet", make_outputs(2.0, 2), train_split="train")
    report = evaluator.fuse(fusion_config(
        [a, b], tmp_path / "out", strategies="performance_weighted,stacking", ablation=False))
    assert [m["name"] for m in report["members"]] == ["vit", "manet"]
    assert set(report["strategies"]) == {"performance_weighted", "stacking"}
    with pytest.raises(members_lib.MemberError, match="trained on different splits"):
        evaluator.fuse(fusion_config([a, b], tmp_path / "out2", strategies="feature_mlp"))


def test_the_report_says_how_many_folds_chose_the_best(tmp_path):
    """Stratified folds are fewer than selection_folds when a class of the selection split has
    fewer examples. Before: the report said "k-fold" and the README "5 folds", whatever ran."""
    outputs = make_outputs(2.0, 1)
    labels = outputs["validation"]["labels"]
    rare = np.flatnonzero(labels == 3)
    labels[rare[3:]] = 0  # class 3 keeps 3 validation examples
    a = write_export(str(tmp_path / "a"), "vit", outputs)
    report = evaluator.fuse(fusion_config([a], tmp_path / "out", ablation=False,
                                          strategies="uniform_logits"))
    assert report["selection_cv_folds"] == 3
    assert "on validation (3-fold cross-validation)" in (tmp_path / "out" / "report.md").read_text()
    report = evaluator.fuse(fusion_config([a], tmp_path / "out", ablation=False,
                                          strategies="uniform_logits", selection_folds=2))
    assert report["selection_cv_folds"] == 2


def test_a_one_example_selection_split_is_one_line(tmp_path):
    """Cross-validation needs two examples: one used to end in sklearn's KFold ValueError."""
    outputs = make_outputs(2.0, 1)
    outputs["validation"] = {k: v[:1] for k, v in outputs["validation"].items()}
    a = write_export(str(tmp_path / "a"), "vit", outputs)
    with pytest.raises(evaluator.FusionConfigError) as e:
        evaluator.fuse(fusion_config([a], tmp_path / "out", strategies="uniform_logits"))
    assert str(e.value) == (
        "The validation split (config key select_on) holds 1 example: fusion chooses its "
        "strategy by cross-validation on it, which needs at least 2; give the members a larger "
        "validation split, or choose on another (--select_on).")


@pytest.mark.parametrize(("damaged", "damage"), [
    ("export.json", "cut short"), ("test.npz", "cut short"), ("test.npz", "removed"),
    ("test.npz", "without labels"), ("test.npz", "with fewer logits"),
    ("test.npz", "with a label outside the classes"), ("test.npz", "with 1-D features")])
def test_a_cut_short_or_incomplete_export_is_one_line_naming_the_fix(tmp_path, damaged, damage):
    """An export copied from another machine and cut short, or short of a file or an array, or
    whose arrays disagree (written by hand or another tool). Before: JSONDecodeError /
    BadZipFile / IndexError tracebacks; a missing file or array said only 're-export.'; a label
    outside the class names was counted wrong but left out of the confusion matrix."""
    a = write_export(str(tmp_path / "a"), "vit", make_outputs(2.0, 1))
    file = tmp_path / "a" / "export" / damaged
    if damage == "cut short":
        file.write_bytes(file.read_bytes()[:40])
    elif damage == "removed":
        file.unlink()
    else:
        with np.load(file) as data:
            arrays = {key: data[key] for key in data}
        kept = {key: value for key, value in arrays.items() if key != "labels"}
        if damage == "with fewer logits":
            kept = {**arrays, "logits": arrays["logits"][:-3]}
        elif damage == "with 1-D features":
            kept = {**arrays, "features": arrays["features"][:, 0]}
        elif damage == "with a label outside the classes":
            kept = {**arrays, "labels": np.where(np.arange(len(arrays["labels"])) == 5,
                                                 len(CLASSES), arrays["labels"])}
        with open(file, "wb") as f:
            np.savez(f, **kept)
    with pytest.raises(ValueError) as e:
        evaluator.fuse(fusion_config([a], tmp_path / "out"))
    assert type(e.value).__name__ == "ExportError"
    assert str(e.value).startswith(f"{file} ")
    assert str(e.value).endswith(
        ": copy the export again, or re-export it from the best checkpoint (python -m "
        f"cer_jax.fuse --config.reexport=True, or cer_jax.export.export_workdir({a!r})).")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("damage", ["export.json cut short", "split cut short", "split removed"])
def test_a_damaged_export_beside_a_best_checkpoint_is_written_anew(tmp_path, monkeypatch, damage):
    """Before: a cut-short export.json stopped fusion with a JSONDecodeError traceback, and a
    split file cut short or missing (an export copied with its workdir: export.json copies
    before test.npz) was refused with 're-export with --config.reexport=True', which re-exports
    every member, although the member's best checkpoint could write it again at once."""
    from cer_jax import export

    outputs = make_outputs(2.0, 1)
    a = write_export(str(tmp_path / "a"), "vit", outputs)
    folder = tmp_path / "a" / "export"
    if damage == "export.json cut short":
        (folder / "export.json").write_text('{"format": 2, "memb')
    else:  # export.json intact: the export looks current
        monkeypatch.setattr(export, "export_is_current", lambda workdir: True)
        if damage == "split cut short":
            (folder / "test.npz").write_bytes((folder / "test.npz").read_bytes()[:40])
        else:
            (folder / "test.npz").unlink()
    exported = []

    def export_workdir(workdir, splits=None):  # the best checkpoint's export, as the trainer's
        exported.append(workdir)
        os.rename(os.path.join(workdir, "export"), str(tmp_path / "damaged"))
        write_export(workdir, "vit", outputs)

    monkeypatch.setattr(members_lib.checkpointing, "holds_best_checkpoint", lambda workdir: True)
    monkeypatch.setattr(export, "export_workdir", export_workdir)
    (member,) = members_lib.load_members([a], ["validation", "test"])
    assert exported == [a]
    assert sorted(member.outputs["test"]["file_names"]) == sorted(outputs["test"]["file_names"])


def test_a_member_whose_data_are_not_where_its_config_says_names_that_config(tmp_path,
                                                                            monkeypatch):
    """Fusion on another machine than the training's, re-exporting a member (a stale export, a
    missing split): the data error named config.dataset.manual_dir, a key fusion's config lacks,
    and not the member's config.json where it is set."""
    from cer_jax import export
    from cer_jax.config_loading import load_config

    workdir = tmp_path / "vit"
    workdir.mkdir()
    config = load_config("configs/vit.py:smoke")
    config.dataset.synthetic = False
    config.dataset.manual_dir = str(tmp_path / "rafdb_on_the_training_machine")
    monkeypatch.setattr(export.checkpointing, "restore_best_state",
                        lambda workdir, mesh: (None, 7, None, config))
    with pytest.raises(export.ExportError) as error:
        export.export_workdir(str(workdir))
    message = str(error.value)
    assert message.startswith(f"Exporting the best checkpoint of {workdir} reads its dataset as "
                              "its training config says, which failed: config.dataset.manual_dir=")
    assert message.endswith(f"That key is in {workdir / 'config.json'}: set it there (e.g. to "
                            "where the data lie on this machine).")
    assert "\n" not in message


def test_a_member_whose_data_now_have_other_classes_is_not_exported(tmp_path, monkeypatch):
    """Re-exported (stale, or on another machine) from an image folder whose classes changed
    since its training (renamed, replaced: here `b` became `c`). Before: its logits were written
    under the folder's new class names and scored against its new labels without a word."""
    import ml_collections

    from cer_jax import export
    from cer_jax.config_loading import load_config

    for split in ("train_fit", "validation", "test"):
        for name in ("a", "c"):
            (tmp_path / "faces" / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "faces" / split / name / "0.png")
    workdir = tmp_path / "vit"
    workdir.mkdir()
    config = load_config("configs/vit.py:smoke")
    config.dataset.update(name="folder", folder=str(tmp_path / "faces"), synthetic=False)
    config.dataset_info = ml_collections.ConfigDict({"class_names": ["a", "b"]})
    monkeypatch.setattr(export.checkpointing, "restore_best_state",
                        lambda workdir, mesh: (None, 7, None, config))
    with pytest.raises(export.ExportError) as error:
        export.export_workdir(str(workdir))
    assert str(error.value) == (
        f"The best checkpoint of {workdir} was trained on the classes ['a', 'b'], but its "
        f"dataset as {workdir / 'config.json'} says now has ['a', 'c']: its outputs would be "
        "named after the wrong classes. Point that file's dataset keys at the data it was "
        "trained on.")
    assert not (workdir / "export").exists()


def _member_with_config(workdir, best_split, train_split):
    (workdir / "config.json").write_text(json.dumps({
        "checkpoint": {"best_split": best_split},
        "dataset": {"train_split": train_split},
        "dataset_info": {"split_sizes": dict.fromkeys(SIZES, 1)},
    }))
    return members_lib.Member("vit", str(workdir), {}, make_outputs(2.0, 1))


def test_a_member_that_chose_its_checkpoint_on_test_is_reported_as_not_held_out(tmp_path):
    member = _member_with_config(tmp_path, "test", "train_fit")
    assert evaluator.training_leaks([member], "validation", ["validation", "test"]) == [
        "member vit chose its best checkpoint on test (checkpoint.best_split)"]
    assert evaluator.training_leaks([member], "test", ["validation", "test"]) == []


def test_a_member_trained_on_a_reported_split_is_reported_as_not_held_out(tmp_path):
    member = _member_with_config(tmp_path, "validation", "validation")
    assert evaluator.training_leaks([member], "validation", ["validation", "test"]) == [
        "member vit was trained on validation, a reported split"]


def test_a_member_that_stopped_before_its_last_step_is_reported_as_unfinished(tmp_path):
    """A halted or preempted member still fuses, but the log and the report say so."""
    from cer_jax.fusion import report as report_lib

    (tmp_path / "config.json").write_text(json.dumps({"dataset_info": {"total_steps": 6}}))
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    (tmp_path / "checkpoints" / "2").mkdir()
    member = members_lib.Member("vit", str(tmp_path), {}, make_outputs(2.0, 1))
    note = (f"member vit stopped at step 3 of 6 (halted or preempted); run python -m "
            f"cer_jax.train on {tmp_path} again to finish it")
    assert evaluator.unfinished_members([member]) == [note]
    assert report_lib.selection_note({
        "select_on": "validation", "eval_splits": ["validation", "test"],
        "unfinished_members": [note]}).endswith(
        f"**WARNING: not every member finished its training: {note}.**")
    (tmp_path / "checkpoints" / "6").mkdir()
    assert evaluator.unfinished_members([member]) == []


def test_an_earlier_ensemble_that_the_new_fusion_cannot_replace_is_removed(three_members,
                                                                           tmp_path, caplog):
    """Export-only members have no best checkpoint, so no artefact: an old one next to the new
    report would make predict disagree with it."""
    stale = tmp_path / "out" / evaluator.ENSEMBLE_DIR
    stale.mkdir(parents=True)
    (stale / "ensemble.json").write_text('{"strategy": {"name": "an earlier run"}}')
    evaluator.fuse(fusion_config(three_members, tmp_path / "out", ablation=False))
    assert (tmp_path / "out" / "report.json").exists()
    assert not stale.exists()
    assert "No ensemble artefact written: member vit has no restorable best checkpoint" \
        in caplog.text


def test_a_fusion_stopped_after_its_report_leaves_no_earlier_ensemble_beside_it(
        three_members, tmp_path, monkeypatch):
    """A rerun into an earlier --out writes its report, then restores the members' checkpoints
    for the artefact (minutes): killed there (preempted, out of memory, Ctrl-C), the earlier
    fusion's artefact stayed beside the new report, and predict used the old members under
    the new report's numbers."""
    out = tmp_path / "out"
    stale = out / evaluator.ENSEMBLE_DIR
    stale.mkdir(parents=True)
    (stale / "ensemble.json").write_text('{"strategy": {"name": "an earlier run"}}')
    (out / "report.json").write_text('{"members": []}')

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a SIGKILL: nothing after it runs

    monkeypatch.setattr(evaluator.ensemble_lib, "write_from_fusion", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluator.fuse(fusion_config(three_members, out, ablation=False, bootstrap_samples=0))
    assert len(json.loads((out / "report.json").read_text())["members"]) == 3  # the new one
    assert not stale.exists()


@pytest.mark.xdist_group("smoke_data")  # the same worker as the other trained_runs users
def test_fuses_the_trainers_smoke_workdirs(trained_runs, tmp_path):
    """End to end on the trainer's own exported workdirs (the session's smoke runs)."""
    from cer_jax import export

    workdirs = [str(trained_runs[name][0]) for name in ("vit", "manet", "resnet50")]
    steps = [export.load_export(w)[0]["step"] for w in workdirs]
    config = fusion_config(workdirs, tmp_path / "fusion", ablation=False, selection_folds=3)
    config.stacking.update(inverse_regularisation=(0.1, 1.0, 10.0), max_folds=3)
    report = evaluator.fuse(config)
    assert [m["step"] for m in report["members"]] == steps  # current exports were reused
    for member, workdir in zip(report["members"], workdirs, strict=True):
        _, outputs = export.load_export(workdir)
        for split in ("validation", "test"):
            accuracy, f1 = sklearn_scores(outputs, split)  # from the exported rows, not the report
            assert member["metrics"][split]["accuracy"] == pytest.approx(accuracy)
            assert member["metrics"][split]["macro_f1"] == pytest.approx(f1)
            assert member["metrics"][split]["num_examples"] == len(outputs[split]["labels"])
    num_classes = len(report["class_names"])
    for name, row in report["strategies"].items():
        confusion = np.asarray(row["metrics"]["test"]["confusion_matrix"])
        assert confusion.shape == (num_classes, num_classes), name
        assert confusion.sum() == report["members"][0]["metrics"]["test"]["num_examples"]
    assert (tmp_path / "fusion" / "report.md").exists()
    # The ensemble artefact holds the checkpoints of the steps the fusion was fitted on.
    artefact = json.loads((tmp_path / "fusion" / evaluator.ENSEMBLE_DIR / "ensemble.json")
                          .read_text())
    assert artefact["steps"] == steps


def test_the_leak_warning_is_kept_when_choosing_on_test():
    from cer_jax.fusion import report as report_lib

    note = report_lib.selection_note({"select_on": "test", "eval_splits": ["validation", "test"],
                                      "training_leaks": ["member vit was trained on train"]})
    assert note.startswith("**WARNING: fusion weights and hyper-parameters were chosen on the "
                           "test split")
    assert note.endswith("**WARNING: the members' training saw what fusion treats as unseen: "
                         "member vit was trained on train. Those splits' numbers are "
                         "optimistic.**")


def test_a_member_given_twice_is_refused_before_any_work(tmp_path):
    """Before: fused as vit#0 and vit#1, doubling the member's weight."""
    a = write_export(str(tmp_path / "a"), "vit", make_outputs(2.0, seed=1))
    b = write_export(str(tmp_path / "b"), "resnet", make_outputs(2.0, seed=2))
    os.symlink(a, tmp_path / "link")
    for again, same in ((a, ""), (os.path.join(tmp_path, ".", "a", ""), f" (as {a})"),
                        (str(tmp_path / "link"), f" (as {a})")):
        with pytest.raises(evaluator.FusionConfigError) as e:
            evaluator.fuse(fusion_config([a, b, again], tmp_path / "out"))
        assert str(e.value) == (
            f"Member workdir {again} is given twice in --workdirs{same} (config key workdirs): "
            "fusing it twice would double its weight; list each member once.")
    assert not (tmp_path / "out").exists()


def test_a_copied_member_is_reported_as_counting_double(three_members, tmp_path):
    """A copy of a member's workdir is another folder, so not 'given twice'. Before: fused as
    resnet:resnet and resnet:copy without a word, the one model weighted double in every fusion."""
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(three_members[2], copy)
    out = tmp_path / "out"
    report = evaluator.fuse(fusion_config([*three_members, copy], out, ablation=False,
                                          bootstrap_samples=0, strategies="uniform_logits"))
    note = ("members resnet:resnet and resnet:copy have the same logits on every example: one "
            "model given twice (a copied workdir?) counts double; list it once")
    assert report["identical_members"] == [note]
    assert f"**WARNING: {note}.**" in (out / "report.md").read_text()
    assert evaluator.fuse(fusion_config(three_members, tmp_path / "three", ablation=False,
                                        bootstrap_samples=0, strategies="uniform_logits"),
                          )["identical_members"] == []


def test_a_member_workdir_that_is_a_file_is_named_so(tmp_path):
    """Before: "does not exist" for a file that exists (a report or a log passed by mistake)."""
    a = write_export(str(tmp_path / "a"), "vit", make_outputs(2.0, seed=1))
    log = tmp_path / "train.log"
    log.write_text("mine")
    with pytest.raises(members_lib.MemberError) as e:
        evaluator.fuse(fusion_config([a, str(log)], tmp_path / "out"))
    assert str(e.value) == (
        f"Member workdir {log} is a file, not a folder (flag --workdirs / config key workdirs); "
        "pass the directories that `python -m cer_jax.train` wrote.")
    assert log.read_text() == "mine" and not (tmp_path / "out").exists()


def test_a_report_into_a_member_workdir_is_refused(tmp_path):
    """Before: the report went into the member's workdir, replacing its TensorBoard events."""
    a = write_export(str(tmp_path / "a"), "vit", make_outputs(2.0, seed=1))
    b = write_export(str(tmp_path / "b"), "resnet", make_outputs(2.0, seed=2))
    events = tmp_path / "b" / "events.out.tfevents.1.host"
    events.write_bytes(b"training curves")
    with pytest.raises(evaluator.FusionConfigError) as e:
        evaluator.fuse(fusion_config([a, b], str(tmp_path / "b") + "/"))
    assert str(e.value) == (
        f"--out={tmp_path / 'b'}/ (config key out) is the member workdir {b}: the report would "
        "replace that member's TensorBoard events; give it a folder of its own, e.g. "
        "--out=runs/fusion.")
    assert sorted(os.listdir(b)) == ["events.out.tfevents.1.host", "export"]
    assert events.read_bytes() == b"training curves"


@pytest.mark.parametrize("below", ["", "fusion"])
def test_a_report_folder_that_is_a_file_is_refused_before_any_work(tmp_path, below):
    """Before: FileExistsError / NotADirectoryError after every strategy had been fitted."""
    file = tmp_path / "report"
    file.write_text("mine")
    out = file / below if below else file
    with pytest.raises(evaluator.FusionConfigError) as e:
        evaluator.fuse(fusion_config([str(tmp_path / "not_read")], out))
    assert str(e.value) == (f"--out={out} (config key out): {file} is a file, not a folder; "
                            "give the report a folder, e.g. --out=runs/fusion.")
    assert file.read_text() == "mine"


@pytest.mark.parametrize(("flags", "message"), [
    (["--config=configs/vit.py"],
     "error: --config is not a fusion config (it has no key ablation, bootstrap_confidence, "
     "bootstrap_samples, bootstrap_seed, eval_splits, reexport, select_on, selection_folds, "
     "strategies, train_split); use --config=configs/fusion.py (a training config such as "
     "configs/vit.py goes to python -m cer_jax.train)."),
    (["--out={tmp}/report.md"],
     "error: --out={tmp}/report.md (config key out): {tmp}/report.md is a file, not a folder; "
     "give the report a folder, e.g. --out=runs/fusion."),
    (["--config.bootstrap_samples=-1"],
     "error: config key bootstrap_samples=-1 must be a whole number >= 0 (resamples of each "
     "split for the confidence intervals; 0 = point figures only)."),
    (["--config.strategy=stacking"],
     "error: --config.strategy=stacking: the config has no key 'strategy'. Did you mean "
     "\"strategies\" instead of \"strategy\"?"),
    (["--config=configs/fusion.py", "--config.selection_fold=3"],
     "error: --config.selection_fold=3: the config has no key 'selection_fold'. Did you mean "
     "\"selection_folds\" instead of \"selection_fold\"?"),
    (["--config.selection_folds=five"],
     "error: --config.selection_folds=five: selection_folds takes a whole number (the config "
     "has 5), not 'five'."),
], ids=["training_config", "out_on_a_file", "negative_bootstrap_samples", "misspelt_key",
        "misspelt_key_with_config", "wrong_type"])
def test_command_line_refusals_are_one_line(tmp_path, flags, message):
    """Before: AttributeError 'select_on' (a training config); FileExistsError after the work
    (--out on a file); a misspelt key's AttributeError traceback from the import of
    cer_jax.fuse (ml_collections applies overrides when it defines a flag with a default)."""
    (tmp_path / "report.md").write_text("mine")
    command = [sys.executable, "-m", "cer_jax.fuse", f"--workdirs={tmp_path / 'a'}",
               f"--out={tmp_path / 'fusion'}", *(f.format(tmp=tmp_path) for f in flags)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stderr) == (2, message.format(tmp=tmp_path) + "\n")
    assert (tmp_path / "report.md").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["report.md"]


def test_an_argument_to_the_fusion_config_is_one_line(tmp_path):
    """configs/fusion.py has no variants: `:x` was a TypeError traceback from get_config."""
    out = subprocess.run(
        [sys.executable, "-m", "cer_jax.fuse", "--config=configs/fusion.py:x",
         f"--workdirs={tmp_path / 'a'}", f"--out={tmp_path / 'o'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stderr.strip().splitlines()[-1]) == (
        2, "error: Unknown config argument 'x' for configs/fusion.py: it takes none (use "
           "--config=configs/fusion.py and --config.KEY=VALUE overrides).")
    assert "Traceback" not in out.stderr and not (tmp_path / "o").exists()
