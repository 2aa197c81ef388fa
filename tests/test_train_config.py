"""Configs load and override; bad configs stop before any work with a message naming the key."""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import ml_collections
import pytest
from conftest import BUCKET, smoke_config

from cer_jax import sharding, trainer
from cer_jax.config_loading import ConfigFileError, load_config, resolve_config_flag
from cer_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["vit", "manet", "resnet50"])
def test_full_and_smoke_configs_load(name):
    full = load_config(f"configs/{name}.py")
    smoke = load_config(f"configs/{name}.py:smoke")
    assert full.input.image_size == 224
    assert smoke.dataset.synthetic and not full.dataset.synthetic
    assert smoke.input.image_size <= 64 and smoke.training.global_batch_size == 32
    trainer.validate_config(full)
    trainer.validate_config(smoke)


def test_recipes_follow_the_spec():
    manet = load_config("configs/manet.py")
    assert (manet.optimizer.name, manet.optimizer.lr) == ("sgd", 0.01)
    assert manet.optimizer.momentum == 0.9
    assert manet.optimizer.weight_decay == 1e-4 and manet.input.normalization == "unit"
    assert (manet.schedule.name, manet.schedule.step_every_epochs) == ("step", 15.0)
    assert load_config("configs/vit.py").input.normalization == "minus_one_one"
    assert load_config("configs/resnet50.py").input.normalization == "imagenet"


def test_vit_image_size_follows_the_input_size():
    config = load_config("configs/vit.py")
    config.input.image_size = 384
    assert config.model.image_size == 384


def test_load_config_falls_back_to_the_installed_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/vit.py:smoke").model.name == "vit"
    with pytest.raises(ConfigFileError, match="configs/nope.py"):
        load_config("configs/nope.py")


@pytest.mark.parametrize(("spec", "close"), [
    ("configs/fussion.py", "configs/fusion.py"),  # was told to pass 'configs/vit.py' (fuse!)
    ("vit.py:smoke", "configs/vit.py"),
    ("configs/resnet.py", "configs/resnet50.py"),
    ("mine.py", None),
    ("/elsewhere/vit.py", None),  # a path of one's own: no installed file meant
])
def test_a_config_file_not_found_names_the_installed_ones(tmp_path, monkeypatch, spec, close):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigFileError) as raised:
        load_config(spec)
    path = spec.removesuffix(":smoke")
    assert str(raised.value) == (
        f"Config file {path!r} not found in {tmp_path} nor among the installed configs "
        "(configs/fusion.py, configs/manet.py, configs/resnet50.py, configs/vit.py)"
        + (f"; did you mean {close!r}?" if close else "."))


def test_config_paths_from_a_source_checkout_and_the_home_folder(tmp_path, monkeypatch):
    """A checkout put on PYTHONPATH, not installed, has no cer_jax.configs package: its
    configs/ folder is the fallback. `--config=~/x.py` is not expanded by the shell."""
    from cer_jax import config_loading

    def not_installed(package):
        raise ModuleNotFoundError(f"No module named {package!r}")

    monkeypatch.setattr(config_loading.importlib.resources, "files", not_installed)
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/manet.py:smoke").member == "manet"
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mine.py").write_text((ROOT / "configs" / "resnet50.py").read_text())
    assert load_config("~/mine.py:smoke").member == "resnet50"


def test_a_config_file_on_a_bucket_is_read_through_epath(bucket):
    source = (ROOT / "configs" / "vit.py").read_text()
    (bucket.root / "exp").mkdir()
    (bucket.root / "exp" / "vit.py").write_text(source)
    remote = f"{BUCKET}/exp/vit.py"
    assert not os.path.exists(remote)  # only epath (mocked) can find it
    smoke = load_config("configs/vit.py:smoke").to_dict()
    assert load_config(f"{remote}:smoke").to_dict() == smoke
    (flag,) = resolve_config_flag([f"--config={remote}:smoke"])
    assert flag.endswith("-vit.py:smoke") and os.path.isfile(flag.split("=")[1].split(":")[0])
    with pytest.raises(ConfigFileError, match=f"'{BUCKET}/exp/nope.py' not found"):
        load_config(f"{BUCKET}/exp/nope.py")


@pytest.mark.parametrize("error", ["os", "tensorflow"])
def test_a_config_file_on_a_bucket_that_cannot_be_read_is_one_line(monkeypatch, error):
    """No network or no credentials: was the file system's traceback (TensorFlow's
    FailedPreconditionError 'Could not resolve host: www.googleapis.com', through epath)."""
    from cer_jax import config_loading

    if error == "tensorflow":
        import tensorflow as tf

        failure = tf.errors.FailedPreconditionError(
            None, None, "Error executing an HTTP request: libcurl code 6 meaning 'Could not "
            "resolve hostname'\n\t when reading metadata of gs://b/vit.py")
    else:
        failure = PermissionError(13, "Permission denied")

    class Unreadable:
        def __init__(self, path):
            self.name = "vit.py"

        def is_file(self):
            raise failure

    monkeypatch.setattr(config_loading.epath, "Path", Unreadable)
    reason = ("Permission denied" if error == "os" else
              "Error executing an HTTP request: libcurl code 6 meaning 'Could not resolve "
              "hostname'")
    with pytest.raises(ConfigFileError) as raised:
        load_config("gs://b/vit.py:smoke")
    assert str(raised.value) == (
        f"Config file 'gs://b/vit.py' cannot be read ({reason}): check the path, and this "
        "machine's access to its bucket (gcloud auth application-default login).")


