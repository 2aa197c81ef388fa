#!/usr/bin/env bash
# Every accelerator figure of BENCHMARKS.md in one run: ViT-B/16, ResNet-50 and MA-Net at
# 224x224 in bfloat16 on one GPU or TPU chip. Needs the package and JAX's GPU / TPU build only
# (pip install -e . "jax[cuda13]" or "jax[tpu]"); PyTorch is used only when it is installed.
# Budget: under 10 minutes on one H100-class GPU, compilation included.
#
#   bench/accelerator.sh [--dry-run] [--out DIR] [--no-torch] [--steps N]
#                        [--models LIST] [--image_size N] [--batch_size N] [--input_batches N]
#
# The defaults are the figures of BENCHMARKS.md; the size options exist so that a test runs
# the whole script on CPU at a tiny size (tests/test_bench.py) before a device is ever lent.
#
# Writes DIR/bench.txt (the tables), DIR/bench.json (every figure), DIR/profile/ (TensorBoard:
# tensorboard --logdir DIR/profile, Profile tab), DIR/costs_cpu.txt (FLOPs counted by XLA:CPU,
# a cross-check of the accelerator's cost analysis) and DIR/machine.txt.
# The interpreter: $PYTHON, else python, else python3 (a bare host may have python3 only).
set -euo pipefail

out="bench_out/$(date -u +%Y%m%dT%H%M%SZ)"
dry_run=0
torch=auto
steps=20
models="vit:B/16,resnet:50,manet"
image_size=224
batch_flag=()  # default: each recipe's batch (96 / 96 / 128)
input_batches=30
python="${PYTHON:-python}"
if [[ -z "${PYTHON:-}" ]] && ! command -v python >/dev/null; then python=python3; fi
# The whole script ends within this many seconds of its start (a lent machine's 10 minutes,
# less the package's install): the CPU cost count, last and optional, gets what is left.
budget_s=570

value() {
  # value OPTION ARGS...: the option's value, or one line and exit status 2 without one (an
  # empty one too: `--out "$UNSET"` wrote bench.json, profile/ and machine.txt into /).
  if [[ $# -lt 2 || -z "$2" || "$2" == --* ]]; then
    echo "$1 needs a value (see --help)" >&2
    exit 2
  fi
  printf '%s' "$2"
}

count() {
  # count OPTION ARGS...: the option's value, a whole number >= 1, or one line and exit status
  # 2 before any work (`--steps -1` failed the benchmark only after the probes, on the device).
  local v
  v=$(value "$@") || exit 2
  if [[ ! "$v" =~ ^[1-9][0-9]*$ ]]; then
    echo "$1 $v: give a whole number >= 1 (see --help)" >&2
    exit 2
  fi
  printf '%s' "$v"
}

while [[ $# -gt 0 ]]; do
  # --option=value as --option value, as the Python tools take both.
  if [[ "$1" == --*=* ]]; then set -- "${1%%=*}" "${1#*=}" "${@:2}"; fi
  case "$1" in
    --dry-run) dry_run=1 ;;
    --out) out=$(value "$@") || exit 2; shift ;;
    --no-torch) torch=no ;;
    --steps) steps=$(count "$@") || exit 2; shift ;;
    --models) models=$(value "$@") || exit 2; shift ;;
    --image_size) image_size=$(count "$@") || exit 2; shift ;;
    --batch_size) batch_flag=(--batch_size="$(count "$@")") || exit 2; shift ;;
    --input_batches) input_batches=$(count "$@") || exit 2; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

run() {
  # run LOG COMMAND...: prints the command; unless --dry-run, runs it, its output also in LOG.
  local log="$1"
  shift
  printf '+ %s > %s\n' "$*" "$log"
  if [[ "$dry_run" -eq 0 ]]; then
    "$@" 2>&1 | tee "$log"
  fi
}

# One GPU, as the goals are for one chip: on a host with several, JAX took them all
# (data-parallel) and the figures were several chips' worth. CUDA_VISIBLE_DEVICES set by the
# caller (empty too) is kept; a TPU host's chips are all used (cer_jax.bench says so).
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-0}"

torch_flag=()
# The PyTorch reference only where it runs on the same GPU (CUDA build of torch installed),
# probed as the benchmark runs it: JAX's backend first, then PyTorch in the same process (a
# PyTorch that imports alone but not beside JAX's CUDA libraries failed the whole benchmark
# before its first model, every JAX figure with it).
torch_probe='import jax; jax.devices()
import torch, transformers
assert torch.cuda.is_available(), "this PyTorch sees no CUDA GPU"
torch.ones(1, device="cuda").sum().item()'
if [[ "$torch" == auto ]]; then
  if probe=$(XLA_PYTHON_CLIENT_PREALLOCATE=false "$python" -c "$torch_probe" 2>&1); then
    torch_flag=(--compare_torch)
  else
    echo "PyTorch (CUDA build) and transformers do not run beside JAX here: no PyTorch" \
      "comparison ($(printf '%s\n' "$probe" | grep -v '^ ' | tail -n 1))" >&2
  fi
