"""Every read and write of a workdir, export, fusion output and pre-trained file goes through
etils epath (or a library that takes epath / gs:// paths itself: Orbax, TensorFlow, CLU).

A gs:// workdir cannot be served here without network (Orbax writes through TensorStore's GCS
driver, TensorBoard events through TensorFlow's C++ filesystem), so this test proves the
property directly instead: a Python audit hook (PEP 578) sees every file operation (`open`,
`os.mkdir`, `os.rename`, `os.listdir`, ...; `os.stat` is wrapped, as it raises no event), and
each one on a watched folder is traced back up the stack. The first frame that belongs either
to this project or to a path-abstraction library decides: a project frame means project code
called the operating system (or numpy / matplotlib with a path string) on the folder, which
would write a local folder named "gs:" for a gs:// workdir.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import weight_files
from conftest import smoke_config
from etils import epath

from cer_jax import export, train_state, trainer
from cer_jax.fusion import evaluator

# Libraries that take remote paths themselves (etils epath, Orbax, TensorFlow's gfile and
# summaries, CLU's writers, TensorStore, TFDS).
PATH_LIBRARIES = ("etils", "orbax", "tensorflow", "clu", "tensorstore", "tensorflow_datasets")
EVENTS = {"open", "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.listdir", "os.scandir",
          "shutil.rmtree", "os.chmod", "os.utime", "os.truncate", "os.symlink", "os.link"}


class FileCallWatch:
    """Records file operations on `roots` that project code made without a path library."""

    def __init__(self, project: tuple[str, ...]) -> None:
        self.project = project
        self.roots: tuple[str, ...] = ()
        self.bypasses: list[str] = []

    def _watched(self, path) -> bool:
        if isinstance(path, int) or path is None:
            return False
        try:
            text = os.fsdecode(path)
        except TypeError:
            return False
        return bool(self.roots) and os.path.abspath(text).startswith(self.roots)

    def check(self, event: str, path) -> None:
        if not self._watched(path):
            return
        frame = sys._getframe(2)
        while frame is not None:
            module = frame.f_globals.get("__name__", "")
            top = module.split(".")[0]
            if top in PATH_LIBRARIES:
                return
            if top in self.project:
                self.bypasses.append(
                    f"{event} {os.fsdecode(path)} from {module}:{frame.f_lineno}")
                return
            frame = frame.f_back

    def audit(self, event: str, args: tuple) -> None:
        if self.roots and event in EVENTS and args:
            self.check(event, args[0])


WATCH = FileCallWatch(project=("cer_jax", "tfds_rafdb", __name__))
sys.addaudithook(WATCH.audit)  # Hooks cannot be removed: it is idle while WATCH.roots is empty.


@pytest.fixture
def watch(monkeypatch):
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        WATCH.check("os.stat", path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    WATCH.bypasses = []
    yield WATCH
    WATCH.roots = ()


def test_the_watch_sees_a_bypass_and_allows_epath(tmp_path, watch):
    watch.roots = (str(tmp_path),)
    epath.Path(tmp_path / "via_epath.txt").write_text("fine")
    assert epath.Path(tmp_path / "via_epath.txt").exists()
    assert watch.bypasses == []
    with open(tmp_path / "direct.txt", "w") as f:
        f.write("bypass")
    os.path.isdir(tmp_path / "sub")
    np.save(str(tmp_path / "array.npy"), np.zeros(2))
    assert [b.split()[0] for b in watch.bypasses] == ["open", "os.stat", "open"]


def test_train_export_and_fuse_touch_their_folders_only_through_epath(
    tmp_path, synthetic_cache_dir, watch
):
    vit_config = smoke_config("vit", synthetic_cache_dir, **{"model.variant": "test/8"})
    source = train_state.create_model(vit_config, 7, seed=3)
    weights = weight_files.VIT_FORMATS["big_vision_npz"](source, tmp_path / "weights")
    runs, out = tmp_path / "runs", tmp_path / "fusion"
    watch.roots = tuple(str(p) for p in (runs, out, Path(weights).parent))
    size = {"input.image_size": 32, "input.resize_size": 36, "training.num_steps": 4,
            "training.eval_every_steps": 2, "training.global_batch_size": 8,
            "eval.global_batch_size": 32, "dataset.synthetic_num_train_images": 120,
            "dataset.synthetic_num_test_images": 40}
    members = []
    for name, overrides in (
        ("vit", {"model.variant": "test/8", "init.checkpoint": str(weights)}),
        ("resnet50", {"model.width": 8}),
    ):
        config = smoke_config(name, synthetic_cache_dir, **size, **overrides)
        workdir = runs / name
        result = trainer.train_and_evaluate(config, str(workdir))
        assert result["stopped"] is None
        members.append(str(workdir))
    export.export_workdir(members[0])
    config = evaluator.resolve_config(evaluator.load_default_config(), workdirs=members,
                                      out=str(out))
    config.feature_mlp.max_epochs = 5
    evaluator.fuse(config)
    watch.roots = ()
    assert watch.bypasses == []
    assert (out / "report.json").exists() and (out / evaluator.ENSEMBLE_DIR).is_dir()
