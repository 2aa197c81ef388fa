#!/usr/bin/env bash
#SBATCH --job-name=cer_jax
#SBATCH --output=cer_jax-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=TERM@300
# A GPU cluster under SLURM: several nodes, one JAX process per GPU (or per node), all started
# by one `srun` per training; the processes form one data-parallel mesh over every GPU.
#
# Usage (from the checkout, on a filesystem every node sees):
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 --cpus-per-task=16 --time=24:00:00 \
#     launch/slurm.sh ensemble /shared/runs
#   (--ntasks-per-node: the tasks each srun starts on a node, 1 with PROCS=per-node; without it
#   SLURM may grant one CPU per node, too few for them. --cpus-per-task: each task's host cores
#   for its input pipeline, passed on to every srun; ~16 per GPU, BENCHMARKS.md.)
#   launch/slurm.sh [--dry-run] COMMAND [ARGS...]     (inside salloc, or to print the commands)
#   --dry-run (or DRY_RUN=1) prints the exact commands, one per line, instead of running them.
#
# Commands (as launch/gpu.sh; every one is an srun over the whole allocation):
#   train CONFIG WORKDIR [OVERRIDES...]
#   ensemble RUNS [OVERRIDES...]    vit, manet and resnet50 into RUNS/<name>, then `fuse`
#   fuse RUNS [OVERRIDES...]        fuse RUNS/vit,RUNS/manet,RUNS/resnet50 into RUNS/fusion
#
# Environment (defaults in brackets):
#   NODES [SLURM_JOB_NUM_NODES, else 1]
#   GPUS_PER_NODE [SLURM_GPUS_ON_NODE, else the count in SLURM_GPUS_PER_NODE]
#   PROCS [per-gpu]  per-gpu: NODES x GPUS_PER_NODE tasks, each drives one GPU (the one whose
#                index is its SLURM_LOCALID: JAX narrows each task to it); every task sees all
#                GPUs of its node (--gpu-bind=none), so that index means the same GPU.
#                per-node: NODES tasks, each drives all GPUS_PER_NODE GPUs of its node
#                (JAX_LOCAL_DEVICE_IDS=0,...,G-1 stops JAX narrowing a task to GPU 0).
#   SRUN_ARGS    more srun flags, split on spaces, after the script's own (e.g. "--partition=gpu")
#   DATA_DIR TFDS_CONFIG VIT_WEIGHTS MANET_WEIGHTS RESNET50_WEIGHTS SMOKE PYTHON [python]
#                as in launch/gpu.sh; every path must be readable from every node (or gs://),
#                and the Python environment (pip install -e . 'jax[cuda12]') too
#
# Time limits, preemption, scancel: `--signal=TERM@300` (above; no `B:`) sends SIGTERM to the
# trainings, not to this shell, about 5 minutes before the time limit: every task saves its step
# and exits with status 143, and the script stops there. At the limit itself SLURM signals srun
# too, and srun answers SIGTERM with SIGKILL to its tasks: nothing since the last checkpoint is
# saved. So stop a job with `scancel --signal=TERM JOBID` (the steps only), not a plain
# `scancel`. To go on, submit the same sbatch line again: a finished member only re-exports its
# best checkpoint (a minute or so), the stopped one resumes, and the fusion is redone. On a
# preemptible partition, `sbatch --requeue` restarts the script the same way (it needs a
# GraceTime longer than one log interval and a save); the log is appended to (--open-mode).
#
# How the processes find each other: srun gives every task SLURM_JOB_ID, SLURM_STEP_NODELIST,
# SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID; the trainer calls jax.distributed.initialize(),
# which reads them: the coordinator is the step's first node at a port derived from the job id
# (JAX_COORDINATOR_PORT overrides it; JAX_COORDINATOR_ADDRESS=host:port overrides both), the
# process count is SLURM_NTASKS and the process id SLURM_PROCID.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ ! -f "$HERE/common.sh" ]; then
  # sbatch runs a copy of this script from its spool directory: use the submitting checkout.
  HERE=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}/launch
fi
if [ ! -f "$HERE/common.sh" ]; then
  echo "slurm.sh: no launch/common.sh: submit from the checkout or set REPO=/path/to/cer_jax" >&2
  exit 2
fi
# shellcheck source=common.sh
source "$HERE/common.sh"
parse_flags "$@"
shift "$FLAG_COUNT"
[ $# -ge 1 ] || { usage >&2; exit 2; }
COMMAND=$1
shift

PYTHON=${PYTHON:-python}
PROCS=${PROCS:-per-gpu}
NODES=${NODES:-${SLURM_JOB_NUM_NODES:-1}}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}}
GPUS_PER_NODE=${GPUS_PER_NODE##*:} # "a100:8" -> 8
PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
SRUN_EXTRA=()
if [ -n "${SRUN_ARGS:-}" ]; then
  read -r -a SRUN_EXTRA <<<"$SRUN_ARGS"
fi

case "$NODES" in '' | *[!0-9]* | 0) die "NODES must be a positive integer (got '$NODES')" ;; esac
case "$GPUS_PER_NODE" in
  '' | *[!0-9]* | 0) die "set GPUS_PER_NODE (got '$GPUS_PER_NODE'; sbatch --gpus-per-node=N sets it)" ;;
esac

# The srun layout and the environment every task gets.
TASK_ENV=(XLA_PYTHON_CLIENT_PREALLOCATE="$PREALLOCATE")
case "$PROCS" in
  per-gpu)
    TASKS_PER_NODE=$GPUS_PER_NODE
    LAYOUT=(--gpu-bind=none)
    ;;
  per-node)
    TASKS_PER_NODE=1
    LAYOUT=()
    ids=0
    i=1
    while [ "$i" -lt "$GPUS_PER_NODE" ]; do
      ids="$ids,$i"
      i=$((i + 1))
    done
    TASK_ENV+=(JAX_LOCAL_DEVICE_IDS="$ids")
    ;;
  *) die "PROCS must be per-gpu or per-node (got '$PROCS')" ;;
esac
# sbatch's --cpus-per-task reaches srun only in some SLURM versions: it is passed on.
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
  LAYOUT+=(--cpus-per-task="$SLURM_CPUS_PER_TASK")
fi
# --disable-status: a Ctrl-C inside salloc reaches the tasks at once as SIGINT, so they save;
# by default srun only prints their status, and a second Ctrl-C SIGKILLs them.
SRUN=(srun --nodes="$NODES" --ntasks="$((NODES * TASKS_PER_NODE))"
  --ntasks-per-node="$TASKS_PER_NODE" --gpus-per-node="$GPUS_PER_NODE" --kill-on-bad-exit=1
  --disable-status
  ${LAYOUT[@]+"${LAYOUT[@]}"} ${SRUN_EXTRA[@]+"${SRUN_EXTRA[@]}"})

launch_python() {
  run "${SRUN[@]}" env "${TASK_ENV[@]}" "$PYTHON" "$@"
}

check_workdir() {
  [ -n "$1" ] || die "empty workdir"
}

weights_for() {
  printf '%s' "$2"
}

need srun
note "$NODES node(s) x $TASKS_PER_NODE task(s) ($PROCS), $GPUS_PER_NODE GPU(s) per node"
case "$COMMAND" in
  train)
    check_args "train CONFIG WORKDIR [OVERRIDES...]" 2 "$@"
    run_train "$@"
    ;;
  ensemble | fuse)
    check_args "$COMMAND RUNS [OVERRIDES...]" 1 "$@"
    "run_$COMMAND" "$@"
    ;;
  *) die "unknown command '$COMMAND' (see launch/slurm.sh --help)" ;;
esac
