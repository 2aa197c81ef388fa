"""The benchmark CLI at a tiny size: JSON figures, FLOPs against analytic counts, no TensorFlow,
PyTorch ratios. Performance figures are printed by the CLI, never asserted here."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

from cer_jax.bench import costs, ensemble_time, input_bench, peaks, report, throughput

ACCELERATOR_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "accelerator.sh"

# Runs the CLI in a fresh interpreter, then reports whether TensorFlow was ever imported.
RUN_CLI = """
import runpy, sys
sys.argv = ["cer_jax.bench", *sys.argv[1:]]
try:
    runpy.run_module("cer_jax.bench", run_name="__main__", alter_sys=True)
except SystemExit as e:
    if e.code:
        raise
print("TENSORFLOW_IMPORTED=" + str(any(m.split(".")[0] == "tensorflow" for m in sys.modules)))
"""


# The three members through their own recipe files (configs/vit.py, resnet50.py, manet.py: each
# optimizer and loss, and each PyTorch reference), in bfloat16 as bench/accelerator.sh runs them.
SPECS = ("vit:test/8", "resnet:18", "manet:16")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-c", RUN_CLI, f"--models={','.join(SPECS)}", "--image_size=32",
         "--batch_size=4", "--steps=2", "--warmup=1", "--precision=bfloat16",
         "--compare_torch", f"--json={out}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.xdist_group("bench_cli")  # one worker runs the CLI once
def test_cli_writes_every_figure_and_never_imports_tensorflow(cli_run):
    stdout, payload = cli_run
    assert "TENSORFLOW_IMPORTED=False" in stdout
    assert payload["machine"]["backend"] == jax.default_backend()
    assert payload["machine"]["glibc_tunables"] == os.environ.get("GLIBC_TUNABLES", "")
    assert tuple(r["spec"] for r in payload["models"]) == SPECS
    for r in payload["models"]:
        assert (r["batch_size"], r["image_size"], r["precision"]) == (4, 32, "bfloat16")
        for key in ("compile_train_s", "compile_eval_s", "train_images_per_s",
                    "eval_images_per_s", "train_images_per_s_pipelined",
                    "eval_images_per_s_pipelined", "train_flops_per_image",
                    "eval_flops_per_image", "train_flops_per_s", "eval_flops_per_s",
                    "train_program_bytes", "params"):
            assert r[key] > 0, (r["spec"], key)
        for key in ("train_page_faults_per_step", "eval_page_faults_per_step",
                    "train_kernel_s_per_step", "eval_kernel_s_per_step"):
            assert r[key] >= 0, (r["spec"], key)
        assert r["train_mfu"] is None and r["eval_mfu"] is None  # CPU: no peak, no MFU
        assert r["train_flops_per_image"] > 2 * r["eval_flops_per_image"], r["spec"]
        assert f"| {r['spec']} | 4 | 32 | bfloat16 |" in stdout
    r = payload["models"][0]
    # The eval program is the forward pass plus the loss: the costs command's forward count.
    model = costs.abstract_model("vit", num_classes=11, variant="test/8", image_size=32,
                                 dtype="bfloat16")
    forward = costs.forward_flops(model, image_size=32, batch_size=4)
    assert forward <= r["eval_flops_per_image"] <= 1.05 * forward
    assert set(payload["ensemble"]["members"]) == set(SPECS)
    assert payload["ensemble"]["total_s"] > 0


@pytest.mark.xdist_group("bench_cli")  # one worker runs the CLI once
def test_compare_torch_gives_ratios_for_the_same_network(cli_run):
    stdout, payload = cli_run
    for r in payload["models"]:
        # HF ViT / ResNet configured as our variant; MA-Net as the authors' code at our width.
        assert r["torch"]["params"] == r["params"], r["spec"]
        assert r["ratio_train"] > 0 and r["ratio_eval"] > 0, r["spec"]
    assert "train ratio" in stdout


def test_reference_steps_alternate_with_ours_so_drift_cancels(monkeypatch):
    """A fake clock: the host slows threefold early in the run, and a reference step costs
    twice ours at the speed of the moment. Paired, the ratio stays 2; timing one side after
    the other would give 6."""
    clock = {"now": 0.0}
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: clock["now"])

    def slowdown():
        return 1.0 if clock["now"] < 10.0 else 3.0

    def ours():
        clock["now"] += 1.0 * slowdown()

    def reference():
        clock["now"] += 2.0 * slowdown()

    timed = throughput.time_steps(ours, warmup=1, steps_=5, reference=reference)
    assert timed["ratio"] == pytest.approx(2.0)
    assert timed["reference_median_s"] == pytest.approx(2.0 * timed["median_s"])


def vit_matmul_flops(size: int, patch: int, width: int, depth: int, mlp: int, k: int) -> int:
    """2 FLOPs per multiply-add of the ViT's matrix products (class token included)."""
    patches = (size // patch) ** 2
    t = patches + 1
    total = 2 * patches * patch * patch * 3 * width  # patch embedding
    per_block = 2 * t * width * 3 * width + 2 * 2 * t * t * width  # qkv, scores, weighted sum
    per_block += 2 * t * width * width + 2 * 2 * t * width * mlp  # out projection, MLP
    return total + depth * per_block + 2 * width * k


def test_vit_forward_flops_match_the_analytic_count():
    model = costs.abstract_model("vit", num_classes=11, variant="mu/4", image_size=32)
    counted = costs.forward_flops(model, image_size=32, batch_size=2)
    analytic = vit_matmul_flops(32, 4, 64, 4, 128, 11)
    # XLA also counts LayerNorm, softmax, GELU and the adds: a few percent on top.
    assert analytic <= counted <= 1.15 * analytic, (counted, analytic)


def test_dense_layer_flops_are_exact():
    x = jax.ShapeDtypeStruct((8, 96), jnp.float32)
    w = jax.ShapeDtypeStruct((96, 40), jnp.float32)
    assert costs.xla_flops(lambda a, b: a @ b, x, w) == 2 * 8 * 96 * 40


def test_peak_table_lookup():
    assert peaks.peak_flops("TPU v5 lite", "bfloat16") == 197e12
    assert peaks.peak_flops("TPU v5p", "bfloat16") == 459e12
    assert peaks.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert peaks.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert peaks.peak_flops("NVIDIA A100-SXM4-80GB", "float32") == 156e12
    assert peaks.peak_flops("NVIDIA H200", "bfloat16") == 989e12
    assert peaks.peak_flops("cpu", "float32") is None
    # The NVL cards are rated below the SXM ones and not listed: no MFU rather than a wrong one.
    assert peaks.peak_flops("NVIDIA H100 NVL", "bfloat16") is None
    assert peaks.peak_flops("NVIDIA H200 NVL", "float32") is None
    # A MIG slice (CUDA's name for it) has a fraction of the chip: no MFU against the chip's.
    assert peaks.peak_flops("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "bfloat16") is None
    assert peaks.peak_flops("NVIDIA A100-SXM4-40GB MIG 3g.20gb", "float32") is None
    assert peaks.lookup("NVIDIA GH200 480GB").name == "GH200"
    assert peaks.lookup("NVIDIA A100 80GB PCIe").name == "A100"
    assert peaks.lookup("TPU v6 lite").name == "TPU v6e"
    # Another product whose name holds a listed one: no MFU rather than one against the A100's.
    assert peaks.peak_flops("NVIDIA RTX A1000 6GB Laptop GPU", "bfloat16") is None


def test_input_bound_and_ensemble_estimate():
    fast_input = {"images_per_s": 800.0, "images_per_s_per_core": 100.0}
    assert input_bench.bound(500.0, fast_input) == {
        "bound_by": "step", "host_cores_needed": 5, "training_images_per_s": 500.0}
    assert input_bench.bound(1000.0, fast_input)["bound_by"] == "input"
    member = {"spec": "m", "compile_train_s": 10.0, "compile_eval_s": 5.0,
              "train_images_per_s_pipelined": 1000.0, "eval_images_per_s_pipelined": 2000.0,
              "num_epochs": 2.0, "recipe_batch_size": 100}
    # By hand from RAF-DB compound (spec/datasets.md): 3,162 train = 2,846 train_fit + 316
    # validation, 792 test. 2,846 // 100 = 28 steps an epoch; each epoch evaluates validation
    # and test, and the final export evaluates all three splits, each padded to whole batches
    # of 100 as the trainer evaluates them: 400 + 800 images, and 2,900 + 400 + 800.
    input_bound = {**member, "spec": "slow input", "num_epochs": 2.5,
                   "training_images_per_s": 500.0}
    estimate = ensemble_time.ensemble_estimate([member, input_bound])
    assert estimate["members"]["m"] == pytest.approx({
        "compile_s": 15.0, "steps": 56, "train_s": 56 * 100 / 1000.0,
        "eval_s": (2 * (400 + 800) + 4100) / 2000.0, "total_s": 15.0 + 5.6 + 3.25})
    slow = estimate["members"]["slow input"]  # 2.5 x 28 = 70 steps, fed at 500 img/s
    assert (slow["steps"], slow["train_s"]) == (70, pytest.approx(70 * 100 / 500.0))
    # Evaluated at steps 28, 56 and the last, 70: three evaluations, not 2.5.
    assert slow["eval_s"] == pytest.approx((3 * (400 + 800) + 4100) / 2000.0)
    assert estimate["total_s"] == pytest.approx(23.85 + 15.0 + 14.0 + 3.85)
    assert estimate["dominated_by"] == "compile"  # 30 s against 19.6 s training, 7.1 s eval


def test_the_ensemble_estimate_counts_a_configs_num_steps_and_eval_every_steps():
    """configs/vit.py:smoke trains training.num_steps=1000 steps and evaluates every 250: the
    estimate took 1000 x 96 / 2,846 = 33.7 "epochs", so 979 steps and 33.7 evaluations."""
    member = {"spec": "vit", "compile_train_s": 0.0, "compile_eval_s": 0.0,
              "train_images_per_s_pipelined": 960.0, "eval_images_per_s_pipelined": 1000.0,
              "num_epochs": 1000 * 96 / 2846, "recipe_batch_size": 96, "num_steps": 1000,
              "eval_every_steps": 250}
    m = ensemble_time.ensemble_estimate([member])["members"]["vit"]
    assert (m["steps"], m["train_s"]) == (1000, pytest.approx(100.0))
    # Padded to batches of 96: validation 4 x 96 = 384, test 9 x 96 = 864, train_fit 2,880.
    assert m["eval_s"] == pytest.approx((4 * (384 + 864) + 2880 + 384 + 864) / 1000.0)
    # An eval_every_steps alone (epochs as the recipe): every 100 of 30 x 29 = 870 steps, and
    # the last one: 9 evaluations, not 30.
    recipe = {**member, "num_epochs": 30.0, "num_steps": None, "eval_every_steps": 100}
    m = ensemble_time.ensemble_estimate([recipe])["members"]["vit"]
    assert m["steps"] == 870
    assert m["eval_s"] == pytest.approx((9 * (384 + 864) + 2880 + 384 + 864) / 1000.0)


def test_the_benchmark_json_carries_the_configs_num_steps_and_eval_every_steps(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "cer_jax.bench", "--models=configs/vit.py:smoke,resnet:18",
         "--image_size=32", "--batch_size=4", "--steps=1", "--warmup=0", f"--json={out}"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    smoke, recipe = json.loads(out.read_text())["models"]
    assert (smoke["num_steps"], smoke["eval_every_steps"]) == (1000, 250)
    assert (recipe["num_steps"], recipe["eval_every_steps"]) == (None, None)
    assert "configs/vit.py:smoke: 1000 steps," in proc.stdout


def test_an_ensemble_slowed_by_its_input_pipeline_names_the_input_as_its_largest_part():
    """Issue 12: a missed goal names the part that dominates (compile, input, step...). A
    member whose training runs at the pipeline's rate spends its train time waiting on input:
    "train" would send the user to the step, which is not what bounds it."""
    def member(spec, **extra):
        return {"spec": spec, "compile_train_s": 10.0, "compile_eval_s": 5.0,
                "train_images_per_s_pipelined": 5000.0, "eval_images_per_s_pipelined": 20000.0,
                "num_epochs": 30.0, "recipe_batch_size": 96, "batch_size": 96, **extra}

    slow_input = {"bound_by": "input", "host_cores_needed": 16,
                  "training_images_per_s": 100.0}
    starved = member("resnet:50", input_bound=slow_input, training_images_per_s=100.0)
    fed = member("vit:B/16", input_bound={**slow_input, "bound_by": "step",
                                          "training_images_per_s": 5000.0},
                 training_images_per_s=5000.0)
    assert ensemble_time.ensemble_estimate([starved, fed])["dominated_by"] == "input"
    assert ensemble_time.ensemble_estimate([fed])["dominated_by"] == "train"
    estimate = ensemble_time.ensemble_estimate([starved])
    assert "largest part: input)" in report.ensemble_lines([starved], estimate)


def _member(spec: str, *, blocked: float, pipelined: float, batch: int = 96, **extra) -> dict:
    return {"spec": spec, "image_size": 224, "batch_size": batch, "train_step_s": batch / blocked,
            "train_images_per_s_pipelined": pipelined, "train_mfu": 0.3, **extra}


def test_goal_lines_name_the_part_that_dominates_a_missed_goal():
    step_bound = _member("vit:B/16", blocked=3000.0, pipelined=3100.0, train_dispatch_s=0.002)
    input_bound = _member("resnet:50", blocked=6000.0, pipelined=6000.0, train_dispatch_s=0.002,
                          input_bound={"bound_by": "input", "training_images_per_s": 1500.0})
    fast = _member("vit:B/16", blocked=4500.0, pipelined=4200.0)
    lines = report.goal_lines([step_bound, input_bound, fast], "gpu").splitlines()
    assert lines == [
        "vit:B/16: 3100 img/s misses the 4000 img/s goal; dominated by: step (train MFU 30.0 %).",
        "resnet:50: 1500 img/s misses the 5000 img/s goal; dominated by: input "
        "(train MFU 30.0 %).",
        "vit:B/16: 4200 img/s meets the 4000 img/s goal.",
    ]
    assert report.goal_lines([step_bound], "cpu") == ""  # the goals are for accelerators


def test_goal_lines_tell_a_host_bound_step_from_a_device_bound_one_by_its_dispatch_time():
    """Blocked, a step costs its host dispatch plus its device time; back to back, the longer
    of the two. Their difference is the shorter one, host or device: it was read as "host
    gaps" past 20 % of the step, which blamed the host for a device-bound step (16 ms dispatch
    hidden under a 32 ms device step) and the step for a host-bound one (30 ms to dispatch
    a 5 ms device step). The dispatch, timed until the call returns, tells them apart."""
    device_bound = _member("resnet:50", blocked=96 / 0.048, pipelined=96 / 0.032,
                           train_dispatch_s=0.016)
    host_bound = _member("resnet:50", blocked=96 / 0.035, pipelined=96 / 0.030,
                         train_dispatch_s=0.030)
    assert report.goal_lines([device_bound, host_bound], "gpu").splitlines() == [
        "resnet:50: 3000 img/s misses the 5000 img/s goal; dominated by: step "
        "(train MFU 30.0 %).",
        "resnet:50: 3200 img/s misses the 5000 img/s goal; dominated by: host dispatch "
        "(train MFU 30.0 %).",
    ]


def test_the_step_timing_measures_the_host_dispatch_of_each_step():
    """An asynchronous step (returns at once, ready 20 ms later) and a synchronous one."""
    class Pending:
        def __init__(self, ready_at):
            self.ready_at = ready_at

        def block_until_ready(self):
            time.sleep(max(0.0, self.ready_at - time.perf_counter()))
            return self

    timed = throughput.time_steps(lambda: Pending(time.perf_counter() + 0.02), warmup=0,
                                  steps_=3)
    assert timed["dispatch_s"] < 0.01 <= 0.02 <= timed["median_s"]
    timed = throughput.time_steps(lambda: time.sleep(0.02), warmup=0, steps_=3)
    assert timed["dispatch_s"] >= 0.02


def test_a_run_on_several_devices_is_not_judged_against_the_one_chip_goals(monkeypatch):
    """The goals are for one chip: on an 8-chip host (a TPU v5e-8 VM, 8 GPUs) the benchmark
    runs data-parallel on all of them, and its img/s "met" a goal no single chip met."""
    eight_chips = _member("vit:B/16", blocked=12000.0, pipelined=12000.0)
    line = report.goal_lines([eight_chips], "tpu", devices=8)
    assert "meets" not in line and "misses" not in line
    assert line == ("vit:B/16: 12000 img/s on 8 devices; the 4000 img/s goal is for one chip: "
                    "not judged (run on one device to judge it, e.g. with "
                    "CUDA_VISIBLE_DEVICES=0)")
    member = {**eight_chips, "compile_train_s": 10.0, "compile_eval_s": 5.0,
              "eval_images_per_s_pipelined": 30000.0, "num_epochs": 30.0,
              "recipe_batch_size": 96}
    estimate = ensemble_time.ensemble_estimate([member])
    assert "meets the 15-minute goal" in report.ensemble_lines([member], estimate)
    several = report.ensemble_lines([member], estimate, devices=8)
    assert "meets" not in several and "on 8 devices; the 15-minute goal is for one chip" in several
    # From the JSON: the machine's device count reaches both lines.
    payload = {"machine": {"backend": "tpu", "device_count": 8}, "settings": {"models": "vit:B/16"},
               "models": [], "failed": {}, "complete": True}
    monkeypatch.setattr(report, "results_table", lambda results: "the table")
    text = report.summary({**payload, "models": [member]})
    assert "meets" not in text and text.count("not judged") == 2


def _script(*args: str, tmp_path: pathlib.Path, **environ: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHON": sys.executable,
           "TMPDIR": str(tmp_path), **environ}  # --input draws its synthetic data in TMPDIR
    return subprocess.run(["bash", str(ACCELERATOR_SCRIPT), *args], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ACCELERATOR_SCRIPT.parents[1])


def test_accelerator_script_dry_run_prints_the_benchmarks_figures(tmp_path):
    proc = _script("--dry-run", "--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # --out=DIR as the Python tools take it (it was "unknown option: --out=...").
    joined = _script("--dry-run", f"--out={tmp_path / 'out'}", tmp_path=tmp_path)
    assert (joined.returncode, joined.stdout) == (0, proc.stdout), joined.stderr
    bench, costs_cmd = (shlex.split(line[2:].split(" > ")[0])
                        for line in proc.stdout.splitlines() if line.startswith("+ "))
    assert bench[bench.index("-m") + 1] == "cer_jax.bench"
    for flag in ("--models=vit:B/16,resnet:50,manet", "--image_size=224",
                 "--precision=bfloat16", "--input", f"--profile={tmp_path}/out/profile"):
        assert flag in bench, flag
    assert not any(a.startswith("--batch_size") for a in bench)  # the recipes' batch sizes
    assert costs_cmd[:2] == ["env", "JAX_PLATFORMS=cpu"] and "--image_size=224" in costs_cmd
    assert not (tmp_path / "out").exists()


def _python_stopping_the_bench(tmp_path: pathlib.Path, *, bench: str = ":",
                               costs: str = ":") -> pathlib.Path:
    """A `python` for the script: `-m cer_jax.bench` runs `bench`, then stops as its timeout
    does (status 124); `-m cer_jax.bench.costs` runs `costs`; anything else is this Python."""
    python = tmp_path / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1 $2" = "-m cer_jax.bench" ]; then {bench}; echo "stopped" >&2; exit 124; fi\n'
        f'if [ "$1 $2" = "-m cer_jax.bench.costs" ]; then {costs}; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return python


def test_accelerator_script_goes_on_after_a_stopped_benchmark(tmp_path):
    """A benchmark stopped by its timeout (or failing) used to end the script at once under
    `set -e`: no cost count and no closing line. It goes on, and says where the figures are."""
    python = _python_stopping_the_bench(tmp_path, costs='echo "the cost table"')
    out = tmp_path / "out"
    proc = _script("--out", str(out), "--no-torch", tmp_path=tmp_path, PYTHON=str(python))
    assert proc.returncode == 0, proc.stderr
    assert (f"the benchmark stopped (status 124): the models it finished are in {out}/bench.json"
            in proc.stderr.splitlines())
    assert (out / "costs_cpu.txt").read_text() == "the cost table\n"
    assert proc.stdout.splitlines()[-1] == f"figures in {out}"


def test_accelerator_script_ends_within_its_budget_after_a_long_benchmark(tmp_path):
    """The benchmark's 450 s (+ 20 s to kill it) and the probes before it left the CPU cost
    count its full 100 s: past the lent machine's 10 minutes. It now gets what is left of the
    script's 570 s (bash's SECONDS, set here as if the benchmark had run 500 s)."""
    python = _python_stopping_the_bench(tmp_path, costs='echo "the cost table"')
    out = tmp_path / "out"
    late = _script("--out", str(out), "--no-torch", tmp_path=tmp_path, PYTHON=str(python),
                   SECONDS="500")
    assert late.returncode == 0, late.stderr
    (costs_cmd,) = (line for line in late.stdout.splitlines() if "cer_jax.bench.costs" in line)
    limit = int(shlex.split(costs_cmd)[shlex.split(costs_cmd).index("timeout") + 1])
    assert 40 <= limit <= 70, costs_cmd
    assert (out / "costs_cpu.txt").read_text() == "the cost table\n"
    spent = _script("--out", str(tmp_path / "spent"), "--no-torch", tmp_path=tmp_path,
                    PYTHON=str(python), SECONDS="565")
    assert spent.returncode == 0, spent.stderr
    assert ("no time left for the costs on CPU (optional): the script's 570 s are spent"
            in spent.stderr.splitlines())
    assert not (tmp_path / "spent" / "costs_cpu.txt").exists()


def test_accelerator_script_option_without_its_value_is_one_line(tmp_path):
    proc = _script("--dry-run", "--out", tmp_path=tmp_path)
    assert (proc.returncode, proc.stderr) == (2, "--out needs a value (see --help)\n")


@pytest.mark.parametrize(("args", "message"), [
    # `--out "$UNSET"`: bench.json, profile/, bench.txt and machine.txt went into /.
    (["--out="], "--out needs a value (see --help)"),
    (["--out", ""], "--out needs a value (see --help)"),
    # Each reached cer_jax.bench (its flag error) only after the probes, on the lent device.
    (["--steps", "-1"], "--steps -1: give a whole number >= 1 (see --help)"),
    (["--batch_size=1.5"], "--batch_size 1.5: give a whole number >= 1 (see --help)"),
    (["--image_size", "0"], "--image_size 0: give a whole number >= 1 (see --help)"),
    (["--input_batches=ten"], "--input_batches ten: give a whole number >= 1 (see --help)"),
], ids=["out_empty", "out_empty_after_a_space", "steps", "batch_size", "image_size",
        "input_batches"])
def test_accelerator_script_empty_or_bad_number_is_one_line_before_any_work(tmp_path, args,
                                                                             message):
    proc = _script("--dry-run", *args, tmp_path=tmp_path)
    assert (proc.returncode, proc.stderr, proc.stdout) == (2, message + "\n", "")


def _without_tensorflow(tmp_path: pathlib.Path) -> dict[str, str]:
    """PYTHONPATH under which `import tensorflow` fails, as on a host without it."""
    blocker = tmp_path / "no_tf" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'tensorflow'\", name='tensorflow')\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(blocker.parent),
                                                        os.environ.get("PYTHONPATH")]))}


