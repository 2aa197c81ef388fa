"""Replacing a finished folder (an export, an ensemble): a stop signal cannot split the move."""

from __future__ import annotations

import json
import os
import signal

import ml_collections
import numpy as np
import pytest
from etils import epath
from test_ensemble import build_tiny_ensemble

from cer_jax import checkpointing, ensemble, export, paths
from cer_jax.bench import throughput


@pytest.fixture
def signal_after_first_rename(monkeypatch):
    """Sends `signum` to this process right after the first folder rename of a replacement:
    between setting the old folder aside and moving the new one in."""
    path_type = type(epath.Path("/"))
    rename = path_type.rename

    def arm(signum):
        def rename_then_signal(self, target):
            renamed = rename(self, target)
            monkeypatch.setattr(path_type, "rename", rename)  # once
            os.kill(os.getpid(), signum)
            return renamed

        monkeypatch.setattr(path_type, "rename", rename_then_signal)

    return arm


def _write_export(target, accuracy):
    arrays = {"test": {"logits": np.full((2, 3), accuracy, np.float32)}}
    export._write_atomically(target, {"metrics": {"test": {"accuracy": accuracy}}}, arrays)


def test_ctrl_c_during_the_move_comes_after_it(tmp_path, signal_after_first_rename):
    target = epath.Path(tmp_path / "export")
    _write_export(target, 0.5)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C
    try:
        signal_after_first_rename(signal.SIGINT)
        # pytest.raises(KeyboardInterrupt): a subclass would end the test session.
        with pytest.raises(KeyboardInterrupt):
            _write_export(target, 0.75)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert json.loads((target / export.EXPORT_FILE).read_text())["metrics"]["test"] == {
        "accuracy": 0.75}
    assert os.listdir(tmp_path) == ["export"]  # nothing set aside or half-moved


def test_a_stop_while_an_export_is_written_leaves_the_previous_one_and_nothing_aside(
        tmp_path, monkeypatch):
    target = epath.Path(tmp_path / "export")
    _write_export(target, 0.5)
    savez, calls = np.savez, []

    def stopped_after_the_first_split(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt  # Ctrl-C
        return savez(*args, **kwargs)

    monkeypatch.setattr(np, "savez", stopped_after_the_first_split)
    arrays = {split: {"logits": np.zeros((2, 3), np.float32)} for split in ("validation", "test")}
    with pytest.raises(KeyboardInterrupt):
        export._write_atomically(target, {"metrics": {}}, arrays)
    assert json.loads((target / export.EXPORT_FILE).read_text())["metrics"]["test"] == {
        "accuracy": 0.5}
    assert os.listdir(tmp_path) == ["export"]  # no hidden half export


def test_ctrl_c_while_an_ensemble_replaces_another_comes_after_it(tmp_path,
                                                                  signal_after_first_rename):
    build_tiny_ensemble(tmp_path / "ens", strategy="performance_weighted")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        signal_after_first_rename(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            build_tiny_ensemble(tmp_path / "ens", strategy="uniform_probabilities")
    finally:
        signal.signal(signal.SIGINT, previous)
    manifest = json.loads((tmp_path / "ens" / ensemble.ENSEMBLE_FILE).read_text())
    assert manifest["strategy"]["name"] == "uniform_probabilities"
    assert os.listdir(tmp_path) == ["ens"]


def test_sigterm_during_the_move_reaches_its_handler_after_it(tmp_path,
                                                              signal_after_first_rename):
    target = epath.Path(tmp_path / "export")
    _write_export(target, 0.5)
    seen = []

    def handler(*_):
        seen.append(sorted(os.listdir(tmp_path)))

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        signal_after_first_rename(signal.SIGTERM)
        _write_export(target, 0.75)
        assert signal.getsignal(signal.SIGTERM) is handler  # put back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [["export"]]  # once, when the move was whole


def test_an_ignored_signal_stays_ignored(tmp_path):
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job's
    try:
        (tmp_path / "new").mkdir()
        paths.replace_folder(epath.Path(tmp_path / "new"), epath.Path(tmp_path / "out"))
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert os.listdir(tmp_path) == ["out"]



def _config_json(folder: epath.Path, value: int) -> epath.Path:
    checkpointing.save_config(ml_collections.ConfigDict({"run": value}), str(folder))
    return folder / checkpointing.CONFIG_FILE


def _bench_json(folder: epath.Path, value: int) -> epath.Path:
    throughput.write_json(str(folder / "bench.json"), {"run": value})
    return folder / "bench.json"


@pytest.mark.parametrize("write", [_config_json, _bench_json])
def test_a_json_write_cut_short_keeps_the_earlier_file_whole_and_no_scratch(tmp_path,
                                                                           monkeypatch, write):
    """A workdir's config.json (rewritten by every run there) and the bench's --json (after
    every model): a write stopped midway (Ctrl-C) leaves the earlier whole file, never half a
    JSON, and no scratch file beside it (config.json.tmp was left behind)."""
    folder = epath.Path(tmp_path)
    target = write(folder, 1)
    path_type = type(folder)
    write_text = path_type.write_text

    def cut_short(self, text, *args, **kwargs):
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(path_type, "write_text", cut_short)
    with pytest.raises(KeyboardInterrupt):
        write(folder, 2)
    assert json.loads(target.read_text()) == {"run": 1}
    assert [p.name for p in folder.iterdir()] == [target.name]
