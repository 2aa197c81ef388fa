"""The main job end to end (data -> three trained members -> fusion), with tiny step counts.

The same code path as `python -m cer_jax.demo`, only with 2 training steps per model and a small
synthetic tree; it doubles as the fusion job's end-to-end test on real trainer workdirs.
"""

import contextlib
import io
import json
import os

import pytest

from cer_jax import demo, export, fusion

MODELS = ("vit", "manet", "resnet50")
STEPS_SCALE = 0.005  # 2 training steps per model


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("demo"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report = demo.run_demo(out, steps_scale=STEPS_SCALE, models=MODELS, num_images=(80, 30))
    return out, report, printed.getvalue()


def test_demo_trains_three_members_and_fuses_them(demo_run):
    out, report, printed = demo_run
    for stage in range(1, 6):
        assert f"=== [{stage}/5]" in printed
    for model in MODELS:
        steps = max(2, round(demo.TRAIN_STEPS[model] * STEPS_SCALE))
        assert f"Training {model} ({steps} steps) in {os.path.join(out, model)}" in printed
    assert f"fusion report: {os.path.join(out, 'fusion', 'report.md')}" in printed
    assert "| performance_weighted | fusion (paper)" in printed

    assert [m["model"] for m in report["members"]] == ["vit", "manet", "resnet"]
    assert len(report["class_names"]) == 11
    assert len(report["ablation"][fusion.strategies_lib.PAPER_STRATEGY]) == 7
    for member, model in zip(report["members"], MODELS, strict=True):
        workdir = os.path.join(out, model)
        assert export.export_is_current(workdir)
        info, _ = export.load_export(workdir)
        assert member["step"] == info["step"]
        for split in ("validation", "test"):  # the trainer's own scores of the same rows
            for key in ("accuracy", "macro_f1"):
                assert member["metrics"][split][key] == pytest.approx(info["metrics"][split][key])
    on_disk = json.loads(open(os.path.join(out, "fusion", "report.json")).read())
    assert on_disk["best_strategy"] == report["best_strategy"]


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

    config = fusion.resolve_config(
        fusion.load_default_config(), workdirs=[vit, resnet], out=str(tmp_path / "fusion")
    )
    config.strategies = "performance_weighted"
    again = fusion.fuse(config)
    assert export.export_is_current(vit) and export.export_is_current(resnet)
    first = {m["model"]: m for m in report["members"]}
    for member in again["members"]:
        assert member["step"] == first[member["model"]]["step"]
        assert member["metrics"]["test"]["accuracy"] == pytest.approx(
            first[member["model"]]["metrics"]["test"]["accuracy"]
        )