def test_accelerator_script_measures_steps_without_tensorflow(tmp_path):
    proc = _script("--dry-run", "--out", str(tmp_path / "out"), tmp_path=tmp_path,
                   **_without_tensorflow(tmp_path))
    assert proc.returncode == 0, proc.stderr
    bench = shlex.split(proc.stdout.splitlines()[0][2:].split(" > ")[0])
    assert bench[bench.index("-m") + 1] == "cer_jax.bench"
    assert not any(a.startswith("--input") for a in bench)
    assert "the input pipeline is not measured (no --input)" in proc.stderr


def _bench_command(dry_run: subprocess.CompletedProcess) -> list[str]:
    """The `cer_jax.bench` command a --dry-run of the script prints."""
    assert dry_run.returncode == 0, dry_run.stderr[-3000:]
    return shlex.split(dry_run.stdout.splitlines()[0][2:].split(" > ")[0])


def test_accelerator_script_finds_python3_where_there_is_no_python(tmp_path):
    """A bare GPU host may have `python3` only: the script ran `python`, its probes failed
    silently and it ended at machine.txt with status 127 and no word (set -e)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    proc = subprocess.run(
        ["bash", str(ACCELERATOR_SCRIPT), "--dry-run", "--no-torch"], capture_output=True,
        text=True, timeout=300, cwd=ACCELERATOR_SCRIPT.parents[1],
        env={**env, "JAX_PLATFORMS": "cpu", "PATH": f"{bin_dir}:/usr/bin:/bin"})
    bench = _bench_command(proc)
    assert bench[bench.index("-m") - 1] == "python3"


def _fake_torch(tmp_path: pathlib.Path, *, beside_jax: str) -> dict[str, str]:
    """PYTHONPATH with a CUDA 'PyTorch' (and transformers) that imports alone; imported after
    JAX's backend started it raises as a PyTorch whose CUDA libraries clash with JAX's does,
    where `beside_jax` is "fails"."""
    fake = tmp_path / f"torch_{beside_jax}"
    (fake / "torch").mkdir(parents=True)
    (fake / "transformers").mkdir()
    (fake / "transformers" / "__init__.py").write_text("")
    (fake / "torch" / "__init__.py").write_text(
        "from jax._src import xla_bridge\n"
        f"if {beside_jax == 'fails'} and xla_bridge.backends_are_initialized():\n"
        "    raise ImportError('libcublasLt.so.13: undefined symbol: cublasLtFake')\n"
        "class _Tensor:\n"
        "    def sum(self):\n        return self\n"
        "    def item(self):\n        return 1.0\n"
        "class cuda:\n"
        "    is_available = staticmethod(lambda: True)\n"
        "def ones(*args, **kwargs):\n    return _Tensor()\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(fake),
                                                        os.environ.get("PYTHONPATH")]))}


def test_accelerator_script_leaves_out_a_pytorch_that_fails_beside_jax(tmp_path):
    """The script probed PyTorch in a process of its own; the benchmark imports it after JAX's
    backend started (jax-ml/jax#18032's order). A PyTorch that imports alone but not beside
    JAX's CUDA libraries then failed the benchmark before its first model: every JAX figure
    of the one lent GPU run lost. The probe now runs in the benchmark's order."""
    works = _script("--dry-run", tmp_path=tmp_path, **_fake_torch(tmp_path, beside_jax="works"))
    assert "--compare_torch" in _bench_command(works)
    fails = _script("--dry-run", tmp_path=tmp_path, **_fake_torch(tmp_path, beside_jax="fails"))
    assert "--compare_torch" not in _bench_command(fails)
    assert ("PyTorch (CUDA build) and transformers do not run beside JAX here: no PyTorch "
            "comparison (ImportError: libcublasLt.so.13: undefined symbol: cublasLtFake)"
            in fails.stderr.splitlines())


def test_input_without_tensorflow_is_one_line_before_any_work(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cer_jax.bench", "--models=vit:test/8", "--image_size=32",
         "--input"], capture_output=True, text=True, timeout=300,
        env={**os.environ, **_without_tensorflow(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --input times the tf.data pipeline, which needs TensorFlow and TFDS (No module "
        "named 'tensorflow'): pip install -e . installs them, or drop --input.")
    assert "Traceback" not in proc.stderr and "vit:test/8: train" not in proc.stderr


def test_an_unwritable_input_cache_dir_is_one_line_naming_its_flag_before_any_timing(tmp_path):
    """--input draws its dataset into --input_cache_dir after the first model is timed: a file
    in the way failed there, the figures measured lost, naming config.dataset.cache_dir, a key
    the user never set."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    proc = _run("cer_jax.bench", *TINY, "--input", f"--input_cache_dir={a_file}/cache")
    _one_line_error(proc, f"--input_cache_dir={a_file}/cache: {a_file} is a file, not a "
                          "folder; give a folder.")


def test_too_few_input_images_is_one_line_naming_its_flag_before_any_timing():
    """Was "5 images cannot give each of the 11 compound classes ...": which count?"""
    _one_line_error(_run("cer_jax.bench", *TINY, "--input", "--input_num_train_images=5"),
                    "--input_num_train_images=5: 5 images cannot give each of the 11 compound "
                    "classes at least 2: ask for at least 22.")


def test_a_gs_input_cache_dir_is_one_line_naming_its_flag_before_any_timing(tmp_path):
    """The synthetic dataset --input times is drawn with local file calls: a gs:// folder was
    a local folder named "gs:" and an error naming config.dataset.cache_dir after a timing."""
    proc = _run("cer_jax.bench", *TINY, "--input", "--input_cache_dir=gs://my-bucket/cache",
                cwd=tmp_path)
    _one_line_error(proc, "--input_cache_dir=gs://my-bucket/cache: the synthetic dataset "
                          "--input times is drawn on this machine's disk; give a local folder.")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("spec", "image_size", "message"), [
    ("resnet:51", 32, "error: Unknown ResNet depth 51 (config key model.depth); choose one of "
                      "[18, 34, 50, 101, 152]."),
    ("resnet:fifty", 32, "error: --models 'resnet:fifty': depth must be an integer."),
    ("vit:Z/99", 32, "error: Unknown ViT variant 'Z/99' (config key model.variant); expected "
                     "'<size>/<patch>' with size one of test, mu, Ti, S, M, B, L, H, e.g. 'B/16'."),
    ("manet:16", 48, "error: MA-Net needs image sizes divisible by 32 (config key "
                     "input.image_size); got 48x48."),
])
def test_a_bad_model_is_one_line_before_any_model_is_timed(spec, image_size, message):
    proc = subprocess.run(
        [sys.executable, "-m", "cer_jax.bench", f"--models=vit:test/8,{spec}",
         f"--image_size={image_size}", "--batch_size=2", "--steps=1", "--warmup=0"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in proc.stderr and "vit:test/8: train" not in proc.stderr


def test_bad_models_or_json_flags_are_one_line_before_any_timing(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    cases = [
        (["--models="], "error: --models is empty: name the models to time, e.g. "
                        "--models=vit:B/16,resnet:50,manet."),
        (["--models=vit:test/8,vit:test/8"], "error: --models names vit:test/8 twice; give each "
                                             "model once."),
        (["--models=vit:test/8", f"--json={a_file}/bench.json"],
         f"error: --json={a_file}/bench.json: {a_file} is a file, not a folder."),
        (["--models=vit:test/8", f"--json={tmp_path}"],
         f"error: --json={tmp_path} is a folder; give a file name, e.g. "
         f"--json={tmp_path / 'bench.json'}."),
        (["--models=vit:test/8", f"--json={tmp_path}/new/"],  # was: a file named new
         f"error: --json={tmp_path}/new/ ends in /, a folder; give a file name, e.g. "
         f"--json={tmp_path / 'new' / 'bench.json'}."),
    ]
    for flags, message in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "cer_jax.bench", "--image_size=32", "--batch_size=2",
             "--steps=1", "--warmup=0", *flags], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1] == message
        assert "Traceback" not in proc.stderr and ": train " not in proc.stderr
    assert a_file.read_text() == "mine"


def test_a_count_flag_out_of_range_is_refused_by_flag_parsing():
    proc = subprocess.run(
        [sys.executable, "-m", "cer_jax.bench", "--models=vit:test/8", "--steps=0"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "flag --steps=0: 0 is not a positive integer" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_accelerator_script_runs_end_to_end(tmp_path):
    """The one script a lent GPU runs, whole, on CPU at a tiny size: every flag it passes
    exists, and every file it promises is written (a device's minutes are too few to debug)."""
    out = tmp_path / "out"
    proc = _script("--out", str(out), "--models", "vit:test/8", "--image_size", "32",
                   "--batch_size", "4", "--steps", "2", "--input_batches", "2", "--no-torch",
                   tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads((out / "bench.json").read_text())
    (r,) = payload["models"]
    assert (r["spec"], r["batch_size"], r["image_size"], r["precision"]) == (
        "vit:test/8", 4, 32, "bfloat16")
    assert r["input"]["images_per_s_per_core"] > 0
    assert r["input_bound"]["bound_by"] in ("input", "step")
    assert payload["ensemble"]["total_s"] > 0
    assert "| vit:test/8 | 4 | 32 | bfloat16 |" in (out / "bench.txt").read_text()
    # The profile holds the annotated train and eval steps (what TensorBoard's trace viewer shows).
    (trace,) = (out / "profile" / "vit_test_8").glob("plugins/profile/*/*.trace.json.gz")
    assert trace.with_name(trace.name.replace(".trace.json.gz", ".xplane.pb")).exists()
    names = {e.get("name") for e in json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]}
    assert {"train", "eval"} <= names
    # ViT test/8 (width 32, depth 2, MLP 64, 8 px patches at 32 px) with the costs table's 7
    # classes: patch embedding, class token, positions, 2 blocks (2 LayerNorms, qkv, output, MLP),
    # final LayerNorm, head.
    width, depth, mlp, tokens, classes = 32, 2, 64, (32 // 8) ** 2 + 1, 7
    block = (2 * 2 * width + 4 * (width * width + width)
             + (width * mlp + mlp) + (mlp * width + width))
    parameters = (8 * 8 * 3 * width + width) + width + tokens * width + depth * block \
        + 2 * width + (width * classes + classes)
    assert f"| vit:test/8 | {parameters:,} |" in (out / "costs_cpu.txt").read_text()
    assert jax.__version__ in (out / "machine.txt").read_text()


def test_help_lists_the_bench_flags():
    """`python -m cer_jax.bench --help` (the README's way to see a CLI's flags)."""
    result = subprocess.run([sys.executable, "-m", "cer_jax.bench", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]  # absl's own --help exits 1
    assert result.stdout.startswith("Throughput, FLOPs, MFU and memory per model")
    for name in ("--models:", "--precision:", "--[no]compare_torch:", "--[no]input:", "--profile:",
                 "--[no]traceback:"):
        assert f"  {name}" in result.stdout, name


@pytest.mark.parametrize("module, bad_flag", [("cer_jax.train", "--traceback=maybe"),
                                               ("tfds_rafdb.rafdb", "--builder_config=nope")])
def test_help_exits_0_and_a_flag_error_before_it_still_fails(module, bad_flag):
    """--help is an answer, not a failure (absl's exits 1); a bad flag value stays status 1."""
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                            text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr[-2000:]
    assert "Try --helpfull to get a list of all flags." in result.stdout
    bad = subprocess.run([sys.executable, "-m", module, bad_flag, "--help"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "FATAL Flags parsing error" in bad.stderr, bad.stderr[-2000:]


def test_report_cli_help_exits_0_and_its_input_errors_are_one_line(tmp_path):
    """README: every CLI's --help lists its flags and exits 0; cer_jax.bench.report read
    --help as the benchmark file (exit status 2), and a JSON that is not a benchmark's (a
    fusion's report.json, say) was a KeyError traceback."""
    help_ = subprocess.run([sys.executable, "-m", "cer_jax.bench.report", "--help"],
                           capture_output=True, text=True, timeout=120)
    assert (help_.returncode, help_.stderr) == (0, ""), help_.stderr[-2000:]
    assert "python -m cer_jax.bench.report bench.json" in help_.stdout
    assert "  --[no]traceback:" in help_.stdout
    not_bench = tmp_path / "report.json"
    not_bench.write_text('{"members": []}')
    proc = subprocess.run([sys.executable, "-m", "cer_jax.bench.report", str(not_bench)],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (
        2, f"error: {not_bench} is not a benchmark's --json file (no 'models'): give the file "
           "that python -m cer_jax.bench --json=FILE wrote.\n")


@pytest.mark.parametrize(("name", "reason"), [
    ("empty.json", "is not JSON (Expecting value: line 1 column 1 (char 0))"),
    ("runs", "cannot be read (Is a directory)"),
    ("missing.json", "cannot be read (No such file or directory)"),
])
def test_report_cli_says_what_to_give_for_a_file_it_cannot_read(tmp_path, name, reason):
    """Before: "error: runs: [Errno 21] Is a directory: 'runs'" and "error: empty.json:
    Expecting value: line 1 column 1 (char 0)", without the file to give instead."""
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "runs").mkdir()
    proc = subprocess.run([sys.executable, "-m", "cer_jax.bench.report", name],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (
        2, f"error: {name} {reason}: give the file that python -m cer_jax.bench --json=FILE "
           "wrote.\n")


# The tiny run of the findings: each error below must come before this model is timed.
TINY = ("--models=vit:test/8", "--image_size=32", "--batch_size=4", "--steps=1", "--warmup=0")
# Runs a module as `python -m` would, with `sys.argv[1]` (a package) made unimportable.
RUN_WITHOUT = ("import runpy, sys; sys.modules[sys.argv.pop(1)] = None; "
               "sys.argv[0] = sys.argv.pop(1); runpy.run_module(sys.argv[0], run_name='__main__')")


def _run(module: str, *args: str, without: str | None = None, cwd=None):
    cmd = ([sys.executable, "-c", RUN_WITHOUT, without, module] if without
           else [sys.executable, "-m", module])
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=300, cwd=cwd)



def run_bench_after(prelude: str, *flags: str) -> subprocess.CompletedProcess:
    """`python -m cer_jax.bench FLAGS` in a fresh process, after the Python `prelude` (a patch
    of what the test simulates: a missing package, a failing profiler, a GPU backend)."""
    code = (f"{prelude}\nimport runpy, sys\nsys.argv = ['cer_jax.bench', *sys.argv[1:]]\n"
            "runpy.run_module('cer_jax.bench', run_name='__main__', alter_sys=True)\n")
    return subprocess.run([sys.executable, "-c", code, *flags], capture_output=True, text=True,
                          timeout=300)


# One timed step of the smallest ViT: what a test of the bench's surroundings runs.
TINY_RUN = ("--models=vit:test/8", "--image_size=32", "--batch_size=2", "--steps=1",
            "--warmup=0")


def _one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == f"error: {message}"
    assert "Traceback" not in proc.stderr and ": train " not in proc.stderr
    assert "done" not in proc.stderr  # xla_cpu_flags: no setting was run


@pytest.mark.parametrize("package", ["torch", "transformers"])
def test_compare_torch_without_pytorch_is_one_line_before_any_timing(package):
    """PyTorch is an optional extra ('.[test]'): without it --compare_torch used to crash with
    a traceback after the earlier models were timed."""
    proc = _run("cer_jax.bench", *TINY, "--compare_torch", without=package)
    _one_line_error(proc, "--compare_torch needs PyTorch (and transformers for ViT / ResNet): "
                          "pip install -e '.[test]', or drop --compare_torch.")


def test_xla_cpu_flags_without_pytorch_says_so_in_one_line():
    """Its --compare_torch is on by default: the error names the flag that turns it off."""
    proc = _run("cer_jax.bench.xla_cpu_flags", "--settings=baseline", *TINY, without="torch")
    _one_line_error(proc, "--compare_torch needs PyTorch (and transformers for ViT / ResNet): "
                          "pip install -e '.[test]', or pass --nocompare_torch (no PyTorch "
                          "ratios).")


@pytest.mark.parametrize(("models", "message"), [
    ("foo", "Unknown model 'foo' in --models 'foo': use one of vit, resnet, manet, optionally "
            "followed by ':' and its vit variant, resnet depth, manet width."),
    ("vit:test/8", "model.image_size=30 is not divisible by the patch size 8 of ViT variant "
                   "'test/8'; choose a multiple of 8."),
])
def test_xla_cpu_flags_with_a_bad_model_is_one_line_before_any_setting_runs(models, message):
    """Each setting runs cer_jax.bench in a process of its own: a bad --models failed every
    one of them in turn, then printed a table of the same error cut at 80 characters, with
    exit status 0."""
    proc = _run("cer_jax.bench.xla_cpu_flags", f"--models={models}", "--image_size=30",
                "--settings=baseline,ynn", "--nocompare_torch")
    _one_line_error(proc, message)


def test_xla_cpu_flags_with_an_argument_that_is_not_a_flag_is_one_line_before_any_setting():
    """Its arguments after `--` go to each setting's cer_jax.bench: a word (a value after a
    space) failed every run in turn, then a table of that error, exit status 0."""
    proc = _run("cer_jax.bench.xla_cpu_flags", *TINY, "--settings=baseline,ynn",
                "--nocompare_torch", "B/16")
    _one_line_error(proc, "Unexpected arguments: B/16 (a value with spaces needs quotes); "
                          "--help lists the flags.")


def test_xla_cpu_flags_whose_setting_failed_ends_with_status_1():
    """As cer_jax.bench's failed model: a setting whose run failed (here its cer_jax.bench
    refused a flag passed after `--`) was a table row of absl's 'Pass --helpshort ...' line,
    exit status 0."""
    proc = _run("cer_jax.bench.xla_cpu_flags", *TINY, "--settings=baseline", "--nocompare_torch",
                "--", "--bogus")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert ("| baseline | (failed: FATAL Flags parsing error: Unknown command line flag 'bogus') "
            "| | | | | | | |") in proc.stdout.splitlines()


def test_unwritable_json_or_profile_is_one_line_before_any_timing(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    cases = [
        ("cer_jax.bench", ["--json=/proc/b.json"],
         "--json=/proc/b.json cannot be written (No such file or directory); give a writable "
         "file, or drop --json."),
        ("cer_jax.bench", [f"--profile={a_file}"],
         f"--profile={a_file}: {a_file} is a file, not a folder; give a folder."),
        ("cer_jax.bench", [f"--profile={a_file}/trace"],
         f"--profile={a_file}/trace: {a_file} is a file, not a folder; give a folder."),
        ("cer_jax.bench", ["--profile=/proc/no/trace"],
         "--profile=/proc/no/trace cannot be written (No such file or directory); give a "
         "writable folder, or drop --profile."),
        ("cer_jax.bench.xla_cpu_flags", ["--settings=baseline", "--nocompare_torch",
                                         "--json=/proc/b.json"],
         "--json=/proc/b.json cannot be written (No such file or directory); give a writable "
         "file, or drop --json."),
        ("cer_jax.bench.xla_cpu_flags", ["--settings=baseline", "--nocompare_torch",
                                         f"--json={a_file}/flags.json"],
         f"--json={a_file}/flags.json: {a_file} is a file, not a folder."),
    ]
    for module, flags, message in cases:
        _one_line_error(_run(module, *TINY, *flags), message)
    assert a_file.read_text() == "mine"


def test_json_and_profile_folders_are_made_and_probed_before_any_timing(tmp_path):
    out = tmp_path / "new" / "bench.json"
    throughput.check_output_file("json", str(out))
    throughput.check_output_folder("profile", str(tmp_path / "trace"))
    assert [p.name for p in out.parent.iterdir()] == []  # the probe file is removed
    assert list((tmp_path / "trace").iterdir()) == []


def test_a_bucket_json_is_written_to_the_bucket_not_to_a_local_gs_folder(tmp_path, monkeypatch):
    """`--json=gs://bucket/b.json` used to write ./gs:/bucket/b.json."""
    from etils.epath import gpath, testing

    bucket = tmp_path / "bucket_store"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # else tf.io.gfile, unmocked

    def local(path) -> str:
        path = os.fspath(path)
        assert path.startswith("gs://"), path
        return str(bucket / path.removeprefix("gs://"))

    def mkdir(_, path, *args, **kwargs):
        os.makedirs(local(path), exist_ok=True)

    with testing.mock_epath(
            open=lambda _, path, *args, **kwargs: open(local(path), *args, **kwargs),
            exists=lambda _, path: os.path.exists(local(path)),
            isdir=lambda _, path: os.path.isdir(local(path)),
            makedirs=mkdir, mkdir=mkdir,
            replace=lambda _, path, target: os.replace(local(path), local(target))):
        throughput.check_output_file("json", "gs://b/runs/b.json")
        throughput.write_json("gs://b/runs/b.json", {"models": []})
    assert json.loads((bucket / "b" / "runs" / "b.json").read_text()) == {"models": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bucket_store"]


def test_faces_removes_its_scratch_folder_also_after_an_error(tmp_path, monkeypatch):
    import tempfile
    import types

    from cer_jax.bench import faces

    def fails(directory, specs):
        (pathlib.Path(directory) / "ensemble").mkdir()
        raise RuntimeError("stop")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(faces, "_MEMBERS", types.SimpleNamespace(value=["configs/vit.py"]))
    monkeypatch.setattr(faces, "build_ensemble", fails)
    with pytest.raises(RuntimeError, match="stop"):
        faces.main(["faces"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--members="], "--members is empty: name the member configs, e.g. "
                     "--members=configs/vit.py:smoke,configs/resnet50.py:smoke."),
    (["--members=configs/nope.py", "configs/manet.py"],
     "Unexpected arguments: configs/manet.py (a value with spaces needs quotes); --help lists "
     "the flags."),
], ids=["no_members", "an_argument"])
def test_faces_input_errors_are_one_line(args, message):
    """Before: --members= was a ZeroDivisionError's traceback; an argument was ignored (the
    default members timed in its place)."""
    _one_line_error(_run("cer_jax.bench.faces", *args), message)


def test_costs_without_models_is_one_line():
    _one_line_error(_run("cer_jax.bench.costs", "--models="),
                    "--models is empty: name the models to count, e.g. "
                    "--models=vit:B/16,resnet:50,manet.")


def test_jax_backends_start_before_pytorch_is_imported(tmp_path):
    """`import torch` loads PyTorch's own cuDNN; a JAX backend started after it finds that
    (older) cuDNN and falls back to the CPU (jax-ml/jax#18032): on the one lent GPU run, every
    figure would have been a CPU figure. --compare_torch imported torch before JAX started."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import sys\n"
        "from jax._src import xla_bridge\n"
        "print(f'JAX_STARTED_BEFORE_TORCH={xla_bridge.backends_are_initialized()}', "
        "file=sys.stderr)\n"
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(fake.parent), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "cer_jax.bench", *TINY, "--compare_torch"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert "JAX_STARTED_BEFORE_TORCH=True" in proc.stderr.splitlines(), proc.stderr[-3000:]
    _one_line_error(proc, throughput.NO_TORCH)


def test_accelerator_script_stops_at_once_when_jax_fell_back_to_the_cpu(tmp_path):
    """A JAX whose CUDA backend failed to start runs on the CPU with only a warning: the
    script used to spend the one lent GPU run timing the CPU. Without JAX_PLATFORMS=cpu (a CPU
    run on purpose), a CPU backend stops it before any benchmark."""
    out = tmp_path / "out"
    proc = _script("--out", str(out), *("--models", "vit:test/8", "--image_size", "32",
                                        "--batch_size", "4", "--steps", "1", "--no-torch"),
                   tmp_path=tmp_path, JAX_PLATFORMS="")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"JAX runs on 'cpu', not a GPU or TPU (JAX_PLATFORMS=cpu benchmarks the CPU on purpose): "
        f"see {out}/machine.txt and python -c 'import jax; jax.devices()'")
    assert not (out / "bench.json").exists() and (out / "machine.txt").exists()


@pytest.mark.parametrize("given, used", [(None, "0"), ("2,3", "2,3")])
def test_accelerator_script_times_one_gpu_of_several(tmp_path, monkeypatch, given, used):
    """The goals are for one chip: on an 8-GPU host JAX took all eight (data-parallel) and the
    script's figures were eight GPUs' worth. It now runs on the first GPU unless the caller
    chose (CUDA_VISIBLE_DEVICES, kept as given), and machine.txt says which."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if given is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", given)
    out = tmp_path / "out"
    proc = _script("--out", str(out), "--no-torch", tmp_path=tmp_path, JAX_PLATFORMS="")
    assert proc.returncode == 1, proc.stderr[-3000:]  # stops at the CPU backend (no GPU here)
    assert f"CUDA_VISIBLE_DEVICES={used}\n" in (out / "machine.txt").read_text()


def _timed(spec: str, batch: int) -> dict:
    """One model's figures as bench.json holds them (the fields the tables read)."""
    return {"spec": spec, "batch_size": batch, "recipe_batch_size": batch, "image_size": 224,
            "precision": "bfloat16", "compile_train_s": 40.0, "compile_eval_s": 10.0,
            "train_step_s": batch / 3000.0, "eval_step_s": batch / 9000.0,
            "train_images_per_s": 3000.0, "eval_images_per_s": 9000.0,
            "train_images_per_s_pipelined": 3000.0, "eval_images_per_s_pipelined": 9000.0,
            "train_flops_per_image": 106e9, "train_flops_per_s": 318e12, "train_mfu": 0.32,
            "eval_mfu": 0.3, "peak_bytes_in_use": 2**34, "train_program_bytes": 2**33,
            "train_page_faults_per_step": 0.0, "train_kernel_s_per_step": 0.0,
            "num_epochs": 30.0}


def _script_after_a_stopped_bench(tmp_path: pathlib.Path, payload: dict, then: str = ":"
                                  ) -> tuple[pathlib.Path, subprocess.CompletedProcess]:
    """The script's --out and run, where the benchmark writes `payload` as its --json, runs
    the shell command `then` and stops as its timeout does."""
    (tmp_path / "written.json").write_text(json.dumps(payload))
    python = _python_stopping_the_bench(
        tmp_path, bench=f'for a in "$@"; do case "$a" in --json=*) cp {tmp_path}/written.json '
        f'"${{a#--json=}}";; esac; done; {then}')
    out = tmp_path / "out"
    return out, _script("--out", str(out), "--no-torch", tmp_path=tmp_path, PYTHON=str(python))


def test_accelerator_script_prints_the_tables_of_a_stopped_benchmark(tmp_path):
    """A benchmark stopped by its timeout printed no table and no ensemble estimate: the
    finished models' figures were only in bench.json. The script prints them from it, and
    names the models that were not timed."""
    payload = {"machine": {"backend": "gpu"}, "settings": {"models": "vit:B/16,resnet:50"},
               "models": [_timed("vit:B/16", 96)], "ensemble": None}
    out, proc = _script_after_a_stopped_bench(tmp_path, payload)
    assert proc.returncode == 0, proc.stderr
    text = (out / "bench.txt").read_text()
    assert "| vit:B/16 | 96 | 224 | bfloat16 | 40.0 / 10.0 | 3000.0 | 9000.0 |" in text
    assert "vit:B/16: 3000 img/s misses the 4000 img/s goal; dominated by: step" in text
    assert "  (without resnet:50, not measured: the total is too low)" in text
    assert "The input pipeline was not measured (no --input)" in text
    assert text.rstrip().endswith("Not timed (the run stopped first): resnet:50.")


def test_a_model_that_fails_costs_that_model_not_the_others(tmp_path):
    """A model that failed on the device (out of memory at the recipe's batch, an XLA:GPU or
    cuDNN error in one network) ended the whole benchmark: the models after it were never
    timed on the one lent GPU run. The run goes on, prints the traceback for the record, names
    the failed model in its tables and ends with status 1."""
    prelude = ("from cer_jax.bench import throughput\n"
               "timed = throughput.bench_model\n"
               "def bench_model(setup, *args, **kwargs):\n"
               "    if setup.spec == 'vit:test/8':\n"
               "        raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to '\n"
               "                           'allocate 52.1GiB.\\nmore detail')\n"
               "    return timed(setup, *args, **kwargs)\n"
               "throughput.bench_model = bench_model")
    out = tmp_path / "bench.json"
    proc = run_bench_after(prelude, "--models=vit:test/8,resnet:18", "--image_size=32",
                           "--batch_size=2", "--steps=1", "--warmup=0", f"--json={out}")
    error = "RuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 52.1GiB."
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: not timed: vit:test/8 ({error}); the tracebacks are above, the other models' "
        "figures in the tables.")
    assert "Traceback (most recent call last)" in proc.stderr  # for the record
    payload = json.loads(out.read_text())
    assert [r["spec"] for r in payload["models"]] == ["resnet:18"]
    assert payload["failed"] == {"vit:test/8": error} and payload["complete"]
    assert "| resnet:18 | 2 | 32 | float32 |" in proc.stdout
    assert f"Not timed (failed): vit:test/8: {error}" in proc.stdout.splitlines()
    assert "  (without vit:test/8, not measured: the total is too low)" in proc.stdout


def test_report_of_a_stopped_run_after_a_failed_model():
    payload = {"machine": {"backend": "gpu"},
               "settings": {"models": "vit:B/16,resnet:50,manet"},
               "models": [_timed("vit:B/16", 96)], "failed": {"resnet:50": "RuntimeError: x"},
               "ensemble": None}
    text = report.summary(payload)
    assert "  (without resnet:50, manet, not measured: the total is too low)" in text
    assert text.endswith("Not timed (failed): resnet:50: RuntimeError: x\n\n"
                         "Not timed (the run stopped first): manet.")


def test_accelerator_script_does_not_print_a_finished_runs_tables_twice(tmp_path):
    """A run that failed a model but timed the others printed every table itself and ends with
    status 1: the script's reprint for a stopped run would repeat them all."""
    payload = {"machine": {"backend": "gpu"}, "settings": {"models": "vit:B/16,resnet:50"},
               "models": [_timed("vit:B/16", 96)], "failed": {"resnet:50": "RuntimeError: x"},
               "ensemble": None, "complete": True}
    out, proc = _script_after_a_stopped_bench(tmp_path, payload, then='echo "the tables"')
    assert proc.returncode == 0, proc.stderr
    assert (out / "bench.txt").read_text() == "the tables\nstopped\n"
    assert (f"the benchmark ended with status 124: the models it could not time are named at "
            f"the end of {out}/bench.txt, the others' figures are in {out}/bench.json"
            in proc.stderr.splitlines())


def test_report_of_a_run_that_timed_no_model():
    payload = {"machine": {"backend": "gpu"}, "settings": {"models": "vit:B/16,manet"},
               "models": [], "ensemble": None}
    assert report.summary(payload) == ("No model was timed.\n\n"
                                       "Not timed (the run stopped first): vit:B/16, manet.")


def test_report_reads_the_json_that_bench_wrote_on_gs(bucket, capsys):
    """python -m cer_jax.bench --json=gs://... writes through epath; its report CLI read the
    file with open(): 'No such file or directory' for the file the benchmark had written."""
    payload = {"machine": {"backend": "gpu"}, "settings": {"models": "vit:B/16,manet"},
               "models": [], "ensemble": None}
    throughput.write_json("gs://test-bucket/runs/bench.json", payload)
    assert (bucket.root / "runs" / "bench.json").is_file()
    report.main(["report", "gs://test-bucket/runs/bench.json"])
    assert capsys.readouterr().out == report.summary(payload) + "\n"


def test_compile_times_read_from_a_persistent_cache_are_marked_so(tmp_path):
    """With JAX_COMPILATION_CACHE_DIR set, a second run's 'compile' times are cache reads (and
    the ensemble estimate's compile part with them): the header and the JSON said nothing."""
    cache = tmp_path / "xla_cache"
    proc = subprocess.run(
        [sys.executable, "-m", "cer_jax.bench", *TINY, f"--json={tmp_path / 'bench.json'}"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = proc.stdout.splitlines()[0]
    assert header.endswith(f", compilation cache {cache} (compile times may be cache reads)")
    machine = json.loads((tmp_path / "bench.json").read_text())["machine"]
    assert machine["compilation_cache"] == str(cache)


def test_a_run_whose_profiler_failed_does_not_point_to_tensorboard(tmp_path):
    """A GPU host without CUPTI: the profiler's error scrolled past on stderr mid-run and the
    summary ended with 'Profiles: DIR (tensorboard --logdir=DIR, Profile tab)', a trace that
    was never written. The summary now ends with the error instead."""
    prelude = ("import jax\n"
               "def broken(*args, **kwargs):\n"
               "    raise RuntimeError('CUPTI could not be loaded')\n"
               "jax.profiler.trace = broken")
    proc = run_bench_after(prelude, *TINY_RUN, f"--profile={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tensorboard" not in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == (
        f"no profile in {tmp_path / 'vit_test_8'}: RuntimeError: CUPTI could not be loaded")


def test_a_failing_profiler_costs_the_trace_not_the_benchmark(tmp_path, monkeypatch):
    """--profile runs after a model's timings; a profiler error (no CUPTI on a GPU host, a
    trace already running) used to end the whole benchmark, losing every later model."""
    @contextlib.contextmanager
    def broken(log_dir):
        raise RuntimeError("CUPTI could not be loaded")
        yield

    monkeypatch.setattr(jax.profiler, "trace", broken)
    steps_run = []
    error = throughput.profile(str(tmp_path), lambda: steps_run.append("train"),
                               lambda: steps_run.append("eval"))
    assert error == f"no profile in {tmp_path}: RuntimeError: CUPTI could not be loaded"
    assert steps_run == []


def test_peak_memory_is_not_an_earlier_models_peak(monkeypatch):
    """The device's peak_bytes_in_use counts from the start of the process: ResNet-50 timed
    after ViT-B/16 used to report ViT's peak as its own when it stayed below it."""
    monkeypatch.setattr(throughput, "device_peak_bytes", lambda: 9 * 2**30)
    rose = throughput.memory_figures(object(), peak_before=6 * 2**30)
    assert (rose["peak_bytes_in_use"], rose["peak_bytes_at_most"]) == (9 * 2**30, None)
    below = throughput.memory_figures(object(), peak_before=9 * 2**30)
    assert (below["peak_bytes_in_use"], below["peak_bytes_at_most"]) == (None, 9 * 2**30)
    first = throughput.memory_figures(object(), peak_before=None)
    assert first["peak_bytes_in_use"] == 9 * 2**30
    monkeypatch.setattr(throughput, "device_peak_bytes", lambda: None)  # CPU: no figure
    assert throughput.memory_figures(object(), peak_before=None)["peak_bytes_in_use"] is None
    row = _timed("resnet:50", 96) | {"peak_bytes_in_use": None, "peak_bytes_at_most": 9 * 2**30}
    assert "| <= 9,216 |" in report.results_table([row])


def test_the_recipes_load_without_opencv_or_pillow():
    """A bare accelerator host (JAX, no TensorFlow) may lack OpenCV and Pillow, which only the
    synthetic dataset draws with; loading configs/*.py imported them (through the synthetic
    size defaults), so the step benchmark died before its first model."""
    code = ("import sys\n"
            "for name in ('cv2', 'PIL', 'tensorflow', 'tensorflow_datasets', 'clu'):\n"
            "    sys.modules[name] = None\n"
            "from cer_jax.bench import throughput\n"
            "for spec in ('vit:B/16', 'resnet:50', 'manet'):\n"
            "    s = throughput.resolve(spec, image_size=None, batch_size=None,\n"
            "                           precision='bfloat16', num_classes=11)\n"
            "    print(spec, s.batch_size, s.config.dataset.synthetic_num_train_images)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from cer_jax import synthetic

    assert proc.stdout.split("\n")[:3] == [f"{spec} {batch} {synthetic.NUM_TRAIN_IMAGES}" for
                                          spec, batch in (("vit:B/16", 96), ("resnet:50", 96),
                                                          ("manet", 128))]


def test_the_step_benchmark_runs_on_a_host_without_tensorflow_or_pytorch(tmp_path):
    """Issue 12: without --input and --compare_torch the bench needs only the package and JAX
    (a bare accelerator host). A guard: no import of the optional stacks creeps into its path."""
    prelude = ("import sys\n"
               "for name in ('tensorflow', 'tensorflow_datasets', 'clu', 'torch', 'transformers',\n"
               "             'cv2', 'PIL'):\n"
               "    sys.modules[name] = None")
    proc = run_bench_after(prelude, *TINY_RUN, f"--json={tmp_path / 'bench.json'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| vit:test/8 | 2 | 32 | float32 |" in proc.stdout
    assert json.loads((tmp_path / "bench.json").read_text())["models"][0]["compile_train_s"] > 0


# Runs the CLI with a PyTorch reference whose first train step fails, as a PyTorch whose cuDNN
# is older than the one JAX loaded first fails on a GPU host.
RUN_WITH_BROKEN_TORCH = """
import runpy, sys
from cer_jax.bench import torch_ref

def broken(setup, **kwargs):
    def fails():
        raise RuntimeError("cuDNN version incompatibility: PyTorch was compiled against "
                           "(9, 1, 0) but found runtime version (9, 0, 0).\\nmore detail")
    return torch_ref.ReferenceSteps(fails, fails, "torch (fake)", 1)

torch_ref.reference_steps = broken
sys.argv = ["cer_jax.bench", *sys.argv[1:]]
runpy.run_module("cer_jax.bench", run_name="__main__", alter_sys=True)
"""


def test_a_failing_pytorch_reference_costs_the_comparison_not_the_benchmark(tmp_path):
    """On the one lent GPU run a PyTorch that cannot run beside JAX (an older cuDNN than the
    one JAX loaded, no memory left beside JAX's) ended the whole benchmark at its first step,
    with every JAX figure. Now that model is timed without its comparison, and says why."""
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-c", RUN_WITH_BROKEN_TORCH, *TINY,
                           "--compare_torch", f"--json={out}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    message = ("no PyTorch reference for vit:test/8: RuntimeError: cuDNN version "
               "incompatibility: PyTorch was compiled against (9, 1, 0) but found runtime "
               "version (9, 0, 0).")
    (r,) = json.loads(out.read_text())["models"]
    assert r["train_images_per_s"] > 0 and "torch" not in r
    assert r["torch_error"] == message
    assert message in proc.stdout.splitlines()  # in the printed tables too


def test_a_missed_goal_on_a_device_without_a_listed_peak_shows_no_mfu():
    """On a device peaks.py does not list (H100 NVL, B200...) MFU is unknown: the goal line
    printed "train MFU 0.0 %", a figure that was never measured."""
    unknown = _member("vit:B/16", blocked=3000.0, pipelined=3100.0) | {"train_mfu": None}
    assert report.goal_lines([unknown], "gpu") == (
        "vit:B/16: 3100 img/s misses the 4000 img/s goal; dominated by: step "
        "(no MFU: peaks.py lists no peak for this device).")


def test_a_missed_goal_on_a_listed_device_whose_flops_were_refused_does_not_blame_peaks():
    """An H100 is in peaks.py; where its FLOP count was refused (jax-ml/jax#22249) the goal
    line said "peaks.py lists no peak for this device", sending the reader to the wrong file."""
    refused = _member("vit:B/16", blocked=3000.0, pipelined=3100.0) | {
        "train_mfu": None, "flops_error": "no FLOPs or MFU: XLA's cost analysis on gpu ..."}
    assert report.goal_lines([refused], "gpu") == (
        "vit:B/16: 3100 img/s misses the 4000 img/s goal; dominated by: step "
        "(no MFU: no FLOP count, the line under the table says why).")


def test_a_backend_that_miscounts_products_gets_no_flops_or_mfu(monkeypatch):
    """XLA:GPU's cost analysis counted a product it hands to cuBLAS as little more than its
    output (jax-ml/jax#22249): the lent GPU run would have printed FLOPs / image and an MFU
    some 100x too low as measured figures. A backend that miscounts a known product now gets
    neither, and the table says why."""
    assert costs.miscounted_flops() is None  # XLA:CPU counts them right
    costs.miscounted_flops.cache_clear()
    monkeypatch.setattr(costs, "xla_flops", lambda fn, *args: 98_303.0)  # its output's size
    try:
        message = costs.miscounted_flops()
        setup = throughput.resolve("vit:test/8", image_size=32, batch_size=4,
                                   precision="bfloat16", num_classes=11)
        from cer_jax import sharding

        r = throughput.bench_model(setup, sharding.create_mesh(), steps_=1, warmup=0)
    finally:
        costs.miscounted_flops.cache_clear()
    assert message == (
        f"no FLOPs or MFU: XLA's cost analysis on {jax.default_backend()} counts 9.83e+04 FLOPs "
        "for a 256x512x384 matrix product of 1.007e+08 (costs_cpu.txt of bench/accelerator.sh "
        "has the FLOPs as XLA:CPU counts them)")
    assert r["train_images_per_s"] > 0 and r["flops_error"] == message
    assert (r["train_flops_per_image"], r["train_flops_per_s"], r["train_mfu"]) == (None,) * 3
    table = report.results_table([r]).splitlines()
    assert table[2].split(" | ")[7:9] == ["-", "-"] and table[-1] == message


def test_a_failing_flops_check_costs_the_flops_not_the_figures(monkeypatch):
    """The check runs after a model's timings: an error in it must not lose them."""
    def fails(fn, *args):
        raise RuntimeError("INTERNAL: no cost analysis")

    costs.miscounted_flops.cache_clear()
    monkeypatch.setattr(costs, "xla_flops", fails)
    try:
        message = costs.miscounted_flops()
    finally:
        costs.miscounted_flops.cache_clear()
    assert message == (f"no FLOPs or MFU: counting a 256x512x384 matrix product failed on "
                       f"{jax.default_backend()}: INTERNAL: no cost analysis")


def test_compare_torch_beside_a_gpu_with_a_cpu_only_pytorch_is_one_line():
    """JAX on a GPU and a CPU-only PyTorch: the reference ran on the host CPU and the table
    printed a GPU-against-CPU ratio as cer_jax's speed-up over PyTorch."""
    proc = run_bench_after("import jax; jax.default_backend = lambda: 'gpu'", *TINY,
                           "--compare_torch")
    import torch

    _one_line_error(proc, f"--compare_torch: JAX runs on gpu, but this PyTorch "
                    f"({torch.__version__}) sees no CUDA GPU, so the ratios would compare the "
                    "accelerator with the host CPU; install PyTorch's CUDA build, or drop "
                    "--compare_torch.")


def test_a_config_files_model_dtype_is_the_default_precision(tmp_path):
    """--models=a config file of model.dtype='bfloat16' was timed in float32 (the --precision
    default) without a word; the config's dtype is now the default, and --precision wins."""
    path = tmp_path / "manet_bf16.py"
    path.write_text("from cer_jax.config_loading import load_config\n\n\n"
                    "def get_config(arg=None):\n"
                    "    config = load_config('configs/manet.py:smoke')\n"
                    "    config.model.dtype = 'bfloat16'\n"
                    "    return config\n")
    setup = throughput.resolve(str(path), image_size=None, batch_size=None, precision=None,
                               num_classes=11)
    assert (setup.precision, setup.config.model.dtype) == ("bfloat16", "bfloat16")
    setup = throughput.resolve(str(path), image_size=None, batch_size=None,
                               precision="float32", num_classes=11)
    assert (setup.precision, setup.config.model.dtype) == ("float32", "float32")
    recipe = throughput.resolve("manet", image_size=None, batch_size=None, precision=None,
                                num_classes=11)
    assert recipe.precision == "float32"


@pytest.mark.parametrize("spec", ["resnet:18", "manet:16"])
def test_the_pytorch_reference_runs_conv_nets_channels_last_computing_the_same(spec):
    """PyTorch's guide runs convolutional networks channels_last (oneDNN, cuDNN tensor cores);
    in NCHW its ResNet-50 / MA-Net steps were 5-24 % slower on the development CPU, which
    flattered our ratios. The layout must not change what the reference computes."""
    import torch

    from cer_jax.bench import torch_ref

    setup = throughput.resolve(spec, image_size=32, batch_size=2, precision="float32",
                               num_classes=7)
    reference = torch_ref.reference_steps(setup)
    reference.train_step()
    convs = [m.weight for m in reference.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert reference.framework.endswith(", channels_last)")
    model = reference.model.eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        channels_last = torch_ref.head_logits(
            setup, model(images.contiguous(memory_format=torch.channels_last)))[0][0]
        nchw = torch_ref.head_logits(setup, model.to(memory_format=torch.contiguous_format)(
            images))[0][0]
    torch.testing.assert_close(channels_last, nchw, rtol=1e-4, atol=1e-5)


def test_paired_steps_far_below_the_back_to_back_rate_are_said_with_that_ratio():
    """The 2026-12-07 run: ResNet-50's training steps paired with channels_last PyTorch's ran at
    7.0 img/s, back to back at 10.7 (kernel stalls after each PyTorch step), and the table said
    only 0.57x. Evaluation (43.0 paired, 41.8 back to back) gets no line."""
    row = {"spec": "resnet:50", "params": 1, "train_images_per_s": 7.0,
           "train_images_per_s_pipelined": 10.7, "eval_images_per_s": 43.0,
           "eval_images_per_s_pipelined": 41.8, "ratio_train": 0.57, "ratio_eval": 0.88,
           "torch": {"train_images_per_s": 13.1, "eval_images_per_s": 48.6, "params": 1,
                     "framework": "torch (cpu)"}}
    extra = report.torch_table([row]).split("ratios.\n", 1)[1]
    assert extra == (
        "resnet:50 train: cer_jax's steps paired with PyTorch's ran at 7.0 img/s, back to back "
        "without PyTorch at 10.7 (on a CPU VM a step right after PyTorch's can stall in the "
        "kernel; on an accelerator a blocked step also waits for its dispatch); against the "
        f"back-to-back rate the ratio is {10.7 / 13.1:.2f}x (not paired).")
