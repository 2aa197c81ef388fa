# shellcheck shell=bash
# Helpers shared by launch/*.sh. Sourced, never run. Written for bash 3.2 (macOS) and later.
#
# Dry run: every script takes --dry-run (or DRY_RUN=1) and then prints, one per line, each
# command it would run, quoted so that pasting the line into bash runs exactly that command
# (printf %q: a value with spaces or quotes stays one argument). Lines that start with '#' are
# notes. Nothing is created, copied or started, and neither gcloud nor SLURM is needed.
#
# A script that sources this file defines:
#   launch_python ARG...   run `python ARG...` where the training runs (every host / task)
#   check_workdir DIR      fail when DIR cannot be a workdir there
#   weights_for NAME FILE  the path member NAME's training reads its pre-trained FILE from
# and may set TORCH_HINT: how to get PyTorch where the training runs (no double quotes).

# PyTorch's own index of CPU wheels: a PyTorch weights file (MA-Net's .pth.tar) needs PyTorch
# only to be unpickled, and PyPI's Linux wheel is the CUDA build (~3 GB, and its CUDA libraries
# can clash with those of JAX's CUDA build).
TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
TORCH_HINT="install its CPU build there: pip install torch --index-url $TORCH_CPU_INDEX"

DRY_RUN=${DRY_RUN:-0}
SMOKE=${SMOKE:-0}

# The three ensemble members; member NAME trains configs/NAME.py into RUNS/NAME.
MEMBERS="vit manet resnet50"

die() {
  printf '%s: error: %s\n' "${0##*/}" "$*" >&2
  exit 2
}

# Fails unless each named variable is 0 or 1 (unset: its default, already applied). A `true`
# or `yes` would otherwise read as 0: DRY_RUN=true would run everything for real.
check_switches() {
  local var
  for var in "$@"; do
    case "${!var}" in
      0 | 1) ;;
      *) die "$var must be 0 or 1 (got '${!var}')" ;;
    esac
  done
}

check_switches DRY_RUN SMOKE

note() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '# %s\n' "$*"
  else
    printf '[%s] %s\n' "${0##*/}" "$*" >&2
  fi
}

# One word of shell: as it is when it has no special characters, else in single quotes
# (of a --flag=value word only the value, which reads better and means the same).
shell_quote() {
  case "$1" in
    '') printf "''" ;;
    --*=*)
      case "${1%%=*}" in
        *[!A-Za-z0-9_.-]*) single_quote "$1" ;;
        *) printf '%s=' "${1%%=*}"; shell_quote_value "${1#*=}" ;;
      esac
      ;;
    *) shell_quote_value "$1" ;;
  esac
}

shell_quote_value() {
  case "$1" in
    '') printf "''" ;;
    *[!A-Za-z0-9_./:=,+@%-]*) single_quote "$1" ;;
    *) printf '%s' "$1" ;;
  esac
}

single_quote() {
  printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

# One line of shell that reproduces the command "$@" word for word.
quote_cmd() {
  local line="" word
  for word in "$@"; do
    line="$line${line:+ }$(shell_quote "$word")"
  done
  printf '%s\n' "$line"
}

# Runs "$@" (an argv, never a string that is parsed again), or prints it under --dry-run.
run() {
  if [ "$DRY_RUN" = 1 ]; then
    quote_cmd "$@"
  else
    printf '+ %s\n' "$(quote_cmd "$@")" >&2
    "$@"
  fi
}

# `run` for a long job on this machine, passing SIGTERM and SIGINT on to it: bash defers its
# traps while a foreground child runs, and without one it dies and leaves the child running,
# never told (`kill` of the launcher, `docker stop` of a container whose PID 1 it is, systemd).
# The child runs in its own process group (set -m), so it keeps SIGINT, which background jobs
# otherwise ignore; a Ctrl-C reaches it once, through the trap. A hang-up (the ssh connection to
# the machine drops) reaches it as SIGTERM: in a process group of its own it got none, and went on
# untold beside the next launch's training on the same GPUs and workdir. The status is the
# child's (or, if it exits between a signal and the check, 128 + that signal, what the trainer
# returns).
run_forwarding_signals() {
  if [ "$DRY_RUN" = 1 ]; then
    quote_cmd "$@"
    return 0
  fi
  printf '+ %s\n' "$(quote_cmd "$@")" >&2
  local child status
  set -m
  "$@" &
  child=$!
  set +m
  trap 'kill -TERM "$child" 2>/dev/null || true' TERM
  trap 'kill -INT "$child" 2>/dev/null || true' INT
  trap 'kill -TERM "$child" 2>/dev/null || true' HUP
  while :; do
    status=0
    wait "$child" || status=$?
    # A trapped signal ends `wait` early (status > 128) while the child saves and exits.
    if [ "$status" -le 128 ] || ! kill -0 "$child" 2>/dev/null; then
      break
    fi
  done
  trap - TERM INT HUP
  return "$status"
}

# Fails early, outside a dry run, when a tool that the real run needs is missing.
need() {
  [ "$DRY_RUN" = 1 ] && return 0
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not on PATH"
  done
}

# Name of the variable that holds member NAME's pre-trained weights file.
weights_var() {
  case "$1" in
    vit) printf 'VIT_WEIGHTS' ;;
    manet) printf 'MANET_WEIGHTS' ;;
    resnet50) printf 'RESNET50_WEIGHTS' ;;
    *) die "unknown member '$1'" ;;
  esac
}