@pytest.mark.parametrize(("config", "override", "message"), [
    ("resnet50", "model.name=vgg", "error: Unknown model 'vgg' (config key model.name)"),
    ("vit", "model.variant=Z/99", "error: Unknown ViT variant 'Z/99' (config key model.variant)"),
    ("resnet50", "model.depth=51", "error: Unknown ResNet depth 51 (config key model.depth)"),
    ("resnet50", "model.width=0", "error: ResNet width (config key model.width) is 0; use a "
                                  "whole number >= 1 (64 in ResNet-50, 16 in the smoke config)."),
    ("vit", "model.dtype=float16x", "error: model.dtype='float16x' is not a floating-point type: "
                                    "use float32, or bfloat16 for mixed precision on TPU / GPU."),
    # Was accepted, with no loss scaling: gradients underflow in real training.
    ("resnet50", "model.dtype=float16", "error: model.dtype='float16' is not supported (float16 "
                                        "would need loss scaling): use float32, or bfloat16 "
                                        "for mixed precision on TPU / GPU."),
    ("manet", "input.image_size=100", "error: MA-Net needs image sizes divisible by 32 (config "
                                      "key input.image_size); got 100x100."),
    # Was a traceback from the model's first call: the input checks came after the model's.
    ("manet", "input.image_size=0", "error: config.input.image_size=0: must be a positive "
                                    "number of pixels."),
    # A misspelt key: ml_collections raises it while absl parses the flags.
    ("resnet50", "training.num_stepz=5", "error: --config.training.num_stepz=5: the config has "
                                         "no key 'num_stepz'. Did you mean \"num_steps\" "
                                         "instead of \"num_stepz\"?"),
    ("vit", "trainng.num_steps=5", "error: --config.trainng.num_steps=5: the config has no key "
                                   "'trainng'. Did you mean \"training\" instead of "
                                   "\"trainng\"?"),
    # A word in a tuple of numbers (a letter O for a zero): was a TypeError traceback.
    ("vit", "input.crop_scale=0.5,1.O", "error: config.input.crop_scale=(0.5, '1.O'): give "
                                        "(min, max) fractions of the image area with 0 < min "
                                        "<= max <= 1."),
    ("resnet50", "input.color_jitter=0.4,0.4,0.4,O.1", "error: config.input.color_jitter=(0.4, "
                                                       "0.4, 0.4, 'O.1'): brightness, contrast "
                                                       "and saturation must be >= 0 and hue in "
                                                       "[0, 0.5] (torchvision)."),
    # Checked without weights too: a typo would otherwise surface only with them.
    ("manet", "init.manet_code_version=2022", "error: Unknown MA-Net code version '2022' (config "
                                              "key init.manet_code_version)"),
])
def test_a_bad_command_line_override_stops_with_one_line(tmp_path, config, override, message):
    """A --config.* override that cannot work stops the CLI before any work, with one line
    (tests/test_installed.py checks that good overrides reach config.json)."""
    workdir = tmp_path / "cli"
    out = subprocess.run(
        [sys.executable, "-m", "cer_jax.train", f"--config=configs/{config}.py:smoke",
         f"--workdir={workdir}", f"--config.{override}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    last_line = out.stderr.strip().splitlines()[-1]
    assert last_line.startswith(message)
    assert "Traceback" not in out.stderr
    assert not workdir.exists()


PRINT_CONFIG = """
import json
from cer_jax import cli, train
from cer_jax.config_loading import resolve_config_flag

def main(argv):
    print(json.dumps(train._CONFIG.value.to_dict()))

cli.run(main, resolve_argv=resolve_config_flag)
"""


def _parsed_config(cwd, *args) -> dict:
    """The config cer_jax.train's command line gives for `args` (flags parsed as it parses
    them), read from a directory that may have no configs/ folder."""
    out = subprocess.run([sys.executable, "-c", PRINT_CONFIG, "--workdir=/unused", *args],
                         cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_overrides_take_none_and_comma_lists(tmp_path):
    """`None` for any key (documented as "None = off" for many), and a tuple key as a plain
    comma list of words: ml_collections alone fails on the first ('None' is no float) and
    makes ('train_fit,test',) of the second."""
    config = _parsed_config(
        tmp_path, "--config=configs/vit.py",
        "--config.optimizer.grad_clip_norm=None",  # the only way to turn clipping off
        "--config.input.color_jitter=None",  # was (None,)
        "--config.input.prefetch=None",  # "None = AUTOTUNE"
        "--config.schedule.warmup_steps=7", "--config.schedule.warmup_steps=None",  # last wins
        "--config.export.splits=train_fit,test",
        "--config.dataset.eval_splits=validation, test",
        "--config.input.crop_scale=0.5,1.0",  # numbers as before
        "--config.input.blur.sigma=(0.2, 1.5)",  # and the Python literal
    )
    assert config["optimizer"]["grad_clip_norm"] is None
    assert config["input"]["color_jitter"] is None and config["input"]["prefetch"] is None
    assert config["schedule"]["warmup_steps"] is None
    assert config["export"]["splits"] == ["train_fit", "test"]
    assert config["dataset"]["eval_splits"] == ["validation", "test"]
    assert config["input"]["crop_scale"] == [0.5, 1.0]
    assert config["input"]["blur"]["sigma"] == [0.2, 1.5]


def test_smoke_config_trains_by_epochs_when_told(tmp_path):
    """:smoke sets num_epochs=None (it counts steps): the override must still parse, and
    num_steps must be clearable (also in the `--flag value` form)."""
    config = _parsed_config(tmp_path, "--config", "configs/manet.py:smoke",
                            "--config.training.num_epochs=2", "--config.training.num_steps",
                            "None")
    assert (config["training"]["num_epochs"], config["training"]["num_steps"]) == (2.0, None)
    assert config["member"] == "manet"  # `--config FILE` found the installed file too


@pytest.mark.parametrize(("args", "message"), [
    (["--config=configs/vit.py:smoke", "--config.optimizer.grad_clip_normm=None"],
     "error: --config.optimizer.grad_clip_normm=None: the config has no key 'grad_clip_normm'. "
     "Did you mean \"grad_clip_norm\" instead of \"grad_clip_normm\"?"),
    # Only where the config allows None: a learning rate of None would fail deep in training.
    (["--config=configs/vit.py:smoke", "--config.optimizer.lr=None"],
     "error: --config.optimizer.lr=None: this key needs a value (0.001 in the config)."),
    # No close key to suggest: the keys of its section are the fix (the line ended at the key).
    (["--config=configs/resnet50.py", "--config.model.variant=resnet51"],
     "error: --config.model.variant=resnet51: the config has no key 'variant'. Its keys under "
     "model: depth, dtype, name, width."),
    (["--config=configs/resnet50.py", "--config.model.variant=None"],
     "error: --config.model.variant=None: the config has no key 'variant'. Its keys under "
     "model: depth, dtype, name, width."),
    # A section: was 'this key needs a value (' and the section's YAML over eight lines.
    (["--config=configs/vit.py", "--config.input.affine=None"],
     "error: --config.input.affine=None: input.affine is a section of the config, not one "
     "value; override its keys one by one (--config.input.affine.KEY=VALUE). Its keys under "
     "input.affine: degrees, prob, scale, shear, translate."),
    (["--config=configs/manet.py:smok"],
     "error: Unknown config argument 'smok' for configs/manet.py: use '' or 'smoke'."),
    (["--config", "configs/vit.py:smok"],
     "error: Unknown config argument 'smok' for configs/vit.py: use '', 'smoke' or "
     "'follow_up'."),
    # A ViT's model.image_size is a reference to input.image_size, which the None override
    # took: int()'s TypeError traceback in the input checks.
    (["--config=configs/vit.py:smoke", "--config.model.image_size=None"],
     "error: config.input.image_size=None: must be a positive number of pixels."),
])
def test_a_bad_config_spec_or_none_override_is_one_line(tmp_path, args, message):
    out = subprocess.run([sys.executable, "-m", "cer_jax.train", f"--workdir={tmp_path / 'w'}",
                          *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stderr.strip().splitlines()[-1]) == (2, message)
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "w").exists()


OWN_CONFIG = """from cer_jax.config_base import get_base_config
def get_config({params}):
    config = get_base_config()
{body}    return config
"""


@pytest.mark.parametrize(("text", "spec", "message"), [
    ("def get_config(:\n    pass\n", "mine.py",
     "error: Config file 'mine.py', line 1: invalid syntax; fix the file."),
    ("import ml_collections\nCONFIG = ml_collections.ConfigDict()\n", "mine.py",
     "error: Config file 'mine.py' has no get_config(): a config file defines get_config() "
     "returning an ml_collections.ConfigDict (as configs/vit.py)."),
    ("import no_such_module\n" + OWN_CONFIG.format(params="", body=""), "mine.py",
     "error: Config file 'mine.py', line 1: ModuleNotFoundError: No module named "
     "'no_such_module'; fix the file (--traceback shows where)."),
    (OWN_CONFIG.format(params="", body="    config.trainng.num_steps = 5\n"), "mine.py",
     "error: Config file 'mine.py', line 4: AttributeError: 'trainng' Did you mean "
     "\"training\" instead of \"trainng\"?; fix the file (--traceback shows where)."),
    (OWN_CONFIG.format(params="", body=""), "mine.py:smoke",
     "error: Config file 'mine.py' takes no argument (its get_config() has no parameter), not "
     "'smoke': use --config=mine.py."),
    (OWN_CONFIG.format(params="size", body=""), "mine.py",
     "error: Config file 'mine.py': its get_config(size) cannot be called with no argument; "
     "give the argument it takes after a colon (--config=mine.py:ARG)."),
    # ml_collections only logs a warning for None: absl then said '--config must have a value
    # other than None', as if the flag were missing; a dict was an AttributeError traceback.
    ("def get_config():\n    config = dict(model=dict(name='vit'))\n", "mine.py",
     "error: Config file 'mine.py': get_config() returned NoneType, not an "
     "ml_collections.ConfigDict (a forgotten return?)."),
    ("def get_config():\n    return dict(model=dict(name='vit'))\n", "mine.py",
     "error: Config file 'mine.py': get_config() returned dict, not an "
     "ml_collections.ConfigDict (a forgotten return?)."),
])
def test_a_config_file_of_ones_own_that_cannot_run_is_one_line(tmp_path, text, spec, message):
    """A syntax error, a failed import, a wrong argument or result of one's own config file was
    Python's traceback from inside the flag parsing (exit status 1)."""
    (tmp_path / "mine.py").write_text(text)
    out = subprocess.run([sys.executable, "-m", "cer_jax.train", f"--workdir={tmp_path / 'w'}",
                          f"--config={spec}"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert (out.returncode, out.stderr.strip().splitlines()) == (2, [message])
    assert not (tmp_path / "w").exists()


def test_a_config_files_error_with_traceback_shows_it(tmp_path):
    (tmp_path / "mine.py").write_text("import no_such_module\n")
    out = subprocess.run([sys.executable, "-m", "cer_jax.train", f"--workdir={tmp_path / 'w'}",
                          "--config=mine.py", "--traceback"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" in out.stderr
    assert "ModuleNotFoundError: No module named 'no_such_module'" in out.stderr


def test_a_config_file_under_a_folder_with_a_colon_is_read(tmp_path):
    """ml_collections reads `--config=FILE:ARG` up to the first colon: a config file in a
    working directory such as /data/exp:2, or under sweeps/lr:3e-5/, was an OSError traceback
    ('Configuration is not available ... /data/exp')."""
    own = OWN_CONFIG.format(params="arg=None",
                            body="    config.training.num_steps = 7 if arg else 5\n")
    folder = tmp_path / "exp:2"
    (folder / "lr:3").mkdir(parents=True)
    (folder / "mine.py").write_text(own)
    (folder / "lr:3" / "mine.py").write_text(own)
    assert _parsed_config(folder, "--config=mine.py")["training"]["num_steps"] == 5
    assert _parsed_config(tmp_path, "--config=exp:2/lr:3/mine.py:x")["training"]["num_steps"] == 7


STOPPED_TOOL = """
import os, signal, time
from cer_jax import cli, errors, trainer

def main(argv):
    if argv[1:] == ["saved"]:
        raise trainer.Interrupted("stopped by Ctrl-C at step 4, saved in /w: resume.")
    if argv[1:] == ["sigterm"]:
        raise errors.Terminated("stopped by SIGTERM at step 4, saved in /w: resume.")
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a terminal's Ctrl-C
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(60)

cli.run(main)
"""


@pytest.mark.parametrize(("argv", "status", "message"), [
    ([], 130, "error: stopped by Ctrl-C."),
    (["saved"], 130, "error: stopped by Ctrl-C at step 4, saved in /w: resume."),  # the trainer's
    (["sigterm"], 143, "error: stopped by SIGTERM at step 4, saved in /w: resume."),
])
def test_a_stopped_tool_is_one_line_and_exit_status_128_plus_the_signal(argv, status, message):
    """130 = 128 + SIGINT, 143 = 128 + SIGTERM, so that a launch script under `set -e` stops
    too (tests/test_multiprocess.py sends the real trainer SIGTERM)."""
    out = subprocess.run([sys.executable, "-c", STOPPED_TOOL, *argv], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert (out.returncode, out.stderr.strip().splitlines()[-1]) == (status, message)
    assert "Traceback" not in out.stderr


FULL_DISK_TOOL = """
import errno, os, sys
from cer_jax import cli

def main(argv):
    if argv[1:] == ["orbax"]:  # Orbax's async save on a full disk (a real 10 MB tmpfs)
        try:
            raise OSError(errno.EIO, "write")
        except OSError:
            raise ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/7.'
                             'orbax-checkpoint-tmp/m.ocdbt": Failed to write 116 bytes to file '
                             "11: No space left on device [os_error_code='28']")
    if argv[1:] == ["summary"]:  # raised while handling the disk's OSError
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("flush failed")
    raise ValueError("another error")

cli.run(main)
"""


@pytest.mark.parametrize(("argv", "message"), [
    (["orbax"], "error: a write failed, the disk is full (No space left on device, writing "
                "/w/checkpoints/7.orbax-checkpoint-tmp/m.ocdbt); free space there, or use a "
                "larger disk, and run the same command again (cer_jax.train resumes from its "
                "last saved step)."),
    (["summary"], "error: a write failed, the disk is full (No space left on device); free "
                  "space there, or use a larger disk, and run the same command again "
                  "(cer_jax.train resumes from its last saved step)."),
    ([], None),
])
def test_a_full_disk_is_one_line_in_every_tool_and_other_errors_keep_their_traceback(argv,
                                                                                     message):
    """Training on a disk that filled up was a page of Orbax's and CLU's tracebacks ending in
    RESOURCE_EXHAUSTED (only the demo said it in one line)."""
    out = subprocess.run([sys.executable, "-c", FULL_DISK_TOOL, *argv], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    if message is None:
        assert out.returncode == 1 and "Traceback" in out.stderr, out.stderr
        assert out.stderr.strip().splitlines()[-1] == "ValueError: another error"
        return
    assert (out.returncode, out.stderr.strip().splitlines()) == (2, [message])


def _expect_error(config, workdir, error, pattern):
    with pytest.raises(error, match=pattern):
        trainer.train_and_evaluate(config, str(workdir))
    # Stopped before any work: nothing was written to the workdir.
    assert not os.path.exists(workdir) or not os.listdir(workdir)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("training.label_smoothing", 1.5, "training.label_smoothing=1.5 must be in [0, 1)."),
    ("training.log_every_steps", 0, "training.log_every_steps=0 must be a positive number of "
                                    "steps."),
    ("training.num_steps", -3, "training.num_steps=-3 must be a positive number of steps."),
    ("training.eval_every_steps", 0, "training.eval_every_steps=0 must be a positive number of "
                                     "steps."),
    ("checkpoint.keep", 0, "checkpoint.keep=0 must be >= 1."),
    ("optimizer.weight_decay", -1.0, "optimizer.weight_decay=-1.0 must be a finite number >= "
                                     "0."),
    # Infinite: trained to NaN, which the non-finite guard then blamed on optimizer.lr.
    ("optimizer.weight_decay", math.inf, "optimizer.weight_decay=inf must be a finite number >= "
                                         "0."),
    ("optimizer.head_lr_multiplier", math.inf, "optimizer.head_lr_multiplier=inf must be a "
                                               "finite number > 0."),
    ("optimizer.lr", math.inf, "optimizer.lr=inf must be a finite number > 0."),
    ("optimizer.grad_clip_norm", -1.0, "optimizer.grad_clip_norm=-1.0 must be > 0, or None for "
                                       "no clipping."),
    ("optimizer.momentum", 1.0, "optimizer.momentum=1.0 must be in [0, 1)."),
    ("optimizer.head_lr_multiplier", -10.0, "optimizer.head_lr_multiplier=-10.0 must be a "
                                            "finite number > 0."),
    ("input.crop_scale", (1.2, 0.5), "config.input.crop_scale=(1.2, 0.5): give (min, max) "
                                     "fractions of the image area with 0 < min <= max <= 1."),
    ("input.blur.prob", 2.0, "config.input.blur.prob=2.0: a probability is in [0, 1]."),
    ("input.blur.sigma", (2.0, 0.1), "config.input.blur.sigma=(2.0, 0.1): give (min, max) "
                                     "Gaussian standard deviations with 0 < min <= max."),
    ("input.affine.translate", 10.0, "config.input.affine.translate=10.0: give a fraction of "
                                     "the image side in [0, 1]."),
    ("input.color_jitter", (0.5, 0.5, 0.5, 0.7), "config.input.color_jitter=(0.5, 0.5, 0.5, 0.7): "
                                                 "brightness, contrast and saturation must be "
                                                 ">= 0 and hue in [0, 0.5] (torchvision)."),
    # `--config.init.checkpoint=$WEIGHTS`, the variable unset: trained from scratch, silently.
    ("init.checkpoint", "", "config.init.checkpoint is empty (a shell variable left unset?): "
                            "give a path, or leave the key out to train from scratch."),
    ("dataset.data_dir", " ", "config.dataset.data_dir is empty (a shell variable left unset?): "
                              "give a path, or leave the key out."),
])
def test_a_value_that_would_train_wrong_stops_before_any_work(tmp_path, key, value, message):
    """Each of these used to train silently wrong, or fail after the workdir was written."""
    config = load_config("configs/resnet50.py")
    *parents, leaf = key.split(".")
    node = config
    for parent in parents:
        node = node[parent]
    node[leaf] = value
    with pytest.raises(UserError) as e:
        trainer.train_and_evaluate(config, str(tmp_path / "w"))
    assert str(e.value) == message
    assert not (tmp_path / "w").exists()


def test_a_config_of_another_kind_or_a_file_as_workdir_stops_before_the_data(tmp_path):
    with pytest.raises(trainer.ConfigError) as e:
        trainer.train_and_evaluate(load_config("configs/fusion.py"), str(tmp_path / "w"))
    assert str(e.value) == (
        "--config is not a training config (it has no model, dataset, input, training, "
        "optimizer, eval, checkpoint, init): give configs/vit.py, configs/manet.py or "
        "configs/resnet50.py (configs/fusion.py is cer_jax.fuse's).")
    # The production recipe without RAF-DB: the workdir error comes before the data's.
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    config = load_config("configs/resnet50.py")
    config.dataset.data_dir = str(tmp_path / "tfds")
    with pytest.raises(UserError) as e:
        trainer.train_and_evaluate(config, str(a_file))
    assert str(e.value) == (f"--workdir={a_file}: {a_file} is a file, not a folder; give a "
                            "folder, a new one or a run to resume.")
    with pytest.raises(UserError) as e:  # under a file: Orbax would fail making its folders
        trainer.train_and_evaluate(config, str(a_file / "run"))
    assert str(e.value) == (f"--workdir={a_file / 'run'}: {a_file} is a file, not a folder; "
                            "give a folder, a new one or a run to resume.")
    assert a_file.read_text() == "mine"
    config.training.global_batch_size = 0
    with pytest.raises(UserError) as e:
        trainer.train_and_evaluate(config, str(tmp_path / "w"))
    assert str(e.value) == (f"training.global_batch_size=0 must be >= 1 (a multiple of the "
                            f"{jax.device_count()} devices in use).")
    assert not (tmp_path / "w").exists()


def test_unknown_model(tmp_path):
    config = load_config("configs/vit.py:smoke")
    config.model.name = "vgg"
    _expect_error(config, tmp_path / "w", ValueError, r"model\.name.*manet, resnet, vit")


def test_a_vit_built_for_another_image_size_stops_before_any_work(tmp_path, synthetic_cache_dir):
    # Resolved, the two sizes are no longer one field reference (as a hand-written config may be).
    config = ml_collections.ConfigDict(smoke_config("vit", synthetic_cache_dir).to_dict())
    config.model.image_size = config.input.image_size // 2
    _expect_error(config, tmp_path / "w", UserError,
                  r"^Images of size 32x32 give 4x4 patches, but this ViT was built for "
                  r"model\.image_size=16; resize the images or set model\.image_size to "
                  r"their size\.$")


def test_an_unwritable_workdir_is_one_line_before_the_data(synthetic_cache_dir, monkeypatch):
    """It failed at Orbax's first folder, after every split was decoded, in a traceback."""
    from cer_jax import checkpointing
    from cer_jax.data import pipeline

    monkeypatch.setattr(pipeline, "get_dataset_info", lambda *_: pytest.fail("data read"))
    workdir = "/sys/cer_jax_run"  # sysfs: not even root may make a folder there
    try:  # EPERM on a writable sysfs, EROFS where a container mounts it read-only
        os.mkdir(workdir)
    except OSError as e:
        reason = e.strerror
    else:
        os.rmdir(workdir)
        pytest.skip(f"{workdir} could be made here")
    with pytest.raises(checkpointing.WorkdirError) as error:
        trainer.prepare(smoke_config("vit", synthetic_cache_dir), workdir)
    assert str(error.value) == (
        f"--workdir={workdir} cannot be written ({reason}): give a folder this "
        "user may write (local, gs://... or a shared filesystem).")


@pytest.mark.parametrize("given", [None, 4])  # the default, or the recorded count again
def test_a_resume_on_a_process_count_its_shards_do_not_split_over_says_which_would(
        tmp_path, given, monkeypatch):
    """A run dealt into 4 shards, resumed on 8 hosts: the line said to set num_data_shards
    to a multiple of 8 or to None, and each was then refused (None takes the run's 4; 8 is
    another run's data order). Only the process count can change: it names those that fit."""
    from cer_jax import checkpointing

    config = ml_collections.ConfigDict({"input": {"num_data_shards": 4},
                                        "training": {"global_batch_size": 16}})
    checkpointing.save_config(config, str(tmp_path))
    config.input.num_data_shards = given
    monkeypatch.setattr(jax, "process_count", lambda: 8)
    with pytest.raises(UserError) as error:
        trainer.resolve_data_shards(config, str(tmp_path), resuming=True)
    assert str(error.value) == (
        f"--workdir={tmp_path} holds a run whose training split is dealt into "
        "config.input.num_data_shards=4 (its config.json), which 8 processes cannot share "
        "(each reads whole shards): resume it on 1, 2 or 4 processes, or train anew in another "
        "--workdir.")
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    config.input.num_data_shards = given
    trainer.resolve_data_shards(config, str(tmp_path), resuming=True)
    assert config.input.num_data_shards == 4


@pytest.mark.parametrize("member, writer, model, message", [
    ("vit", "augreg_npz", dict(name="vit", variant="mu/8", image_size=32),
     r"holds a ViT mu/8 .* set --config\.model\.variant=mu/8"),
    ("manet", "torchvision_pth", dict(name="resnet", depth=18, width=8),
     r"Not an MA-Net checkpoint"),
])
def test_weights_that_do_not_fit_stop_the_run_before_the_data_work(
        member, writer, model, message, tmp_path, synthetic_cache_dir, monkeypatch):
    """Another variant's or network's file: one line before the data is built and decoded
    (minutes on real data), not after."""
    import weight_files
    from flax import nnx

    from cer_jax.data import pipeline
    from cer_jax.models import create_model
    from cer_jax.pretrained import WeightImportError

    name = model.pop("name")
    source = create_model(name, num_classes=7, rngs=nnx.Rngs(0), **model)
    path = weight_files.FORMATS[name][writer](source, tmp_path / "weights")
    config = smoke_config(member, synthetic_cache_dir, **{"init.checkpoint": str(path)})
    monkeypatch.setattr(pipeline, "get_dataset_info", lambda *_: pytest.fail("data read"))
    with pytest.raises(WeightImportError, match=message):
        trainer.prepare(config, str(tmp_path / "run"))


def test_a_data_error_leaves_no_workdir_folder(tmp_path, synthetic_cache_dir):
    """The workdir's write check makes the folder; a data error after it takes it away."""
    config = smoke_config("vit", synthetic_cache_dir)
    config.dataset.eval_splits = ("no_such_split",)
    with pytest.raises(UserError, match="no_such_split"):
        trainer.prepare(config, str(tmp_path / "w"))
    assert os.listdir(tmp_path) == []


def test_unknown_dataset(tmp_path, synthetic_cache_dir):
    config = smoke_config("vit", synthetic_cache_dir, **{"dataset.synthetic": False,
                                                        "dataset.name": "no_such_dataset"})
    _expect_error(config, tmp_path / "w", ValueError, r"dataset\.name")


@pytest.mark.parametrize("key", ["manual_dir", "data_dir"])
def test_a_smoke_config_with_a_raf_db_tree_or_build_says_it_would_ignore_it(tmp_path, key):
    """`configs/<model>.py:smoke --config.dataset.manual_dir=RAF-DB` trained on the synthetic
    drawings and silently ignored the tree (or a data_dir's build): now one line says how."""
    config = load_config("configs/resnet50.py:smoke")
    config.dataset[key] = str(tmp_path / "RAF-DB")
    _expect_error(config, tmp_path / "w", UserError, "^" + re.escape(
        f"config.dataset.synthetic=True (a :smoke config sets it) trains on the built-in "
        f"synthetic data, which ignores config.dataset.{key}={str(tmp_path / 'RAF-DB')!r}; add "
        f"--config.dataset.synthetic=False to train on it, or drop config.dataset.{key}.") + "$")


@pytest.mark.parametrize("config_file", ["configs/resnet50.py:smoke", "configs/resnet50.py"])
def test_a_folder_without_its_dataset_name_is_refused(tmp_path, config_file):
    """--config.dataset.folder=DIR without --config.dataset.name=folder: a :smoke config trained
    on its synthetic drawings, ignoring the folder without a word (a full config on RAF-DB)."""
    config = load_config(config_file)
    config.dataset.folder = str(tmp_path / "faces")
    _expect_error(config, tmp_path / "w", UserError, "^" + re.escape(
        f"config.dataset.folder={str(tmp_path / 'faces')!r} is read only with "
        "dataset.name='folder', and this config's is 'rafdb/compound': add "
        "--config.dataset.name=folder to train on the folder, or drop config.dataset.folder.")
        + "$")


def test_missing_manual_data(tmp_path):
    config = load_config("configs/vit.py")
    config.dataset.data_dir = str(tmp_path / "tfds")
    _expect_error(config, tmp_path / "w", ValueError, r"dataset\.manual_dir")


def test_a_bad_model_setting_is_reported_before_the_data_is_looked_at(tmp_path):
    """The production recipe without RAF-DB: the model error comes first, so a typo in a model
    override never waits for a dataset to be found, prepared or decoded."""
    config = load_config("configs/vit.py")
    config.dataset.data_dir = str(tmp_path / "tfds")
    config.model.variant = "Z/99"
    _expect_error(config, tmp_path / "w", UserError, r"^Unknown ViT variant 'Z/99'")


def test_batch_not_divisible_by_devices(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    config = load_config("configs/vit.py:smoke")
    config.training.global_batch_size = 30
    _expect_error(config, tmp_path / "w", ValueError,
                  r"training\.global_batch_size=30 is not divisible by the 4 devices.*e\.g\. 28")
    assert sharding.check_batch_size(32, "k") is None


def test_a_weights_folder_is_taken_as_init_checkpoint(tmp_path):
    """A Hugging Face snapshot folder (save_pretrained, huggingface-cli download) is passed on
    to the reader, which picks the weights file in it."""
    folder = tmp_path / "resnet-50"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    config = load_config("configs/resnet50.py:smoke")
    config.init.checkpoint = str(folder)
    trainer.validate_config(config)


def test_missing_pretrained_file(tmp_path):
    config = load_config("configs/resnet50.py:smoke")
    config.init.checkpoint = str(tmp_path / "resnet50.safetensors")
    _expect_error(config, tmp_path / "w", trainer.ConfigError,
                  r"init\.checkpoint=.*resnet50\.safetensors.*no such file")


def _init_workdir_error(source: str, config: str, workdir) -> str:
    """The one-line error of a `config` run started from a workdir trained with `source`."""
    from cer_jax import checkpointing, warm_start

    checkpointing.save_config(load_config(source), str(workdir))
    wanted = load_config(config)
    wanted.init.workdir = str(workdir)
    with pytest.raises(UserError) as e:
        warm_start.resolve_model_settings(wanted)
    return str(e.value)


def test_init_workdir_of_another_network_is_one_line(tmp_path):
    """Not the loader's list of every mismatched tensor, and before the data or any folder."""
    vit_run = tmp_path / "vit_run"
    assert _init_workdir_error("configs/vit.py:smoke", "configs/resnet50.py", vit_run) == (
        f"init.workdir={vit_run} holds a vit model and this config builds resnet: start from a "
        "resnet run, or give pre-trained weights as init.checkpoint.")
    resnet18_run = tmp_path / "resnet18_run"
    assert _init_workdir_error("configs/resnet50.py:smoke", "configs/resnet50.py",
                               resnet18_run) == (
        f"init.workdir={resnet18_run} holds a resnet of another size (model.depth=18 there, 50 "
        "here; model.width=16 there, 64 here): set --config.model.depth=18 "
        "--config.model.width=16, or start from a run of this size.")


def test_init_workdir_trained_on_other_input_scaling_is_one_line(tmp_path):
    """Stage 2 of the two-stage recipe must feed the network inputs scaled as in stage 1: ViT's
    :follow_up (ImageNet mean/std) then the default recipe ([-1, 1]) would start it off its
    features, silently."""
    from cer_jax import warm_start

    stage_one = tmp_path / "vit_basic"
    assert _init_workdir_error("configs/vit.py:follow_up", "configs/vit.py", stage_one) == (
        f"init.workdir={stage_one} was trained on inputs with input.normalization='imagenet' and "
        "this config feeds it 'minus_one_one': set --config.input.normalization=imagenet, or "
        "start from a run trained with this normalisation.")
    config = load_config("configs/vit.py")
    config.init.workdir = str(stage_one)
    config.input.normalization = "imagenet"
    warm_start.resolve_model_settings(config)  # the fix the message names


def test_init_workdir_of_another_vit_pooling_is_one_line(tmp_path):
    from cer_jax import checkpointing, warm_start

    checkpointing.save_config(load_config("configs/vit.py:smoke"), str(tmp_path))
    config = load_config("configs/vit.py:smoke")
    config.model.pool = "gap"
    config.init.workdir = str(tmp_path)
    with pytest.raises(UserError, match=r"model\.pool='cls' there, 'gap' here\): set "
                                        r"--config\.model\.pool=cls"):
        warm_start.resolve_model_settings(config)


def test_init_workdir_vit_at_another_image_size_resamples_the_position_embedding(monkeypatch):
    """Stage 2 at a larger input size (big_vision's usual fine-tuning) starts from stage 1's
    weights, its position embedding resampled over the patch grid as from a pre-trained file."""
    import numpy as np

    from cer_jax import checkpointing, train_state, warm_start
    from cer_jax.pretrained import core
    from cer_jax.pretrained.vit import resize_posemb_grid

    stage_one = load_config("configs/vit.py:smoke")  # 32 px, test/8: a 4x4 patch grid
    source = train_state.create_model(stage_one, num_classes=7, seed=0)
    monkeypatch.setattr(checkpointing, "restore_best_model", lambda workdir: (source, stage_one))
    config = load_config("configs/vit.py:smoke")
    config.input.image_size = 48  # a 6x6 grid
    config.init.workdir = "/runs/vit-basic"
    model = train_state.create_model(config, num_classes=11, seed=1)
    warm_start.load_initial_weights(model, config)
    got, want = core.model_arrays(model), core.model_arrays(source)
    old = np.asarray(want["pos_embedding"].get_value())
    new = np.asarray(got["pos_embedding"].get_value())
    assert new.shape == (1, 1 + 36, old.shape[-1])
    np.testing.assert_array_equal(new[:, :1], old[:, :1])  # the class token's entry
    np.testing.assert_allclose(new[:, 1:], resize_posemb_grid(old[:, 1:], 6), rtol=1e-6)
    for name, var in got.items():
        if name != "pos_embedding" and not name.startswith("head"):
            np.testing.assert_array_equal(var.get_value(), want[name].get_value(), err_msg=name)


def test_init_workdir_must_be_a_training_workdir(tmp_path):
    config = load_config("configs/vit.py:smoke")
    config.init.workdir = str(tmp_path)
    _expect_error(config, tmp_path / "w", trainer.ConfigError, r"init\.workdir=.*config\.json")


def test_best_split_must_be_evaluated(tmp_path):
    config = load_config("configs/vit.py:smoke")
    config.checkpoint.best_split = "val"
    _expect_error(config, tmp_path / "w", trainer.ConfigError, r"checkpoint\.best_split='val'")


@pytest.mark.parametrize(("settings", "message"), [
    # Chosen on the data it is fitted on: the best checkpoint is the most overfitted one.
    ({"checkpoint.best_split": "train_fit", "dataset.eval_splits": ("train_fit", "test")},
     "checkpoint.best_split='train_fit' is the split the model is trained on "
     "(dataset.train_split): the best checkpoint would be the one that fits its own training "
     "images best. Choose it on a held-out split: --config.checkpoint.best_split=validation."),
    # RAF-DB's train holds validation: chosen on training images all the same.
    ({"dataset.train_split": "train"},
     "checkpoint.best_split='validation' is part of dataset.train_split='train' (RAF-DB's "
     "train is train_fit + validation): the best checkpoint would be chosen on images the "
     "model is trained on. Train on the rest: --config.dataset.train_split=train_fit."),
    # A head kept from no weights: a run from scratch that the user took for a fine-tuning.
    ({"init.keep_head": True},
     "init.keep_head=True keeps the head of the loaded weights, but none are loaded "
     "(init.checkpoint and init.workdir are unset): the run would train from scratch. Set "
     "init.checkpoint or init.workdir, or --config.init.keep_head=False."),
    # () exported every split, as None does: not what an empty list says.
    ({"export.splits": ()},
     "export.splits=() names no split, yet a finished run always exports (fusion reads the "
     "export): leave it None for dataset.train_split and dataset.eval_splits, or list the "
     "splits, e.g. --config.export.splits=train_fit,validation,test."),
    # Class-balanced sampling shuffles each class whole: the buffer had no effect.
    ({"input.balance": "sampling", "input.shuffle_buffer": 100},
     "input.shuffle_buffer=100 is not read with input.balance='sampling', which shuffles each "
     "class's examples whole: leave it None, or choose another input.balance."),
], ids=["best_split_is_train_split", "best_split_within_train_split",
        "keep_head_without_weights", "empty_export_splits",
        "shuffle_buffer_with_sampling"])
def test_settings_that_are_probably_mistakes_are_refused_before_any_work(tmp_path, settings,
                                                                       message):
    config = load_config("configs/vit.py:smoke")
    for key, value in settings.items():
        section, name = key.split(".")
        config[section][name] = value
    _expect_error(config, tmp_path / "w", trainer.ConfigError, re.escape(message))


def test_a_folder_split_named_train_holds_no_validation():
    """Only RAF-DB's `train` holds `validation`: a folder's `train/` is a folder of its own."""
    config = load_config("configs/vit.py:smoke")
    config.dataset.update(name="folder", folder="/data/faces", synthetic=False,
                          train_split="train")
    trainer.validate_config(config)


def test_an_empty_export_splits_override_is_the_same_line_before_any_work(tmp_path):
    """`--config.export.splits=` parsed to ('',): the run built the dataset, then stopped on
    "dataset ... has no split ''". It is () now, refused as such before any data work."""
    out = subprocess.run(
        [sys.executable, "-m", "cer_jax.train", "--config=configs/vit.py:smoke",
         f"--workdir={tmp_path / 'w'}", f"--config.dataset.cache_dir={tmp_path / 'cache'}",
         "--config.export.splits="],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        timeout=120)
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == (
        "error: export.splits=() names no split, yet a finished run always exports (fusion "
        "reads the export): leave it None for dataset.train_split and dataset.eval_splits, or "
        "list the splits, e.g. --config.export.splits=train_fit,validation,test.")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "w").exists()


@pytest.mark.parametrize(("tool", "flags", "message"), [
    ("train", ["--distributed=on"],
     "error: --distributed=on: coordinator_address should be defined. Where JAX cannot find"),
    ("train", ["--coordinator_address=127.0.0.1:1"],
     "error: --coordinator_address=127.0.0.1:1: Number of processes must be defined."),
    ("fuse", ["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
     "error: --coordinator_address=127.0.0.1:1 --num_processes=2 --process_id=2: process_id "
     "and num_processes must be nonnegative, with process_id < num_processes."),
])
def test_incomplete_multi_process_flags_stop_with_one_line(tmp_path, tool, flags, message):
    """--distributed=on or a coordinator flag where JAX cannot find the rest itself (here: no
    TPU VM, no SLURM step) is a user error: one line naming the flags, not JAX's traceback."""
    args = (["--config=configs/vit.py:smoke", f"--workdir={tmp_path / 'w'}"] if tool == "train"
            else [f"--workdirs={tmp_path / 'a'},{tmp_path / 'b'}", f"--out={tmp_path / 'f'}"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_COORD"))}
    out = subprocess.run([sys.executable, "-m", f"cer_jax.{tool}", *args, *flags], cwd=ROOT,
                         env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()[-1:]
    assert line.startswith(message)
    assert "--num_processes=N" in line  # the fix
    assert not (tmp_path / "w").exists() and not (tmp_path / "f").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("optimizer.lr=fast", "error: --config.optimizer.lr=fast: optimizer.lr takes a number (the "
                          "config has 0.001), not 'fast'."),
    ("training.global_batch_size=8.5", "error: --config.training.global_batch_size=8.5: "
                                       "training.global_batch_size takes a whole number (the "
                                       "config has 32), not '8.5'."),
    ("input.flip=maybe", "error: --config.input.flip=maybe: input.flip takes True or False (the "
                         "config has True), not 'maybe'."),
    # A section: was absl's "Failed to parse 'vit' as a ConfigDict: ValueError('malformed node
    # or string on line 1: <ast.Name object at 0x...>')", status 1; a dict literal without
    # every key of the section replaced it whole: an AttributeError traceback in the checks.
    ("model=vit", "error: --config.model=vit: model is a section of the config, not one value; "
                  "override its keys one by one (--config.model.KEY=VALUE). Its keys under "
                  "model: dropout, dtype, gelu_approximate, head_zeroinit, image_size, "
                  "layer_norm_eps, name, pool, stochastic_depth, variant."),
    ("input.affine={'prob':0.3}", "error: --config.input.affine={'prob':0.3}: input.affine is a "
                                  "section of the config, not one value; override its keys one "
                                  "by one (--config.input.affine.KEY=VALUE). Its keys under "
                                  "input.affine: degrees, prob, scale, shear, translate."),
    # ml_collections' ValueError ('Could not parse ...') and KeyError ('Attribute <class
    # 'float'>.x does not exist ...') tracebacks, status 1.
    ("optimizer.=5", "error: --config.optimizer.=5: the key 'optimizer.' has an empty part; name "
                     "each part, e.g. --config.SECTION.KEY=VALUE (a shell variable left "
                     "unset?)."),
    ("optimizer.lr.head=5", "error: --config.optimizer.lr.head=5: optimizer.lr is one value "
                            "(0.001 in the config), not a section with keys; set it with "
                            "--config.optimizer.lr=VALUE."),
])
def test_an_override_of_the_wrong_type_is_one_line(tmp_path, override, message):
    """Was absl's two lines with Python's conversion error ("invalid literal for int() with base
    10: '8.5'") and exit status 1; now one line, status 2, as a misspelt key."""
    out = subprocess.run([sys.executable, "-c", PRINT_CONFIG, "--workdir=/unused",
                          "--config=configs/vit.py:smoke", f"--config.{override}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stderr.strip().splitlines()) == (2, [message])


def test_a_fusion_override_below_a_value_is_one_line(tmp_path):
    """fuse's config is its default file, loaded (with the overrides) when the flag is defined:
    the same line there."""
    out = subprocess.run([sys.executable, "-m", "cer_jax.fuse", f"--out={tmp_path / 'f'}",
                          "--workdirs=a,b", "--config.stacking.seed.x=1"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stderr.strip().splitlines()) == (2, [
        "error: --config.stacking.seed.x=1: stacking.seed is one value (0 in the config), not a "
        "section with keys; set it with --config.stacking.seed=VALUE."])
    assert not (tmp_path / "f").exists()


def test_a_dict_literal_with_every_key_of_a_section_still_overrides_it(tmp_path):
    """ml_collections' own form, which the section refusal above leaves alone."""
    affine = "{'prob': 0.3, 'degrees': 5.0, 'translate': 0.1, 'scale': (0.9, 1.1), 'shear': 1.0}"
    config = _parsed_config(tmp_path, "--config=configs/vit.py:smoke",
                            f"--config.input.affine={affine}")
    assert config["input"]["affine"] == {"prob": 0.3, "degrees": 5.0, "translate": 0.1,
                                         "scale": [0.9, 1.1], "shear": 1.0}


@pytest.mark.parametrize(("config", "key", "message"), [
    ("vit.py:smoke", "num_steps", "training.num_steps=0 must be a positive number of steps."),
    ("vit.py", "num_epochs", "training.num_epochs=0.0 must be > 0."),
])
def test_a_zero_run_length_is_named_not_called_empty(config, key, message):
    """Was 'Set training.num_steps or training.num_epochs (both are empty).' for a 0 given on
    the command line (--config.training.num_steps=0)."""
    config = load_config(f"configs/{config}")
    config.training[key] = 0
    with pytest.raises(trainer.ConfigError) as e:
        trainer.validate_config(config)
    assert str(e.value) == message


@pytest.mark.parametrize(("key", "value", "message"), [
    ("training.num_epochs", float("inf"), "training.num_epochs=inf must be a finite number > 0."),
    ("training.num_epochs", float("nan"), "training.num_epochs=nan must be a finite number > 0."),
    ("schedule.warmup_epochs", float("inf"),
     "schedule.warmup_epochs=inf must be a finite number >= 0."),
    ("schedule.warmup_epochs", float("nan"),
     "schedule.warmup_epochs=nan must be a finite number >= 0."),
    ("schedule.step_every_epochs", float("inf"),
     "schedule.step_every_epochs=inf must be a finite number > 0."),
])
def test_an_epoch_count_that_is_not_finite_is_named(key, value, message):
    """--config.training.num_epochs=inf (train "for ever") was an OverflowError traceback once
    the data were checked, and an infinite warm-up or step-decay interval one at the start; a
    NaN warm-up was 'cannot convert float NaN to integer', naming no key."""
    config = load_config("configs/manet.py")
    config.schedule.name = "step"
    section, leaf = key.split(".")
    config[section][leaf] = value
    with pytest.raises(trainer.ConfigError) as e:
        trainer.validate_config(config)
    assert str(e.value) == message


@pytest.mark.parametrize(("config", "name", "message"), [
    ("vit", "manet", "model.dropout is not an option of model 'manet' (config key model.name), "
                     "whose options are: dtype, path_b_order, width. Each model has its own "
                     "config file: use configs/vit.py, configs/manet.py or configs/resnet50.py."),
    ("manet", "resnet", "model.path_b_order is not an option of model 'resnet'"),
])
def test_another_models_name_is_refused_by_its_options(config, name, message):
    """model.name=manet on configs/vit.py was a KeyError 'gelu_approximate' traceback."""
    config = load_config(f"configs/{config}.py:smoke")
    config.model.name = name
    with pytest.raises(trainer.ConfigError) as e:
        trainer.validate_config(config)
    assert str(e.value).startswith(message)


def test_nesterov_without_momentum_is_refused():
    """optax's SGD with momentum 0 drops Nesterov's too: it trained plain SGD, unannounced."""
    config = load_config("configs/resnet50.py")
    config.optimizer.momentum, config.optimizer.nesterov = 0.0, True
    with pytest.raises(UserError) as e:
        trainer.validate_config(config)
    assert str(e.value) == ("optimizer.nesterov=True needs a momentum (optimizer.momentum=0.0): "
                            "set optimizer.momentum, e.g. 0.9, or optimizer.nesterov=False for "
                            "plain SGD.")
    config.optimizer.momentum = 0.9
    trainer.validate_config(config)


@pytest.mark.parametrize("args", [
    ["-m", "cer_jax.train", "--config=configs/vit.py:smoke", "--workdir="],
    ["-m", "cer_jax.train", "--config=configs/vit.py:smoke", "--workdir", " "],
    ["-m", "cer_jax.fuse", "--workdirs=a,b", "--out="],
])
def test_an_empty_path_flag_is_one_line_before_any_work(tmp_path, args):
    """`--workdir=$WORKDIR` with the variable unset trained the whole run into the working
    directory (checkpoints/, export/, config.json among the user's files)."""
    out = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    flag = args[-1].strip() if "=" in args[-1] else f"{args[-2]}={args[-1]}"
    assert (out.returncode, out.stderr.strip().splitlines()) == (2, [
        f"error: {flag}: the path is empty; give a file or folder name (is a shell variable in "
        "it unset?)."])
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("args", "message"), [
    # `--workdir=runs/my run` unquoted: the shell's second word.
    (["-m", "cer_jax.train", "--config=configs/vit.py:smoke", "--workdir=runs/my", "run"],
     "error: Unexpected arguments: run (a value with spaces needs quotes); --help lists the "
     "flags."),
    (["-m", "cer_jax.synthetic"], "error: Give --out=DIR (and/or --preview=PNG); --help lists "
                                  "the flags."),
    # An override with no --config (absl: "Unknown command line flag 'config.training...'"),
    # or before it (ml_collections: "Found ... before a value for --config"): FATAL, status 1.
    (["-m", "cer_jax.train", "--config.training.num_steps=4", "--workdir=w"],
     "error: --config.training.num_steps=4 overrides a key of a config file: give the file "
     "first, --config=FILE (e.g. configs/vit.py), then its overrides."),
    (["-m", "cer_jax.train", "--config.optimizer.lr", "0.1", "--config=configs/vit.py:smoke",
      "--workdir=w"],
     "error: --config.optimizer.lr overrides a key of a config file: give the file first, "
     "--config=FILE (e.g. configs/vit.py), then its overrides."),
])
def test_a_usage_error_is_one_line_not_the_help_page(tmp_path, args, message):
    """Was absl's whole --help page (40 lines) with the message last, exit status 1."""
    out = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert (out.returncode, out.stderr.strip().splitlines()) == (2, [message])
    assert not list(tmp_path.iterdir())


CTRL_C_IN_A_GC_CALLBACK = """
import gc, os, signal, time
from cer_jax import cli

def main(argv):
    def callback(phase, info):  # as JAX's _xla_gc_callback, where a Ctrl-C may land
        if phase == "start":
            gc.callbacks.remove(callback)
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
    gc.callbacks.append(callback)
    gc.collect()
    for _ in range(100):
        time.sleep(0.1)
    print("went on")

cli.run(main)
"""


def test_a_ctrl_c_in_a_garbage_collector_callback_still_stops_the_tool():
    """Ctrl-C in the first seconds of a tool often raised its KeyboardInterrupt inside JAX's
    garbage-collector callback: Python printed "Exception ignored in: _xla_gc_callback" and the
    tool went on (a whole training run, exit status 0)."""
    out = subprocess.run([sys.executable, "-c", CTRL_C_IN_A_GC_CALLBACK], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert (out.returncode, out.stderr.strip().splitlines()[-1:]) == (
        128 + 2, ["error: stopped by Ctrl-C."]), out.stderr
    assert "went on" not in out.stdout and "Exception ignored" not in out.stderr
