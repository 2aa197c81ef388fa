r"""The benchmark's printed tables and verdicts, from its result dicts (no flags, no JAX), so
that tests check the wording a user reads without defining the CLI's flags.

    python -m cer_jax.bench.report bench.json

prints them again from a benchmark's --json file, also from one whose run stopped (its timeout)
before every model was timed: bench/accelerator.sh does so for a stopped run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from etils import epath

from cer_jax import paths
from cer_jax.bench import ensemble_time
from cer_jax.errors import UserError

# Goals of issue 12 (one H100-class GPU, bf16, 224 px).
GOALS = {"vit:B/16": 4000.0, "resnet:50": 5000.0}
ENSEMBLE_GOAL_S = 15 * 60
# A pipelined step whose host dispatch takes this share of it or more is bound by the host.
HOST_BOUND = 0.9
# What a run on several devices says instead of a verdict on the one-chip goals.
ONE_CHIP = "not judged (run on one device to judge it, e.g. with CUDA_VISIBLE_DEVICES=0)"


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def _scaled(x: float | None, unit: float) -> float | None:
    return None if x is None else x / unit


def _mib(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**20:,.0f}"


def _peak(r: dict[str, Any]) -> str:
    """This model's peak device memory, or "<= N" where it stayed below an earlier model's
    (the device's peak counts from the start of the process)."""
    if r["peak_bytes_in_use"] is None and r.get("peak_bytes_at_most") is not None:
        return f"<= {_mib(r['peak_bytes_at_most'])}"
    return _mib(r["peak_bytes_in_use"])


def results_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| model | batch | size | precision | compile train / eval s | train img/s | "
        "eval img/s | train GFLOPs/img | achieved train TFLOP/s | train MFU | eval MFU | "
        "peak MiB | XLA-planned train MiB |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        mfu = [_fmt(None if r[f"{p}_mfu"] is None else 100 * r[f"{p}_mfu"], ".1f")
               + ("" if r[f"{p}_mfu"] is None else " %") for p in ("train", "eval")]
        lines.append(
            f"| {r['spec']} | {r['batch_size']} | {r['image_size']} | {r['precision']} | "
            f"{r['compile_train_s']:.1f} / {r['compile_eval_s']:.1f} | "
            f"{r['train_images_per_s']:.1f} | {r['eval_images_per_s']:.1f} | "
            f"{_fmt(_scaled(r['train_flops_per_image'], 1e9), '.3g')} | "
            f"{_fmt(_scaled(r['train_flops_per_s'], 1e12), '.3f')} | "
            f"{mfu[0]} | {mfu[1]} | {_peak(r)} | "
            f"{_mib(r['train_program_bytes'])} |")
    lines.append("\nimg/s: median of timed steps, each blocked until ready; pipelined (back to "
                 "back, as the trainer runs) train / eval img/s: "
                 + ", ".join(f"{r['spec']} {r['train_images_per_s_pipelined']:.1f} / "
                             f"{r['eval_images_per_s_pipelined']:.1f}" for r in results))
    if all("train_dispatch_s" in r for r in results):
        lines.append("host dispatch per blocked step (until the call returned; back to back a "
                     "step takes the longer of this and its device time), train / eval ms: "
                     + ", ".join(f"{r['spec']} {1e3 * r['train_dispatch_s']:.1f} / "
                                 f"{1e3 * r['eval_dispatch_s']:.1f}" for r in results))
    lines.append("page faults / kernel CPU s per pipelined train step (this process): "
                 + ", ".join(f"{r['spec']} {r['train_page_faults_per_step']:,.0f} / "
                             f"{r['train_kernel_s_per_step']:.2f}" for r in results))
    lines.extend(sorted({r["flops_error"] for r in results if r.get("flops_error")}))
    return "\n".join(lines)