# Member NAME's pre-trained weights file (empty when its variable is unset).
member_weights() {
  local var
  var=$(weights_var "$1")
  printf '%s' "${!var:-}"
}

# The *_WEIGHTS variables whose weights are read by unpickling (needs_torch), space separated;
# empty under SMOKE=1, which reads no weights.
torch_weights_vars() {
  [ "$SMOKE" = 1 ] && return 0
  local name vars=""
  for name in $MEMBERS; do
    if needs_torch "$(member_weights "$name")"; then
      vars="$vars${vars:+ }$(weights_var "$name")"
    fi
  done
  printf '%s' "$vars"
}

# Whether weights PATH are read by unpickling (PyTorch): a .pth / .tar / .pt / .bin / .ckpt file
# (cer_jax.pretrained.readers.TORCH_SUFFIXES), or a local folder the trainer reads one of them
# from (a Hugging Face snapshot of an older model holds pytorch_model.bin and no
# model.safetensors, which the trainer would prefer).
needs_torch() {
  local file
  case "$1" in
    *.pth | *.tar | *.pt | *.bin | *.ckpt) return 0 ;;
  esac
  [ -d "$1" ] && [ ! -e "$1/model.safetensors" ] || return 1
  for file in "$1"/*.pth "$1"/*.tar "$1"/*.pt "$1"/*.bin "$1"/*.ckpt; do
    [ -f "$file" ] && return 0
  done
  return 1
}

# Stops before the first training when a member's weights are a PyTorch file and the Python
# that trains has no PyTorch: the run would otherwise fail at that member, after the members
# before it had trained.
check_torch_for_weights() {
  local vars
  vars=$(torch_weights_vars)
  [ -n "$vars" ] || return 0
  launch_python -c "import importlib.util, sys; importlib.util.find_spec(\"torch\") or sys.exit(\"error: $vars: PyTorch weights, and the Python that trains has no PyTorch; $TORCH_HINT\")"
}

# Config of member NAME: configs/NAME.py, or its :smoke variant with SMOKE=1.
member_config() {
  if [ "$SMOKE" = 1 ]; then
    printf 'configs/%s.py:smoke' "$1"
  else
    printf 'configs/%s.py' "$1"
  fi
}

# TRAIN_ARGV: the trainer's arguments after `python`, for CONFIG WORKDIR OVERRIDES...
# --config.dataset.data_dir=DATA_DIR and --config.dataset.name=rafdb/TFDS_CONFIG come first
# (when set and the config is not a :smoke one, which draws its own synthetic data), so an
# override can still replace them.
train_argv() {
  local config=$1 workdir=$2
  shift 2
  check_workdir "$workdir"
  TRAIN_ARGV=(-m cer_jax.train --config="$config" --workdir="$workdir")
  case "$config" in
    *:smoke) ;;
    *)
      if [ -n "${DATA_DIR:-}" ]; then TRAIN_ARGV+=(--config.dataset.data_dir="$DATA_DIR"); fi
      if [ -n "${TFDS_CONFIG:-}" ]; then TRAIN_ARGV+=(--config.dataset.name="rafdb/$TFDS_CONFIG"); fi
      ;;
  esac
  TRAIN_ARGV+=("$@")
}

# Trains CONFIG into WORKDIR with OVERRIDES...
run_train() {
  train_argv "$@"
  launch_python "${TRAIN_ARGV[@]}"
}

# Fuses RUNS/vit,RUNS/manet,RUNS/resnet50 into RUNS/fusion, with fusion OVERRIDES...
run_fuse() {
  local runs=$1 workdirs="" name
  shift
  for name in $MEMBERS; do
    workdirs="$workdirs${workdirs:+,}$runs/$name"
  done
  launch_python -m cer_jax.fuse --workdirs="$workdirs" --out="$runs/fusion" "$@"
}

# The whole method: the three members into RUNS/<name> (each gets its weights, then the
# OVERRIDES...), then the fusion into RUNS/fusion.
run_ensemble() {
  local runs=$1 name file
  shift
  check_torch_for_weights
  for name in $MEMBERS; do
    file=$(member_weights "$name")
    if [ "$SMOKE" = 1 ] || [ -z "$file" ]; then
      if [ "$SMOKE" != 1 ]; then note "$name: $(weights_var "$name") is not set: trains from scratch"; fi
      run_train "$(member_config "$name")" "$runs/$name" "$@"
    else
      run_train "$(member_config "$name")" "$runs/$name" \
        --config.init.checkpoint="$(weights_for "$name" "$file")" "$@"
    fi
  done
  run_fuse "$runs"
}

# Leading --dry-run / -n / --help; FLAG_COUNT says how many arguments to shift.
# A --dry-run or -n later on is refused, and a --help there prints the help: after the command
# each was passed on or ignored, and the command ran for real (`delete --help` deleted the TPU).
parse_flags() {
  FLAG_COUNT=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry-run | -n) DRY_RUN=1 ;;
      -h | --help) usage; exit 0 ;;
      *) break ;;
    esac
    shift
    FLAG_COUNT=$((FLAG_COUNT + 1))
  done
  # After the command it would be passed on as an override, and the real run would start.
  local arg
  for arg in "$@"; do
    case "$arg" in
      --dry-run | --dry_run | -n) die "--dry-run goes before the command: launch/${0##*/} --dry-run ${1:-COMMAND} ..." ;;
      -h | --help) usage; exit 0 ;;
    esac
  done
}

