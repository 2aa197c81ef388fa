"""The benchmark CLI at a tiny size: JSON figures, FLOPs against analytic counts, no TensorFlow,
PyTorch ratios. Performance figures are printed by the CLI, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from cer_jax.bench import costs, ensemble_time, input_bench, peaks, throughput

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


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-c", RUN_CLI, "--models=vit:test/8", "--image_size=32",
         "--batch_size=4", "--steps=2", "--warmup=1", "--compare_torch", f"--json={out}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_cli_writes_every_figure_and_never_imports_tensorflow(cli_run):
    stdout, payload = cli_run
    assert "TENSORFLOW_IMPORTED=False" in stdout
    assert payload["machine"]["backend"] == jax.default_backend()
    (r,) = payload["models"]
    assert (r["spec"], r["batch_size"], r["image_size"], r["precision"]) == (
        "vit:test/8", 4, 32, "float32")
    for key in ("compile_train_s", "compile_eval_s", "train_images_per_s", "eval_images_per_s",
                "train_images_per_s_pipelined", "eval_images_per_s_pipelined",
                "train_flops_per_image", "eval_flops_per_image", "train_flops_per_s",
                "eval_flops_per_s", "train_program_bytes", "params"):
        assert r[key] > 0, key
    for key in ("train_page_faults_per_step", "eval_page_faults_per_step",
                "train_kernel_s_per_step", "eval_kernel_s_per_step"):
        assert r[key] >= 0, key
    assert payload["machine"]["glibc_tunables"] == os.environ.get("GLIBC_TUNABLES", "")
    assert r["train_mfu"] is None and r["eval_mfu"] is None  # CPU: no peak, no MFU
    assert r["train_flops_per_image"] > 2 * r["eval_flops_per_image"]
    # The eval program is the forward pass plus the loss: the costs command's forward count.
    model = costs.abstract_model("vit", num_classes=11, variant="test/8", image_size=32)
    forward = costs.forward_flops(model, image_size=32, batch_size=4)
    assert forward <= r["eval_flops_per_image"] <= 1.05 * forward
    assert payload["ensemble"]["total_s"] > 0
    assert "| vit:test/8 | 4 | 32 | float32 |" in stdout


def test_compare_torch_gives_ratios_for_the_same_network(cli_run):
    stdout, payload = cli_run
    (r,) = payload["models"]
    assert r["torch"]["params"] == r["params"]  # HF ViT configured as our variant
    assert r["ratio_train"] > 0 and r["ratio_eval"] > 0
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


def test_input_bound_and_ensemble_estimate():
    fast_input = {"images_per_s": 800.0, "images_per_s_per_core": 100.0}
    assert input_bench.bound(500.0, fast_input) == {
        "bound_by": "step", "host_cores_needed": 5, "training_images_per_s": 500.0}
    assert input_bench.bound(1000.0, fast_input)["bound_by"] == "input"
    member = {"spec": "m", "compile_train_s": 10.0, "compile_eval_s": 5.0,
              "train_images_per_s_pipelined": 1000.0, "eval_images_per_s_pipelined": 2000.0,
              "num_epochs": 2.0, "recipe_batch_size": 100}
    estimate = ensemble_time.ensemble_estimate([member])
    steps = 2 * (ensemble_time.TRAIN_FIT // 100)
    m = estimate["members"]["m"]
    assert m["steps"] == steps and m["train_s"] == pytest.approx(steps * 100 / 1000.0)
    assert estimate["total_s"] == pytest.approx(m["compile_s"] + m["train_s"] + m["eval_s"])