def torch_table(results: list[dict[str, Any]]) -> str:
    rows = [r for r in results if "torch" in r]
    errors = "\n".join(r["torch_error"] for r in results if r.get("torch_error"))
    if not rows:
        return errors
    lines = [
        "| model | cer_jax train img/s | PyTorch train img/s | train ratio | "
        "cer_jax eval img/s | PyTorch eval img/s | eval ratio | params cer_jax / PyTorch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r["torch"]
        lines.append(
            f"| {r['spec']} | {r['train_images_per_s']:.1f} | {t['train_images_per_s']:.1f} | "
            f"**{r['ratio_train']:.2f}x** | {r['eval_images_per_s']:.1f} | "
            f"{t['eval_images_per_s']:.1f} | **{r['ratio_eval']:.2f}x** | "
            f"{r['params']:,} / {t['params']:,} |")
    lines.append(f"\nratio = cer_jax / PyTorch images/s, same process, batch and precision "
                 f"({rows[0]['torch']['framework']}); the two alternate (each timed step after "
                 "an untimed one of its side) and the ratio is the median of the per-pair "
                 "ratios.")
    lines.extend(_paired_slowdowns(rows))
    if errors:
        lines.append(errors)
    return "\n".join(lines)


# Back to back, cer_jax's steps ran at most a few % below their blocked rate on every machine
# measured; far above it, the steps paired with PyTorch's were slowed by the pairing itself.
PAIRING_SLOWDOWN = 1.25


def _paired_slowdowns(rows: list[dict[str, Any]]) -> list[str]:
    """A line for each figure whose paired steps ran far below cer_jax's own back-to-back rate:
    on a 2-core VM the JAX step right after a PyTorch step often stalled in the kernel (0.6-1.7 s
    of kernel time, BENCHMARKS.md "2026-12-07"), and on an accelerator a short blocked step pays
    its dispatch; the paired ratio counts either against cer_jax, so the line gives the ratio of
    the back-to-back rate too (not paired, so drift is not cancelled)."""
    lines = []
    for r in rows:
        for part in ("train", "eval"):
            paired = r[f"{part}_images_per_s"]
            alone = r[f"{part}_images_per_s_pipelined"]
            if alone > PAIRING_SLOWDOWN * paired:
                lines.append(
                    f"{r['spec']} {part}: cer_jax's steps paired with PyTorch's ran at "
                    f"{paired:.1f} img/s, back to back without PyTorch at {alone:.1f} (on a "
                    "CPU VM a step right after PyTorch's can stall in the kernel; on an "
                    "accelerator a blocked step also waits for its dispatch); against the "
                    f"back-to-back rate the ratio is "
                    f"{alone / r['torch'][f'{part}_images_per_s']:.2f}x (not paired).")
    return lines


def input_lines(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        if "input" not in r:
            continue
        i, b = r["input"], r["input_bound"]
        lines.append(
            f"{r['spec']}: input pipeline {i['images_per_s']:.0f} img/s on {i['host_cores']} "
            f"host cores ({i['images_per_s_per_core']:.0f} per core) vs the train step "
            f"{r['train_images_per_s_pipelined']:.0f} img/s: training is bound by the "
            f"{b['bound_by']}; keeping this step fed needs {b['host_cores_needed']} host "
            "core(s).")
    return "\n".join(lines)


def ensemble_lines(results: list[dict[str, Any]], estimate: dict[str, Any] | None,
                   missing: Sequence[str] = (), devices: int = 1) -> str:
    if estimate is None:
        return ""
    lines = ["Time to train these members on RAF-DB-sized data, full recipe (estimate from the "
             "measured rates; cer_jax.bench.ensemble_time):"]
    for spec, m in estimate["members"].items():
        lines.append(f"  {spec}: {m['steps']} steps, compile {m['compile_s']:.0f} s + train "
                     f"{m['train_s']:.0f} s + eval {m['eval_s']:.0f} s = {m['total_s']:.0f} s")
    total = estimate["total_s"]
    verdict = ("meets the 15-minute goal" if total <= ENSEMBLE_GOAL_S
               else "misses the 15-minute goal") if devices == 1 else (
        f"on {devices} devices; the 15-minute goal is for one chip: {ONE_CHIP}")
    lines.append(f"  total {total / 60:.1f} min ({verdict}; largest part: "
                 f"{estimate['dominated_by']})")
    if any(r["batch_size"] != r["recipe_batch_size"] for r in results):
        lines.append("  (rates measured at --batch_size, not the recipe's batch: indicative)")
    if missing:
        lines.append(f"  (without {', '.join(missing)}, not measured: the total is too low)")
    return "\n".join(lines)


def summary(payload: dict[str, Any]) -> str:
    """Every table and verdict of a benchmark's JSON (`cer_jax.bench.main.write_json`); a run
    stopped before its last model names the models it did not time."""
    results = payload["models"]
    failed = payload.get("failed") or {}
    asked = [s.strip() for s in payload["settings"]["models"].split(",") if s.strip()]
    done = {r["spec"] for r in results} | set(failed)
    # The models are timed in the order given: those after the last one done were not reached.
    last = max((asked.index(spec) for spec in done if spec in asked), default=-1)
    missing = asked[last + 1:]
    devices = int(payload["machine"].get("device_count") or 1)
    estimate = payload.get("ensemble") or (
        ensemble_time.ensemble_estimate(results) if results else None)
    sections = [results_table(results) if results else "No model was timed.",
                torch_table(results), input_lines(results),
                goal_lines(results, payload["machine"]["backend"], devices),
                ensemble_lines(results, estimate, [*failed, *missing], devices)]
    if results and not any("input" in r for r in results):
        sections.append("The input pipeline was not measured (no --input): these rates and the "
                        "ensemble estimate assume it keeps up with the step.")
    sections.extend(f"Not timed (failed): {spec}: {error}" for spec, error in failed.items())
    if missing:
        sections.append(f"Not timed (the run stopped first): {', '.join(missing)}.")
    return "\n\n".join(s for s in sections if s)


def main(argv: Sequence[str]) -> None:
    """Through `cli.run`, as every other tool: --help exits 0 (it was read as the file name),
    an input error is one line with exit status 2, --traceback shows it whole."""
    if len(argv) != 2:
        raise UserError("usage: python -m cer_jax.bench.report BENCH_JSON (the --json file of "
                        "python -m cer_jax.bench or bench/accelerator.sh).")
    wrote = "give the file that python -m cer_jax.bench --json=FILE wrote."
    try:  # through epath: bench --json may have written it to gs://
        text = epath.Path(argv[1]).expanduser().read_bytes()
    except paths.io_errors() as e:  # was "[Errno 21] Is a directory: '...'", no way out
        raise UserError(f"{argv[1]} cannot be read ({paths.error_reason(e)}): {wrote}") from e
    try:
        payload = json.loads(text)
    except ValueError as e:  # was "Expecting value: line 1 column 1 (char 0)" alone
        raise UserError(f"{argv[1]} is not JSON ({e}): {wrote}") from e
    # What summary() reads first; anything else wrong past it is a bug, shown whole.
    if not (isinstance(payload, dict) and isinstance(payload.get("models"), list)
            and isinstance(payload.get("settings"), dict)):
        raise UserError(f"{argv[1]} is not a benchmark's --json file (no 'models'): {wrote}")
    print(summary(payload))


def goal_lines(results: list[dict[str, Any]], backend: str, devices: int = 1) -> str:
    """Each goal met or missed, and by what. The goals are for one chip: a run on several
    devices (all of a host's GPUs or TPU chips, data-parallel) is not judged against them (its
    img/s, several chips' worth, "met" a goal no single chip was shown to meet)."""
    if backend == "cpu":
        return ""
    lines = []
    for r in results:
        goal = GOALS.get(r["spec"])
        if goal is None or r["image_size"] != 224:
            continue
        rate = r.get("input_bound", {}).get("training_images_per_s",
                                            r["train_images_per_s_pipelined"])
        if devices > 1:
            lines.append(f"{r['spec']}: {rate:.0f} img/s on {devices} devices; the "
                         f"{goal:.0f} img/s goal is for one chip: {ONE_CHIP}")
            continue
        if rate >= goal:
            lines.append(f"{r['spec']}: {rate:.0f} img/s meets the {goal:.0f} img/s goal.")
            continue
        # Back to back, a step takes the longer of its host dispatch and its device time: the
        # host bounds it where dispatching (timed alone, until the call returned) takes about
        # as long as the pipelined step. The blocked step's excess over the pipelined one was
        # read as "host gaps", but it is the shorter of the two, whichever side that is.
        pipelined_step = r["batch_size"] / r["train_images_per_s_pipelined"]
        host_bound = (r.get("train_dispatch_s") or 0.0) >= HOST_BOUND * pipelined_step
        part = ("input" if r.get("input_bound", {}).get("bound_by") == "input"
                else "host dispatch" if host_bound else "step")
        mfu = (f"train MFU {100 * r['train_mfu']:.1f} %" if r["train_mfu"] is not None
               # The backend's FLOP count was refused (costs.miscounted_flops), not its peak.
               else "no MFU: no FLOP count, the line under the table says why"
               if r.get("flops_error") else "no MFU: peaks.py lists no peak for this device")
        lines.append(f"{r['spec']}: {rate:.0f} img/s misses the {goal:.0f} img/s goal; "
                     f"dominated by: {part} ({mfu}).")
    return "\n".join(lines)


if __name__ == "__main__":
    from cer_jax import cli

    cli.run(main)