fi
if [[ ${#torch_flag[@]} -gt 0 ]]; then
  # Both frameworks in one process: JAX preallocates 75 % of the GPU by default, which would
  # leave PyTorch's allocator too little at the recipes' batches.
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}"
fi

# The input pipeline (tf.data) only where TensorFlow and TFDS are installed (pip install -e .
# brings them; a bare host with JAX preinstalled may lack them): the step figures need neither.
input_flag=(--input --input_batches="$input_batches")
if ! "$python" -c "import tensorflow, tensorflow_datasets" 2>/dev/null; then
  echo "TensorFlow / TFDS not importable: the input pipeline is not measured (no --input)" >&2
  input_flag=()
fi

if [[ "$dry_run" -eq 0 ]]; then
  mkdir -p "$out"
  {
    date -u
    echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
    "$python" -c "import jax; print(jax.devices()); print('JAX backend:', jax.default_backend())" \
      || true  # the check below says so in one line
    "$python" - <<'PY'
from importlib import metadata
for name in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "libtpu", "flax",
             "optax", "orbax-checkpoint", "cer_jax", "tensorflow", "torch", "transformers"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        pass
PY
    if command -v nvidia-smi >/dev/null; then nvidia-smi; fi
    nproc
    lscpu | grep 'Model name' || true
  } > "$out/machine.txt" 2>&1
  # A JAX whose GPU / TPU backend failed to start (a CUDA / cuDNN mismatch, a missing plugin)
  # falls back to the CPU with a warning: stop now rather than spend the run on CPU figures.
  backend=$(sed -n 's/^JAX backend: //p' "$out/machine.txt")
  if [[ "$backend" != gpu && "$backend" != tpu && "${JAX_PLATFORMS:-}" != cpu* ]]; then
    echo "JAX runs on '${backend:-nothing}', not a GPU or TPU (JAX_PLATFORMS=cpu" \
      "benchmarks the CPU on purpose): see $out/machine.txt and" \
      "python -c 'import jax; jax.devices()'" >&2
    exit 1
  fi
fi

# 1. Step throughput, compile time, FLOPs, MFU, memory (recipe batch sizes: 96 / 96 / 128),
#    the input pipeline per host core (--input) and a profile of a few steps; ~6 minutes.
#    Stopped by its timeout, the script still goes on: bench.json holds the models finished.
#    The two timeouts (450 + 100 s) keep the whole run under 10 minutes.
run "$out/bench.txt" timeout -k 20 450 "$python" -m cer_jax.bench --models="$models" \
  --image_size="$image_size" "${batch_flag[@]}" --precision=bfloat16 --steps="$steps" \
  --warmup=3 "${input_flag[@]}" --profile="$out/profile" \
  --json="$out/bench.json" "${torch_flag[@]}" \
  || {
    status=$?
    # A model that failed (its traceback above) costs that model only: the run went on to the
    # others and printed every table ("complete" in bench.json), so nothing is printed again.
    if [[ -f "$out/bench.json" ]] && "$python" -c 'import json, sys
sys.exit(not json.load(open(sys.argv[1])).get("complete"))' "$out/bench.json" 2>/dev/null; then
      echo "the benchmark ended with status $status: the models it could not time are" \
        "named at the end of $out/bench.txt, the others' figures are in $out/bench.json" >&2
    else
      echo "the benchmark stopped (status $status): the models it finished are in" \
        "$out/bench.json" >&2
      # Their tables and the ensemble estimate, which the stopped run did not print.
      if [[ -f "$out/bench.json" ]]; then
        "$python" -m cer_jax.bench.report "$out/bench.json" | tee -a "$out/bench.txt" || true
      fi
    fi
  }

# 2. FLOPs as XLA:CPU counts them (abstract models, compile only), to cross-check the
#    accelerator's cost analysis (custom calls such as cuDNN convolutions may count differently).
#    At most 100 s, and only what is left of the script's budget: each row is printed as it is
#    counted, so a count stopped by its timeout keeps the models it finished.
costs_s=$((budget_s - SECONDS))
if [[ "$dry_run" -eq 1 || "$costs_s" -gt 100 ]]; then costs_s=100; fi
if [[ "$costs_s" -ge 10 ]]; then
  run "$out/costs_cpu.txt" env JAX_PLATFORMS=cpu timeout "$costs_s" "$python" \
    -m cer_jax.bench.costs --models="$models" --image_size="$image_size" \
    || echo "costs on CPU did not finish (optional)"
else
  echo "no time left for the costs on CPU (optional): the script's ${budget_s} s are spent" >&2
fi

if [[ "$dry_run" -eq 0 ]]; then
  echo "figures in $out"
fi
