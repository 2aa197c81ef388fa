#!/usr/bin/env bash
# One machine with NVIDIA GPUs: one process drives every visible GPU (the data-parallel mesh
# spans them; no jax.distributed, no coordinator).
#
# Usage: launch/gpu.sh [--dry-run] COMMAND [ARGS...]
#   --dry-run (or DRY_RUN=1) prints the exact commands, one per line, instead of running them.
#
# Commands:
#   install                         pip install this checkout with the CUDA build of JAX into
#                                   $PYTHON's environment (make it a venv: a system Python may
#                                   refuse pip), and PyTorch's CPU build when a *_WEIGHTS file is
#                                   a PyTorch one (.pth, .pth.tar, .pt, .bin, .ckpt, or a folder
#                                   read through one; it only reads it)
#   train CONFIG WORKDIR [OVERRIDES...]
#                                   one training (e.g. configs/manet.py runs/manet)
#   ensemble RUNS [OVERRIDES...]    vit, manet and resnet50 into RUNS/<name> (the OVERRIDES go to
#                                   all three, after the data and weights flags), then `fuse`
#   fuse RUNS [OVERRIDES...]        fuse RUNS/vit,RUNS/manet,RUNS/resnet50 into RUNS/fusion
#
# Environment (defaults in brackets):
#   CUDA_VISIBLE_DEVICES [all]  the GPUs to use
#   DATA_DIR     TFDS data_dir holding the built rafdb dataset (--config.dataset.data_dir)
#                [unset: the config's default, ~/tensorflow_datasets]
#   TFDS_CONFIG  the rafdb builder config the trainings read (compound | compound_abaw7 |
#                basic: --config.dataset.name=rafdb/TFDS_CONFIG) [unset: the config's, compound]
#   VIT_WEIGHTS MANET_WEIGHTS RESNET50_WEIGHTS  pre-trained files for `ensemble` (unset: the
#                member trains from scratch)
#   SMOKE [0]    1: the configs' :smoke variants on synthetic data (a quick check of the setup)
#   PYTHON [python]  JAX_SPEC ['jax[cuda12]>=0.10.2,<0.11']
#   XLA_PYTHON_CLIENT_PREALLOCATE [false]  XLA takes GPU memory as it needs it instead of 75 %
#                up front (the input pipeline shares the host)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

PYTHON=${PYTHON:-python}
JAX_SPEC=${JAX_SPEC:-'jax[cuda12]>=0.10.2,<0.11'}
PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
TORCH_HINT="run launch/gpu.sh install with the *_WEIGHTS variables set, or $TORCH_HINT"

launch_python() {
  run_forwarding_signals env XLA_PYTHON_CLIENT_PREALLOCATE="$PREALLOCATE" "$PYTHON" "$@"
}

check_workdir() {
  [ -n "$1" ] || die "empty workdir"
}

weights_for() {
  printf '%s' "$2"
}

parse_flags "$@"
shift "$FLAG_COUNT"
[ $# -ge 1 ] || { usage >&2; exit 2; }
COMMAND=$1
shift
# One process for every GPU: inside a SLURM step of several tasks (an `srun --pty bash` in an
# allocation of --ntasks-per-node=G is G tasks, one shell) the trainer would take itself for
# one of them, start jax.distributed and wait for the others (minutes, then an abort).
STEP_TASKS=${SLURM_STEP_NUM_TASKS:-1}
if [ "$COMMAND" != install ] && [ -n "${SLURM_STEP_ID:-}" ] \
  && [ "$STEP_TASKS" -gt 1 ] 2>/dev/null; then
  die "this SLURM step has $STEP_TASKS tasks (SLURM_STEP_NUM_TASKS), but launch/gpu.sh runs one" \
    "process for all the GPUs: run it in a step of one task (srun --ntasks=1 ...), or use" \
    "launch/slurm.sh for one process per GPU"
fi
case "$COMMAND" in
  install)
    no_arguments "$COMMAND" "$@"
    need "$PYTHON"
    run "$PYTHON" -m pip install -e "$REPO" "$JAX_SPEC"
    if [ -n "$(torch_weights_vars)" ]; then
      run "$PYTHON" -m pip install torch --index-url "$TORCH_CPU_INDEX"
    fi
    ;;
  train)
    check_args "train CONFIG WORKDIR [OVERRIDES...]" 2 "$@"
    need "$PYTHON"
    run_train "$@"
    ;;
  ensemble | fuse)
    check_args "$COMMAND RUNS [OVERRIDES...]" 1 "$@"
    need "$PYTHON"
    "run_$COMMAND" "$@"
    ;;
  *) die "unknown command '$COMMAND' (see launch/gpu.sh --help)" ;;
esac