# Fails unless ARG... is COUNT leading arguments, none a flag, then overrides: each word a
# --flag=value, or a --flag and the value after it. A stray word (`tpu.sh all gs://b/runs`, where
# RUNS is a variable) reached the trainings, which stopped on "Unexpected arguments" only once
# they ran: with tpu.sh `all`, after the TPU was created and installed.
check_args() {
  local usage=$1 count=$2 prev=-- arg
  shift 2
  [ $# -ge "$count" ] || die "usage: launch/${0##*/} $usage"
  for arg in "$@"; do
    if [ "$count" -gt 0 ]; then
      case "$arg" in
        -*) die "usage: launch/${0##*/} $usage (the overrides go last; got '$arg' before them)" ;;
      esac
      count=$((count - 1))
      continue
    fi
    case "$arg" in
      -*) check_not_set_by_launcher "$usage" "$arg" ;;
      *)
        case "$prev" in
          --*=* | [!-]* | --) die "usage: launch/${0##*/} $usage ('$arg' is not an override: those are --config.KEY=VALUE; the other settings are environment variables: launch/${0##*/} --help)" ;;
        esac
        ;;
    esac
    prev=$arg
  done
}

# Fails when override ARG of the command in USAGE is a flag the launcher gives the trainer
# itself: absl keeps a flag's last value, so `ensemble RUNS --config=configs/vit.py:follow_up`
# trained that ViT into RUNS/vit, RUNS/manet and RUNS/resnet50 (hours, then a fusion of three
# ViTs), and a --workdir override sent every member into one workdir.
check_not_set_by_launcher() {
  local usage=$1 arg=$2 name command=${1%% *} script=launch/${0##*/}
  name=${arg%%=*}
  name=${name#-}
  name=${name#-}
  case "$command:$name" in
    train:config) die "usage: $script $usage ('$arg' would replace CONFIG, as a flag's last value wins: give it as CONFIG)" ;;
    train:workdir) die "usage: $script $usage ('$arg' would replace WORKDIR, as a flag's last value wins: give it as WORKDIR)" ;;
    fuse:out | fuse:workdirs) die "usage: $script $usage ('$arg' would replace the --$name the launcher gives cer_jax.fuse, RUNS/fusion or the three members of RUNS; for another fusion, run python -m cer_jax.fuse yourself)" ;;
    ensemble:config | ensemble:workdir | all:config | all:workdir)
      die "usage: $script $usage ('$arg' would replace the $name of every member, as a flag's last value wins; to train the members otherwise, run $script train CONFIG WORKDIR for each, into RUNS/vit, RUNS/manet and RUNS/resnet50, then $script fuse)" ;;
  esac
}

# Fails when COMMAND, which takes no arguments, got some: they used to be ignored.
no_arguments() {
  [ $# -le 1 ] || die "$1 takes no arguments (got '$2'); its settings are environment variables: launch/${0##*/} --help"
}

# The script's header comment (after the #! line, up to the first line of code).
usage() {
  awk 'NR == 1 { next } /^#SBATCH/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}
