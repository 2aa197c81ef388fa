"""A workdir in a bucket (gs://...), with what a bucket does differently from a local folder.

The `bucket` fixture serves gs://test-bucket/ from a local folder through epath, moving a folder
object by object as GCS does (no folder rename at once). Orbax cannot be run there (it writes
arrays through TensorStore's GCS driver), so the layout it leaves on gs:// is written by hand:
there it saves a step straight into the step's folder and commits it last with a
commit_success.txt, so a save cut short (a preempted VM) leaves a step folder without one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import BUCKET, Killed
from test_ensemble import ABAW7, build_tiny_ensemble

from cer_jax import checkpointing, export
from cer_jax import ensemble as ensemble_lib
from cer_jax.fusion import evaluator
from cer_jax.fusion import members as members_lib


def _step(folder, step: int, committed: bool) -> None:
    (folder / str(step)).mkdir(parents=True)
    (folder / str(step) / "_CHECKPOINT_METADATA").write_text("{}")
    if committed:
        (folder / str(step) / "commit_success.txt").write_text("Checkpoint commit was successful")


def test_a_save_cut_short_on_gs_is_not_a_checkpoint(bucket):
    """Resume, check_same_run and fusion's note agree with Orbax: step 9 was never committed."""
    run = bucket.root / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"dataset_info": {"total_steps": 9}}))
    _step(run / "checkpoints", 5, committed=True)
    _step(run / "checkpoints", 9, committed=False)
    workdir = f"{BUCKET}/run"
    assert checkpointing.latest_saved_step(workdir) == 5
    member = members_lib.Member("vit", workdir, {}, {})
    assert evaluator.unfinished_members([member]) == [
        f"member vit stopped at step 5 of 9 (halted or preempted); run python -m cer_jax.train "
        f"on {workdir} again to finish it"]

    only_cut_short = bucket.root / "fresh"
    _step(only_cut_short / "checkpoints", 3, committed=False)
    _step(only_cut_short / "best", 3, committed=False)
    assert not checkpointing.holds_checkpoints(f"{BUCKET}/fresh")
    assert checkpointing.latest_saved_step(f"{BUCKET}/fresh") is None
    _step(only_cut_short / "best", 2, committed=True)
    assert checkpointing.holds_checkpoints(f"{BUCKET}/fresh")


def _export(seed: int, n: int = 4) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    arrays = {"validation": {
        "logits": rng.normal(size=(n, 3)).astype(np.float32),
        "features": rng.normal(size=(n, 2)).astype(np.float32),
        "labels": rng.integers(0, 3, size=n).astype(np.int32),
        "file_names": np.array([f"{seed}_{i}.jpg" for i in range(n)]),
    }}
    manifest = {"format": export.FORMAT, "member": "vit", "step": seed,
                "splits": {"validation": "validation.npz"}, "metrics": {}}
    return manifest, arrays


@pytest.mark.parametrize("remote", [False, True], ids=["local", "gs"])
def test_two_exports_of_one_workdir_at_once_both_finish_whole(tmp_path, bucket, monkeypatch,
                                                              remote):
    """The trainer's export at the end of training and a fusion re-exporting the same workdir
    meanwhile: each writes its own temporary folder, and the export left is one of the two,
    whole (they used to share .export.tmp, the second emptying the first's)."""
    root = bucket.root if remote else tmp_path
    (root / "run").mkdir()
    workdir = f"{BUCKET}/run" if remote else str(root / "run")
    first, second = _export(1), _export(2)
    real_savez = np.savez
    calls = []

    def savez(buffer, **arrays):
        calls.append(1)
        if len(calls) == 1:  # the other writer runs from start to end in the middle of this one
            export._write_atomically(export.export_dir(workdir), *second)
        return real_savez(buffer, **arrays)

    monkeypatch.setattr(export.np, "savez", savez)
    export._write_atomically(export.export_dir(workdir), *first)
    manifest, arrays = export.load_export(workdir)
    assert manifest["step"] == 1  # the last one to finish
    np.testing.assert_array_equal(arrays["validation"]["logits"], first[1]["validation"]["logits"])
    assert sorted(p.name for p in (root / "run").iterdir()) == ["export"]


def _killed_mid_move(bucket, killed_after: int, write, *args) -> bool:
    """`write(*args)` (a replacement of a folder in the bucket) killed after `killed_after`
    objects moved; False when it finished first."""
    bucket.killed_after = killed_after
    try:
        write(*args)
    except Killed:
        return True
    finally:
        bucket.killed_after = None
    return False


def test_an_export_replaced_on_gs_is_whole_or_refused_wherever_a_kill_cuts_its_move(bucket):
    """On gs:// the old export moves aside and the new one in object by object. Killed midway,
    the export read after held the new export.json (first in name order) beside some of its
    splits: taken for current, then 'validation.npz is missing'. A folder with export.json is
    now whole, and one without it is no export (a fusion writes it again)."""
    two_splits = [
        {**manifest, "splits": {"test": "test.npz", "validation": "validation.npz"}}
        for manifest, _ in (_export(1), _export(2))]
    arrays = [{"test": a["validation"], **a} for _, a in (_export(1), _export(2))]
    killed_after = 0
    while True:
        workdir = f"{BUCKET}/run{killed_after}"
        export._write_atomically(export.export_dir(workdir), two_splits[0], arrays[0])
        if not _killed_mid_move(bucket, killed_after, export._write_atomically,
                                export.export_dir(workdir), two_splits[1], arrays[1]):
            break
        if export.read_manifest(workdir) is None:
            with pytest.raises(export.ExportError, match="export.json not found: .* no export"):
                export.load_export(workdir)
        else:
            manifest, loaded = export.load_export(workdir)
            expected = arrays[manifest["step"] - 1]
            for split in ("test", "validation"):
                np.testing.assert_array_equal(loaded[split]["logits"], expected[split]["logits"])
        killed_after += 1
    assert killed_after >= 4  # both moves were cut at every object
    assert export.load_export(workdir)[0]["step"] == 2


def test_an_ensemble_replaced_on_gs_is_whole_or_refused_wherever_a_kill_cuts_its_move(bucket):
    """As the export: ensemble.json (first in name order) was moved in before the members."""
    _, members, fitted = build_tiny_ensemble(f"{BUCKET}/first")
    killed_after = 0
    while True:
        out = f"{BUCKET}/ens{killed_after}"
        ensemble_lib.write_ensemble(out, members, fitted, ABAW7)
        if not _killed_mid_move(bucket, killed_after, ensemble_lib.write_ensemble,
                                out, members[::-1], fitted, ABAW7):
            break
        try:
            loaded = ensemble_lib.load_ensemble(out)
        except ensemble_lib.EnsembleError as e:
            assert str(e).startswith(f"{out}/{ensemble_lib.ENSEMBLE_FILE} not found: ")
        else:
            names = [name for name, *_ in members]
            assert [m.name for m in loaded.members] in (names, names[::-1])
        killed_after += 1
    assert killed_after >= 4
