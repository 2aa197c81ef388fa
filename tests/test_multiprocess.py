"""Two real processes train the production ViT recipe together, as two hosts of a slice.

The processes run on this machine's CPU backend (loopback coordinator, gloo collectives), one
device each, and the run is checked against a single process driving two devices with the same
global batch: the data stream depends on `input.num_data_shards`, not on the process count, so
the two runs compute the same function and must agree to float tolerance. Process 1 alone gets
SIGTERM; both processes must save the same step and exit, a relaunch resumes there, and the
finished run's export, logs and events are written once. The pair starts on a data cache of its
own, so its two processes find the dataset unbuilt at the same moment. Another pair (two devices
each, tests/two_hosts_eval.py) evaluates on a mesh that interleaves the hosts' devices. Two
cheap pairs stop before any data: on an error that one host alone meets, and on a workdir that
each host has its own of.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import two_hosts_eval

from cer_jax import checkpointing, export, sharding

# The tests share the module's runs (minutes of training): one xdist worker builds them once.
pytestmark = pytest.mark.xdist_group("multiprocess")

ROOT = Path(__file__).resolve().parents[1]
TOTAL_STEPS = 12
# Only size (and where the synthetic data lives) differs from configs/vit.py.
SIZE = [
    "--config.model.variant=test/8",
    "--config.input.image_size=32",
    "--config.input.resize_size=36",
    "--config.training.global_batch_size=8",
    "--config.eval.global_batch_size=16",
    f"--config.training.num_steps={TOTAL_STEPS}",
    "--config.training.eval_every_steps=6",
    "--config.training.log_every_steps=1",
    "--config.checkpoint.every_steps=3",
    "--config.input.num_data_shards=2",
    "--config.dataset.synthetic=True",
    "--config.dataset.synthetic_num_train_images=60",
    "--config.dataset.synthetic_num_test_images=20",
]

# `python -m cer_jax.fuse` whose export writes take seconds, as on a remote bucket.
SLOW_EXPORT_FUSE = (
    "import runpy, time; from cer_jax import export; write = export._write_atomically; "
    "export._write_atomically = lambda *args: (time.sleep(3), write(*args)); "
    "runpy.run_module('cer_jax.fuse', run_name='__main__')"
)


# `python -m cer_jax.fuse` on a full disk: process 0's report write fails.
FULL_DISK_FUSE = (
    "import errno, os, runpy; from cer_jax.fusion import report; "
    "report.write_report = lambda *args: (_ for _ in ()).throw("
    "OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))); "
    "runpy.run_module('cer_jax.fuse', run_name='__main__')"
)

# `python -m cer_jax.fuse` where the earlier ensemble under --out cannot be removed.
UNREMOVABLE_ENSEMBLE_FUSE = (
    "import errno, os, runpy; from etils import epath; cls = type(epath.Path('/')); "
    "rmtree = cls.rmtree; cls.rmtree = lambda self, *a, **k: (_ for _ in ()).throw("
    "PermissionError(errno.EACCES, os.strerror(errno.EACCES))) if self.name == 'ensemble' "
    "else rmtree(self, *a, **k); "
    "runpy.run_module('cer_jax.fuse', run_name='__main__')"
)


def _command(workdir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cer_jax.train", "--config=configs/vit.py",
            f"--workdir={workdir}", f"--config.dataset.cache_dir={cache_dir}", *SIZE, *extra]


def _env(devices: int) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_pair(workdir: Path, cache_dir: Path, logs: Path, tag: str,
                 command: list[str] | None = None, devices: int = 1,
                 own: tuple[list[str], list[str]] = ([], [])) -> list[subprocess.Popen]:
    """Two processes of `command` (default: the training) joined by a loopback coordinator,
    each with `devices` CPU devices and its `own` arguments (what differs between hosts)."""
    address = f"127.0.0.1:{_free_port()}"
    command = command or _command(workdir, cache_dir)
    procs = []
    for index in range(2):
        log = open(logs / f"{tag}-{index}.log", "w")  # noqa: SIM115 (closed by the OS at exit)
        procs.append(subprocess.Popen(
            [*command, *own[index], f"--coordinator_address={address}", "--num_processes=2",
             f"--process_id={index}"],
            cwd=ROOT, env=_env(devices), stdout=log, stderr=subprocess.STDOUT,
        ))
    return procs


def _wait(procs: list[subprocess.Popen], logs: Path, tag: str, timeout: float = 600,
          status: int = 0) -> list[str]:
    """The processes' logs, once each has exited with `status`."""
    texts = []
    for index, proc in enumerate(procs):
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            code = "timeout"
        text = (logs / f"{tag}-{index}.log").read_text()
        assert code == status, f"process {index} of {tag}: exit {code}\n{text[-4000:]}"
        texts.append(text)
    return texts


