"""A non-editable install works away from the checkout: train with a config file, then fuse with
the packaged default config, from a directory that has no configs/ folder."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[1]


def _run(args, cwd, env, timeout=900):
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def test_wheel_install_trains_and_fuses_outside_the_checkout(tmp_path):
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    # Built from a copy: setuptools leaves build/ in the source tree, and a stale one there
    # would put deleted modules into later wheels.
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", str(wheels), str(source)], cwd=tmp_path, env=os.environ)
    (wheel,) = wheels.glob("cer_jax-*.whl")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
          str(wheel)], cwd=tmp_path, env=os.environ)
    # The installed copy comes first on the path, ahead of the editable checkout.
    env = dict(os.environ, PYTHONPATH=str(target))
    where = _run([sys.executable, "-c", "import cer_jax; print(cer_jax.__file__)"], work, env)
    assert where.stdout.strip().startswith(str(target))

    workdir = tmp_path / "vit"
    overrides = {
        "training.num_steps": 2, "training.eval_every_steps": 2,
        "dataset.cache_dir": f"{tmp_path}/c", "dataset.synthetic_num_train_images": 60,
        "dataset.synthetic_num_test_images": 20, "training.global_batch_size": 8,
        "eval.global_batch_size": 16, "optimizer.lr": 0.003, "model.variant": "test/16",
    }
    _run([sys.executable, "-m", "cer_jax.train", "--config=configs/vit.py:smoke",
          f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())],
         work, env)
    saved = json.loads((workdir / "config.json").read_text())
    for key, value in overrides.items():  # every override reached the trainer
        section, leaf = key.split(".")
        assert saved[section][leaf] == value, key
    _run([sys.executable, "-m", "cer_jax.fuse", f"--workdirs={workdir}",
          f"--out={tmp_path}/fusion", "--config.strategies=uniform_probabilities"], work, env)
    report = json.loads((tmp_path / "fusion" / "report.json").read_text())
    assert report["members"][0]["name"] == "vit"
    assert set(report["strategies"]) == {"uniform_probabilities"}