def _stopped_step(log: str) -> int:
    for line in log.splitlines():
        if "Stopped at step" in line and "(preempted)" in line:
            return int(line.split("Stopped at step ")[1].split()[0])
    raise AssertionError(f"no preemption stop in the log:\n{log[-3000:]}")


def _events_pids(workdir: Path) -> list[int]:
    """The writer pid of each TensorBoard events file (TF names them ...<host>.<pid>.<n>...)."""
    return sorted(int(p.name.split(".")[-3]) for p in workdir.glob("events.out.tfevents.*"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(single-process workdir, two-process workdir, logs dir, {tag: [pids]}, stop step)."""
    base = tmp_path_factory.mktemp("multiprocess")
    cache_dir, logs = base / "cache", base / "logs"
    logs.mkdir()
    single = base / "single"
    reference = subprocess.run(
        _command(single, cache_dir), cwd=ROOT, env=_env(2), capture_output=True, text=True,
        timeout=900,
    )
    assert reference.returncode == 0, reference.stderr[-4000:]

    pair, pair_cache = base / "pair", base / "pair_cache"
    procs = _launch_pair(pair, pair_cache, logs, "first")
    pids = {"first": [p.pid for p in procs]}
    first_checkpoint = pair / checkpointing.LATEST_DIR / "3"
    deadline = time.monotonic() + 600
    while not first_checkpoint.exists() and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # One host is told; both must stop together.
    # Not 0: a launcher's next step (the next member, the fusion) must not start.
    first = _wait(procs, logs, "first", status=128 + signal.SIGTERM)
    # The shared cache was built once, by process 0, while process 1 waited for it.
    assert ["(nothing is downloaded)" in log for log in first] == [True, False]
    step = _stopped_step(first[0])
    assert _stopped_step(first[1]) == step
    assert 3 <= step < TOTAL_STEPS
    for log in first:  # the told host and the other one alike
        assert log.rstrip().splitlines()[-1] == (
            f"error: stopped by SIGTERM at step {step}, saved in {pair}: run the same command "
            "again to resume.")
    latest = sorted(int(p.name) for p in (pair / checkpointing.LATEST_DIR).iterdir()
                    if p.name.isdigit())
    assert latest[-1] == step
    assert not (pair / export.EXPORT_DIR).exists()

    procs = _launch_pair(pair, pair_cache, logs, "second")
    pids["second"] = [p.pid for p in procs]
    second = _wait(procs, logs, "second")
    for log in second:
        assert f"at step {step}." in log  # "Resumed <workdir> at step <step>."
    return single, pair, pids, step, logs


def test_two_processes_agree_with_one_after_a_preemption(runs):
    single, pair, *_ = runs
    one, two = export.load_export(str(single)), export.load_export(str(pair))
    assert one[0]["metrics"] == two[0]["metrics"]
    assert one[0]["step"] == two[0]["step"]
    for split, arrays in one[1].items():
        other = two[1][split]
        assert arrays["file_names"].tolist() == other["file_names"].tolist()  # stored order
        np.testing.assert_array_equal(arrays["labels"], other["labels"])
        np.testing.assert_allclose(other["logits"], arrays["logits"], rtol=1e-4, atol=1e-4)
    mesh = sharding.create_mesh()
    *_, state_one, _ = checkpointing.restore_best_state(str(single), mesh)
    *_, state_two, _ = checkpointing.restore_best_state(str(pair), mesh)
    flat_one = dict(_leaves(state_one))
    flat_two = dict(_leaves(state_two))
    assert flat_one.keys() == flat_two.keys()
    for key, value in flat_one.items():  # parameters and the RNG state
        np.testing.assert_allclose(flat_two[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_every_example_is_evaluated_once_across_the_hosts(runs):
    _, pair, *_ = runs
    manifest, arrays = export.load_export(str(pair))
    sizes = json.loads((pair / checkpointing.CONFIG_FILE).read_text())["dataset_info"][
        "split_sizes"]
    for split, split_arrays in arrays.items():
        names = split_arrays["file_names"].tolist()
        assert len(names) == len(set(names)) == sizes[split]
        assert manifest["metrics"][split]["num_examples"] == sizes[split]


def test_logs_events_and_export_are_written_once(runs):
    _, pair, pids, *_ = runs
    # One events file per launch, each written by process 0.
    assert _events_pids(pair) == sorted([pids["first"][0], pids["second"][0]])
    names = sorted(p.name for p in (pair / export.EXPORT_DIR).iterdir())
    assert names == ["export.json", "test.npz", "train_fit.npz", "validation.npz"]
    assert not list(pair.glob(".*"))  # no temporary export or config left behind


def _without_test_export(workdir: Path, copy: Path) -> Path:
    """A copy of `workdir` whose export lacks the test split, which a fusion must re-export."""
    shutil.copytree(workdir, copy)
    manifest_path = copy / export.EXPORT_DIR / export.EXPORT_FILE
    manifest = json.loads(manifest_path.read_text())
    del manifest["splits"]["test"], manifest["metrics"]["test"]
    manifest_path.write_text(json.dumps(manifest))
    (copy / export.EXPORT_DIR / "test.npz").unlink()
    return copy


def _slow_fuse_command(workdirs: list[Path], out: Path) -> list[str]:
    return [sys.executable, "-c", SLOW_EXPORT_FUSE, f"--workdirs={','.join(map(str, workdirs))}",
            f"--out={out}", "--config.feature_mlp.max_epochs=5",
            "--config.strategies=performance_weighted,uniform_probabilities,optimised_weights"]


def test_two_processes_fuse_and_write_the_report_once(runs):
    single, pair, *_, logs = runs
    # A member whose export lacks the test split: both processes re-export it, and process 1
    # must read the export that process 0 writes (slowly, as to a bucket), not the old one.
    stale = _without_test_export(single, pair.parent / "stale")
    out = pair.parent / "fusion"
    procs = _launch_pair(pair, pair, logs, "fuse", _slow_fuse_command([stale, pair], out))
    _wait(procs, logs, "fuse")
    report = json.loads((out / "report.json").read_text())
    exported = export.load_export(str(pair))[0]["metrics"]["test"]
    member = report["members"][1]["metrics"]["test"]
    assert (member["accuracy"], member["macro_f1"]) == (exported["accuracy"],
                                                         exported["macro_f1"])
    # The re-export on two processes is the single process's own test export.
    reexported, original = export.load_export(str(stale))[1]["test"], export.load_export(
        str(single))[1]["test"]
    assert reexported["file_names"].tolist() == original["file_names"].tolist()
    np.testing.assert_allclose(reexported["logits"], original["logits"], rtol=1e-4, atol=1e-4)
    assert report["members"][0]["metrics"]["test"]["accuracy"] == export.load_export(
        str(single))[0]["metrics"]["test"]["accuracy"]
    assert _events_pids(out) == [procs[0].pid]  # TensorBoard events from process 0 only
    assert (out / "ensemble" / "ensemble.json").exists()
    assert not list(out.glob(".*"))

def test_a_member_workdir_that_one_host_lacks_stops_every_host_before_the_fusion(runs):
    """Process 1 does not find a member workdir that process 0 fuses: both stop with a line
    before any work, and no report is written."""
    single, pair, *_, logs = runs
    out, missing = pair.parent / "fusion_one_host", pair.parent / "only_on_host_0"
    procs = _launch_pair(pair, pair, logs, "fuse_one_host", _slow_fuse_command([single, pair], out),
                         own=([], [f"--workdirs={single},{missing}"]))
    first, second = _wait(procs, logs, "fuse_one_host", timeout=120, status=2)
    assert _last_line(second).startswith(f"error: Member workdir {missing} does not exist")
    assert _last_line(first).startswith("error: process 1 stopped in the fusion's checks")
    assert not out.exists()


def test_a_member_re_exports_on_devices_its_evaluation_batch_does_not_split_over(runs):
    """Trained on 2 devices (evaluation batch 16), re-exported by a fusion on 3: the batch is
    rounded up (evaluation pads and masks), the rows are the same (it failed with XLA's
    IndivisibleError and a traceback)."""
    single, pair, *_ = runs
    copy = pair.parent / "on_three_devices"
    shutil.copytree(single, copy)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from cer_jax import export; "
         "export.export_workdir(sys.argv[1], ['test'])", str(copy)],
        cwd=ROOT, env=_env(3), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = export.load_export(str(copy))[1]["test"], export.load_export(str(single))[1]["test"]
    assert got["file_names"].tolist() == want["file_names"].tolist()
    np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-4, atol=1e-4)


def test_sigterm_stops_a_multi_process_fuse_at_once(runs):
    """Outside the training loop SIGTERM keeps its default action on every process. JAX's
    preemption service, started by jax.distributed.initialize, used to catch it and only record
    it: the fusion ran on to the end (or to the SIGKILL that follows a preemption notice)."""
    single, pair, *_, logs = runs
    stale = _without_test_export(single, pair.parent / "stale_for_sigterm")
    out = pair.parent / "fusion_stopped"
    procs = _launch_pair(pair, pair, logs, "fuse_sigterm", _slow_fuse_command([stale, pair], out))
    deadline = time.monotonic() + 300
    while not all("Exporting splits" in (logs / f"fuse_sigterm-{i}.log").read_text()
                  for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), (
            logs / "fuse_sigterm-0.log").read_text()[-3000:]
        time.sleep(0.05)
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=60))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append("still running 60 s after SIGTERM")
    assert codes == [-signal.SIGTERM, -signal.SIGTERM]
    assert not (out / "report.json").exists()


def test_eval_rows_keep_their_whole_file_names_when_the_mesh_interleaves_hosts(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    # Run from the checkout (`-c` puts the working directory first on sys.path, as `-m` does
    # for the trainer): a script's own folder would come first instead.
    command = [sys.executable, "-c", "import runpy; runpy.run_path('tests/two_hosts_eval.py', "
               "run_name='__main__')", str(tmp_path)]
    _wait(_launch_pair(tmp_path, tmp_path, logs, "eval", command, devices=2), logs, "eval")
    expected = [two_hosts_eval.file_name(i) for i in range(two_hosts_eval.SIZE)]
    assert max(len(name.encode()) for name in expected) > 700
    for index in range(2):
        got = json.loads((tmp_path / f"{index}.json").read_text())
        assert got["mesh"] == [0, 1, 0, 1]  # a host's rows are not one block of the batch
        assert got["create_mesh"] == [0, 0, 1, 1]
        # Rows in stored order, each with its own example's logits, label and whole name.
        assert got["example_ids"] == list(range(two_hosts_eval.SIZE))
        assert got["labels"] == [i % 7 for i in range(two_hosts_eval.SIZE)]
        assert got["file_names"] == expected


def _last_line(log: str) -> str:
    return log.rstrip().splitlines()[-1]


def test_an_input_error_on_one_host_stops_every_host(tmp_path):
    """A weights file that only one host lacks: that host stops on it, and the other one too,
    with a line that names it. The other went on alone into the data's first collective and
    waited there (on CPU, until a traceback 30 s later; on a TPU, for ever)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    missing = tmp_path / "only_on_host_0.npz"
    procs = _launch_pair(tmp_path / "run", tmp_path / "cache", logs, "one_host_error",
                         own=([], [f"--config.init.checkpoint={missing}"]))
    first, second = _wait(procs, logs, "one_host_error", timeout=120, status=2)
    assert _last_line(second).startswith(f"error: init.checkpoint={str(missing)!r}: no such")
    assert _last_line(first).startswith("error: process 1 stopped in the checks before training")
    assert not (tmp_path / "cache").exists()  # no process went on to the data


def test_a_data_error_on_one_host_before_the_datas_barrier_stops_every_host(tmp_path):
    """A data folder that is a file on one host only: that host stops before the data's first
    collective, the other in it. Process 0 took the failure for its own build's ("Process 0
    could not prepare"), then waited for a second vote that the gone host never gave."""
    logs = tmp_path / "logs"
    logs.mkdir()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    procs = _launch_pair(tmp_path / "run", tmp_path / "cache", logs, "one_host_data_error",
                         own=([], [f"--config.dataset.cache_dir={blocker}"]))
    first, second = _wait(procs, logs, "one_host_data_error", timeout=120, status=2)
    assert _last_line(second).startswith(f"error: config.dataset.cache_dir={str(blocker)!r}: ")
    assert _last_line(first).startswith("error: process 1 stopped in the preparation of ")


def test_a_report_that_process_0_cannot_write_stops_every_host(tmp_path):
    """Process 0 fails to write the fusion report (a full disk): every process stops with a
    line and exit status 2. Process 0 ended in a traceback (status 1) while process 1 went on
    and printed 'Report written to OUT' (with checkpointed members, it went into the ensemble's
    restore without process 0)."""
    from test_fuse import QUALITY_SEED, make_outputs, write_export

    logs = tmp_path / "logs"
    logs.mkdir()
    members = [write_export(str(tmp_path / name), name, make_outputs(*QUALITY_SEED[name]))
               for name in ("vit", "manet")]
    out = tmp_path / "fusion"
    command = [sys.executable, "-c", FULL_DISK_FUSE, f"--workdirs={','.join(members)}",
               f"--out={out}", "--config.strategies=uniform_logits", "--config.ablation=False",
               "--config.bootstrap_samples=0"]
    procs = _launch_pair(tmp_path, tmp_path, logs, "full_disk", command)
    first, second = _wait(procs, logs, "full_disk", timeout=120, status=2)
    assert _last_line(first) == (
        f"error: --out={out} (config key out): the report could not be written there (No "
        "space left on device); free space there or give a folder this user may write, and "
        "run the fusion again.")
    assert _last_line(second) == (
        "error: process 0 stopped in the writing of the fusion report on an error that this "
        f"process did not meet (process 0 writes it to {out}: see its log).")


def test_a_two_process_fuse_prints_its_table_once(tmp_path):
    """Every process computes the report, process 0 writes it: every process printed the
    summary table and 'Report written to', so `launch/tpu.sh fuse` on a slice of N hosts
    showed the table N times, interleaved."""
    from test_fuse import QUALITY_SEED, make_outputs, write_export

    logs = tmp_path / "logs"
    logs.mkdir()
    members = [write_export(str(tmp_path / name), name, make_outputs(*QUALITY_SEED[name]))
               for name in ("vit", "manet")]
    out = tmp_path / "fusion"
    command = [sys.executable, "-m", "cer_jax.fuse", f"--workdirs={','.join(members)}",
               f"--out={out}", "--config.strategies=uniform_logits", "--config.ablation=False",
               "--config.bootstrap_samples=0"]
    first, second = _wait(_launch_pair(tmp_path, tmp_path, logs, "fuse_print", command), logs,
                          "fuse_print", timeout=120)
    assert _last_line(first) == (f"Report written to {out} (report.md, report.json, PNGs, "
                                 "TensorBoard events).")
    assert "| uniform_logits | fusion (best) |" in first
    assert "| system |" not in second and "Report written to" not in second


# `python -m cer_jax.fuse` where process 1 reads each member at another moment than process 0,
# as while the member's trainer replaces its export (on gs://, object by object) and saves a
# better step: it finds the export stale, and first a best step that is gone.
OTHER_MOMENT_FUSE = (
    "import runpy, sys; from cer_jax import checkpointing, export\n"
    "if '--process_id=1' in sys.argv:\n"
    "    export.export_is_current = lambda workdir: False\n"
    "    real, calls = checkpointing.best_step, []\n"
    "    checkpointing.best_step = lambda w: real(w) - (calls.append(w) or len(calls) == 1)\n"
    "runpy.run_module('cer_jax.fuse', run_name='__main__')"
)


@pytest.fixture(scope="module")
def trained_vit(tmp_path_factory):
    """(workdir, its export) of a finished 4-step ViT test/8 run on the synthetic data."""
    from conftest import smoke_config

    from cer_jax import trainer

    base = tmp_path_factory.mktemp("trained_vit")
    config = smoke_config("vit", base / "cache", **{
        "model.variant": "test/8", "input.image_size": 32, "input.resize_size": 36,
        "training.num_steps": 4, "training.eval_every_steps": 2,
        "training.global_batch_size": 8, "eval.global_batch_size": 16})
    trainer.train_and_evaluate(config, str(base / "vit"))
    return base / "vit", export.load_export(str(base / "vit"))


def test_an_init_workdir_that_one_host_lacks_stops_every_host(tmp_path, trained_vit):
    """Reading init.workdir's best step made an Orbax CheckpointManager, whose start is a
    barrier of every process: the host that lacked the workdir voted its error meanwhile, and
    process 0 died in Orbax's barrier ('sync_global_devices name mismatch', a traceback; on a
    TPU, a wait). Both now stop with a line."""
    workdir, _ = trained_vit
    logs = tmp_path / "logs"
    logs.mkdir()
    missing = tmp_path / "only_on_host_0"
    procs = _launch_pair(tmp_path / "run", tmp_path / "cache", logs, "one_host_init_workdir",
                         command=[*_command(tmp_path / "run", tmp_path / "cache"),
                                  f"--config.init.workdir={workdir}"],
                         own=([], [f"--config.init.workdir={missing}"]))
    first, second = _wait(procs, logs, "one_host_init_workdir", timeout=120, status=2)
    assert _last_line(second).startswith(f"error: init.workdir={str(missing)!r}: ")
    assert _last_line(first).startswith("error: process 1 stopped in the checks before training")


def test_hosts_that_read_a_member_at_other_moments_export_it_together(tmp_path, trained_vit):
    """Process 1 alone took a member's export for stale and re-exported it (an evaluation, all
    collectives) while process 0 read the export: both waited, in collectives that do not
    match. Nor may the processes restore different best steps into one replicated model. They
    now decide together, on the newest step any of them saw."""
    member, trained = tmp_path / "vit", trained_vit[1]
    shutil.copytree(trained_vit[0], member)
    copy = tmp_path / "vit_copy"
    shutil.copytree(member, copy)
    logs = tmp_path / "logs"
    logs.mkdir()
    out = tmp_path / "fusion"
    command = [sys.executable, "-c", OTHER_MOMENT_FUSE, f"--workdirs={member},{copy}",
               f"--out={out}", "--config.strategies=uniform_logits", "--config.ablation=False",
               "--config.bootstrap_samples=0"]
    _wait(_launch_pair(tmp_path, tmp_path, logs, "other_moment", command, devices=1), logs,
          "other_moment", timeout=180)
    for workdir in (member, copy):
        manifest, arrays = export.load_export(str(workdir))
        assert manifest["step"] == trained[0]["step"]
        for split, split_arrays in trained[1].items():  # every row scored by the best model
            assert arrays[split]["file_names"].tolist() == split_arrays["file_names"].tolist()
            np.testing.assert_allclose(arrays[split]["logits"], split_arrays["logits"],
                                       rtol=1e-4, atol=1e-4)
    assert (out / "report.json").exists() and (out / "ensemble" / "ensemble.json").exists()


def test_an_earlier_ensemble_that_process_0_cannot_remove_stops_every_host(tmp_path):
    """Members without a checkpoint (no new ensemble) and an earlier ensemble under --out that
    process 0 cannot remove: every process stops with a line and exit status 2. Process 0
    ended in a traceback while process 1 printed 'Report written to OUT' and exited 0."""
    from test_fuse import QUALITY_SEED, make_outputs, write_export

    logs = tmp_path / "logs"
    logs.mkdir()
    members = [write_export(str(tmp_path / name), name, make_outputs(*QUALITY_SEED[name]))
               for name in ("vit", "manet")]
    out = tmp_path / "fusion"
    (out / "ensemble").mkdir(parents=True)
    (out / "ensemble" / "ensemble.json").write_text("{}")
    command = [sys.executable, "-c", UNREMOVABLE_ENSEMBLE_FUSE,
               f"--workdirs={','.join(members)}", f"--out={out}",
               "--config.strategies=uniform_logits", "--config.ablation=False",
               "--config.bootstrap_samples=0"]
    procs = _launch_pair(tmp_path, tmp_path, logs, "unremovable", command)
    first, second = _wait(procs, logs, "unremovable", timeout=120, status=2)
    assert _last_line(first).startswith(
        f"error: The earlier ensemble at {out / 'ensemble'} could not be removed (Permission "
        "denied)")
    assert _last_line(second) == (
        "error: process 0 stopped in the removal of the earlier ensemble on an error that this "
        f"process did not meet (process 0 removes {out / 'ensemble'}: see its log).")


def test_a_workdir_each_host_has_its_own_of_is_refused(tmp_path):
    """A --workdir on each host's own disk (as two folders here): refused on every host before
    any data is read. Process 1 failed in a background thread after Orbax's 10 minutes of
    waiting for a checkpoint folder that only process 0 had made, and process 0 hung."""
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = _launch_pair(tmp_path, tmp_path / "cache", logs, "own_workdirs",  # the last wins
                         own=([f"--workdir={tmp_path / 'w0'}"], [f"--workdir={tmp_path / 'w1'}"]))
    first, second = _wait(procs, logs, "own_workdirs", timeout=120, status=2)
    assert _last_line(second).startswith(
        f"error: --workdir={tmp_path / 'w1'} is not shared by every process: process 1 ")
    assert _last_line(first).startswith("error: process 1 stopped in the check of --workdir")
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "w0").exists()  # the probe, and the folder it made, are gone


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}/{key}")
    elif jax.dtypes.issubdtype(tree.dtype, jax.dtypes.prng_key):  # dropout's RNG state
        yield prefix, np.asarray(jax.random.key_data(tree))
    else:
        yield prefix, np.asarray(tree)
