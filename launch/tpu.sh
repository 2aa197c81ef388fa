#!/usr/bin/env bash
# Cloud TPU, from nothing to a fused report: a TPU VM or a multi-host slice, data and weights on
# a bucket, the three trainings and the fusion run on every worker, TensorBoard on the bucket.
#
# Usage: launch/tpu.sh [--dry-run] COMMAND [ARGS...]
#   --dry-run (or DRY_RUN=1) prints the exact commands, one per line, instead of running them.
#
# Commands, in the order a first run needs them (`all` chains create .. ensemble):
#   create               create the TPU VM or slice and wait until it is ready
#                        (QUEUED=1: through a queued resource, which waits for capacity); one
#                        that exists already (READY / ACTIVE) is kept, so `all` runs again,
#                        unless it is of another type than ACCELERATOR (then it stops)
#   install              copy this checkout (its tracked and untracked, not ignored, files) to
#                        every worker, make a Python $PYTHON_VERSION venv there (uv) and install
#                        the checkout with the TPU build of JAX (and PyTorch's CPU build when a
#                        *_WEIGHTS file is a PyTorch one: .pth, .pth.tar, .pt, .bin, .ckpt, or a
#                        folder read through one); then `check`
#   check                every worker prints its process index, process count and devices
#   upload               build the TFDS dataset here when MANUAL_DIR is set, then copy
#                        LOCAL_DATA_DIR/rafdb to DATA_DIR and each local *_WEIGHTS file or folder
#                        to WEIGHTS_DIR/<member>/ (with the config.json and
#                        preprocessor_config.json beside a file, if any)
#   train CONFIG WORKDIR [OVERRIDES...]
#                        one training, the same command on every worker at once; WORKDIR must
#                        be gs://... (every host reads and writes the same run), CONFIG a file
#                        of this checkout relative to it (the workers run their copy)
#   ensemble [OVERRIDES...]
#                        train vit, manet and resnet50 into RUNS/<name> (the OVERRIDES go to all
#                        three, after the data and weights flags), then `fuse`
#   fuse [OVERRIDES...]  fuse RUNS/vit,RUNS/manet,RUNS/resnet50 into RUNS/fusion on every worker,
#                        then print RUNS/fusion/report.md
#   tensorboard          tensorboard --logdir RUNS, on this machine (gs:// is read with your
#                        application-default credentials: gcloud auth application-default login)
#   all [OVERRIDES...]   create, install, upload, ensemble; CREATE=0 / INSTALL=0 / UPLOAD=0 skip
#                        (what upload copies is checked, and the dataset built, first)
#   delete               delete the TPU VM (QUEUED=1: the queued resource and its TPU)
#
# Environment (defaults in brackets):
#   BUCKET       gs://bucket[/prefix] holding data, weights and runs; needed by every command
#                that touches them (create it once: gcloud storage buckets create gs://bucket
#                --location=REGION, in the TPU's region)
#   TPU_NAME [cer-jax]  ZONE [us-central2-b]  PROJECT [gcloud's default project]
#   ACCELERATOR [v4-8]   any type: v4-32, v5litepod-16, v6e-8, ... (multi-host is the same)
#   VERSION      the TPU VM image [from ACCELERATOR: tpu-ubuntu2204-base for v2/v3/v4,
#                v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e]
#   QUEUED [0]   1: create through `gcloud compute tpus queued-resources` (QR_NAME [TPU_NAME-qr])
#   SPOT [0]     1: spot capacity; after a preemption, `delete`, then `all` again: every
#                training resumes from its last checkpoint on the bucket
#   RUNS [BUCKET/runs; BUCKET/smoke_runs with SMOKE=1]  DATA_DIR [BUCKET/tensorflow_datasets]
#   WEIGHTS_DIR [BUCKET/weights]  (all three gs:// paths: every worker reads them)
#   JAX_CACHE [BUCKET/jax_cache]  JAX's persistent compilation cache: a resumed run (after a
#                preemption) loads its compiled steps instead of compiling them again
#   MANUAL_DIR   the unpacked RAF-DB tree (EmoLabel/, Image/) to build the TFDS dataset from
#   LOCAL_DATA_DIR [~/tensorflow_datasets]
#   TFDS_CONFIG [compound]  the rafdb builder config that upload builds and the trainings use
#                (compound | compound_abaw7 | basic: --config.dataset.name=rafdb/TFDS_CONFIG)
#   VIT_WEIGHTS MANET_WEIGHTS RESNET50_WEIGHTS
#                pre-trained files or folders: local paths (upload copies each to
#                WEIGHTS_DIR/<member>/ and the trainings read it there) or gs:// paths (used
#                as they are); unset: the member trains from scratch
#   SMOKE [0]    1: the configs' :smoke variants on synthetic data drawn on each worker (no data
#                or weights needed; a cheap end-to-end check of a new slice)
#   JAX_SPEC ['jax[tpu]>=0.10.2,<0.11']  PYTHON_VERSION [3.11]  PYTHON (here) [python3]
#   TPU_CREATE_ARGS  more flags for `create` (tpu-vm or queued-resources create), e.g. a VPC
#                without external IPs: "--internal-ips --network=NET --subnetwork=SUBNET"
#   TPU_SSH_ARGS more flags for every `tpu-vm ssh` and `tpu-vm scp`, e.g. "--tunnel-through-iap"
#                (through IAP) or "--internal-ip" (from a machine inside the VPC)
#
# On the workers the checkout is ~/cer_jax and the venv ~/cer_jax_venv. Every Python launched
# there (and `install`) first stops a cer_jax tool that an earlier launch left running (a dropped
# connection does not stop it, and it keeps the TPU busy): launch/worker/stop_earlier_run.sh.
# Every `gcloud compute tpus tpu-vm ssh` uses --worker=all: JAX's multi-controller runtime needs
# one process per host, all running the same program; the trainer finds the other hosts itself
# (Cloud TPU metadata). A slice of several workers needs your key in ssh-agent (gcloud's
# --worker help): ssh-add ~/.ssh/google_compute_engine.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

TPU_NAME=${TPU_NAME:-cer-jax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-8}
QUEUED=${QUEUED:-0}
QR_NAME=${QR_NAME:-$TPU_NAME-qr}
SPOT=${SPOT:-0}
CREATE=${CREATE:-1}
INSTALL=${INSTALL:-1}
UPLOAD=${UPLOAD:-1}
check_switches QUEUED SPOT CREATE INSTALL UPLOAD
# Drops the trailing slashes of the gs:// path in variable NAME. `gcloud storage` keeps a `//`
# in an object name and the trainer's paths (epath) read it as one `/`: with
# DATA_DIR=gs://b/tfds/, upload wrote tfds//rafdb and the trainings found no dataset (the same
# for WEIGHTS_DIR's files and the report under RUNS).
strip_trailing_slashes() {
  local value=${!1}
  while [ "${value%/}" != "$value" ]; do
    case "${value%/}" in
      gs://?*) value=${value%/} ;;
      *) break ;;
    esac
  done
  printf -v "$1" '%s' "$value"
}

BUCKET=${BUCKET:-}
strip_trailing_slashes BUCKET
JAX_CACHE=${JAX_CACHE:-${BUCKET:+$BUCKET/jax_cache}}
LOCAL_DATA_DIR=${LOCAL_DATA_DIR:-$HOME/tensorflow_datasets}
TFDS_CONFIG=${TFDS_CONFIG:-compound}
JAX_SPEC=${JAX_SPEC:-'jax[tpu]>=0.10.2,<0.11'}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
PYTHON=${PYTHON:-python3}
SCOPES=https://www.googleapis.com/auth/cloud-platform
TORCH_HINT="run launch/tpu.sh install with the *_WEIGHTS variables set: it installs the CPU build of PyTorch on every worker"

# What `create` makes and `delete` removes: the TPU VM, or the queued resource that holds it.
if [ "$QUEUED" = 1 ]; then RESOURCE=(queued-resources); NAME=$QR_NAME; else RESOURCE=(tpu-vm); NAME=$TPU_NAME; fi
GCLOUD_FLAGS=(--zone="$ZONE")
if [ -n "${PROJECT:-}" ]; then
  GCLOUD_FLAGS+=(--project="$PROJECT")
fi
CREATE_EXTRA=()
if [ -n "${TPU_CREATE_ARGS:-}" ]; then read -r -a CREATE_EXTRA <<<"$TPU_CREATE_ARGS"; fi
SSH_EXTRA=()
if [ -n "${TPU_SSH_ARGS:-}" ]; then read -r -a SSH_EXTRA <<<"$TPU_SSH_ARGS"; fi

# The TPU VM image that goes with the accelerator type.
tpu_version() {
  if [ -n "${VERSION:-}" ]; then
    printf '%s' "$VERSION"
    return
  fi
  case "$ACCELERATOR" in
    v2-* | v3-* | v4-*) printf 'tpu-ubuntu2204-base' ;;
    v5litepod-* | v5e-*) printf 'v2-alpha-tpuv5-lite' ;;
    v5p-*) printf 'v2-alpha-tpuv5' ;;
    v6e-*) printf 'v2-alpha-tpuv6e' ;;
    *) die "ACCELERATOR=$ACCELERATOR: not a TPU type with a default image (v2-, v3-, v4-, v5litepod-, v5p- or v6e- and its size, e.g. v4-32: gcloud compute tpus tpu-vm accelerator-types list --zone=$ZONE); for another, set VERSION too (gcloud compute tpus tpu-vm versions list --zone=$ZONE)" ;;
  esac
}

need_bucket() {
  case "$BUCKET" in
    gs://?*) ;;
    *) die "set BUCKET=gs://your-bucket[/prefix] (got '$BUCKET')" ;;
  esac
  # The smoke runs go elsewhere: the real configs could not resume their workdirs.
  if [ "$SMOKE" = 1 ]; then RUNS=${RUNS:-$BUCKET/smoke_runs}; else RUNS=${RUNS:-$BUCKET/runs}; fi
  DATA_DIR=${DATA_DIR:-$BUCKET/tensorflow_datasets}
  WEIGHTS_DIR=${WEIGHTS_DIR:-$BUCKET/weights}
  local var
  for var in RUNS DATA_DIR WEIGHTS_DIR; do
    case "${!var}" in
      gs://?*) ;;
      *) die "$var must be a gs:// path, which every worker reads (got '${!var}'); unset it for the one under BUCKET" ;;
    esac
    strip_trailing_slashes "$var"
  done
}

# Runs one shell command line on every worker of the TPU at once.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all "${GCLOUD_FLAGS[@]}" --quiet \
    ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"} --command="$1"
}

# The same `python ARG...` on every worker, from the checkout, with its venv; first stops a
# cer_jax tool that an earlier launch left running there (launch/worker/stop_earlier_run.sh):
# it would keep the TPU busy, for a `check` too. The `|| exit $?` keeps the worker's shell from
# exec'ing Python: a Python killed by a signal (the OOM killer, an abort, SIGTERM outside the
# training loop) then ends the shell with status 128 + N. When Python itself was the remote
# command, ssh said 255, which gcloud takes for a failed connection: it ran the training again
# on that worker, up to 9 times (alone, on a slice: it waited for hosts that had stopped).
launch_python() {
  local cache=""
  if [ -n "$JAX_CACHE" ]; then cache="JAX_COMPILATION_CACHE_DIR=$(shell_quote "$JAX_CACHE") "; fi
  on_all_workers "cd ~/cer_jax && bash launch/worker/stop_earlier_run.sh && $cache~/cer_jax_venv/bin/python $(quote_cmd "$@") || exit \$?"
}

check_workdir() {
  case "$1" in
    gs://?*) ;;
    *) die "a workdir on a TPU must be a gs:// path that every host shares (got '$1')" ;;
  esac
}

# The workers run CONFIG from their copy of this checkout (`install`): a file outside it, or one
# git ignores (install copies tracked and unignored files only), is not there.
check_config_in_checkout() {
  local file=${1%%:*}
  local fix="give a config file of this checkout, relative to it (configs/vit.py), and run install after adding one"
  case "$file" in
    /* | '~'*) die "CONFIG '$1' is not relative to the checkout, which the workers run from: $fix" ;;
  esac
  [ -f "$REPO/$file" ] || die "CONFIG '$1': $REPO/$file does not exist: $fix"
  if command -v git >/dev/null && git -C "$REPO" check-ignore -q -- "$file"; then
    die "CONFIG '$1' is ignored by git, so install does not copy it to the workers: $fix"
  fi
}

# Member NAME's local weights FILE (or folder) is read from WEIGHTS_DIR/NAME/, where `upload`
# put it: a folder of its own per member, so that two files of the same name (Hugging Face's
# model.safetensors for ViT and ResNet50) and the config.json beside each stay apart. A gs:// one
# is read where it is.
weights_for() {
  local file=${2%/}
  case "$file" in
    gs://*) printf '%s' "$file" ;;
    *) printf '%s/%s/%s' "$WEIGHTS_DIR" "$1" "${file##*/}" ;;
  esac
}

# The state and accelerator type of the TPU VM (QUEUED=1: of the queued resource and the TPU
# it holds), tab separated; empty when there is none.
existing_tpu() {
  local fields=state,acceleratorType
  if [ "$QUEUED" = 1 ]; then fields='state.state,tpu.nodeSpec[0].node.acceleratorType'; fi
  gcloud compute tpus "${RESOURCE[@]}" describe "$NAME" "${GCLOUD_FLAGS[@]}" \
    --format="value($fields)" 2>/dev/null || true
}

# Fails when the TPU that `create` keeps is of another type than ACCELERATOR: after a smoke run
# on a v4-8, `ACCELERATOR=v4-32 launch/tpu.sh all` kept the v4-8 (one note among the output)
# and trained on it.
check_existing_type() {
  local what=$1 type=$2
  if [ -n "$type" ] && [ "$type" != "$ACCELERATOR" ]; then
    die "$what is a $type, not the ACCELERATOR=$ACCELERATOR asked for: set ACCELERATOR=$type to use it, or launch/tpu.sh delete and run again (or set another TPU_NAME) for a $ACCELERATOR"
  fi
}

cmd_create() {
  need gcloud
  local version state="" type=""
  version=$(tpu_version)
  local what="TPU $TPU_NAME"
  if [ "$QUEUED" = 1 ]; then what="queued resource $QR_NAME"; fi
  if [ "$DRY_RUN" = 1 ]; then
    note "created only when $(quote_cmd gcloud compute tpus "${RESOURCE[@]}" describe "$NAME" "${GCLOUD_FLAGS[@]}") finds none (a READY / ACTIVE one of ACCELERATOR=$ACCELERATOR is kept; another type, or another state, stops with its name)"
  else
    IFS=$'\t' read -r state type <<<"$(existing_tpu)" || true
  fi
  case "$state" in
    "") ;;
    READY | ACTIVE)
      check_existing_type "$what" "$type"
      note "$what exists ($state${type:+, $type}): kept"
      return
      ;;
    ACCEPTED | PROVISIONING | WAITING_FOR_RESOURCES | CREATING)
      if [ "$QUEUED" != 1 ]; then die "$what is $state: run again when it is READY"; fi
      check_existing_type "$what" "$type"
      ;;
    # A TPU on its way back (a repair, a restart) or stopped keeps its capacity: deleting it,
    # as the line below said for every other state, could lose a slice that took days to get.
    STARTING | RESTARTING | REPAIRING | REIMAGING | UNHIDING)
      die "$what is $state: run again when it is READY (no need to delete it)" ;;
    STOPPED) die "$what is STOPPED: start it ($(quote_cmd gcloud compute tpus tpu-vm start "$TPU_NAME" "${GCLOUD_FLAGS[@]}")), then run again" ;;
    STOPPING) die "$what is STOPPING: once it is STOPPED, start it ($(quote_cmd gcloud compute tpus tpu-vm start "$TPU_NAME" "${GCLOUD_FLAGS[@]}")), then run again" ;;
    DELETING) die "$what is being deleted: run again when it is gone" ;;
    *) die "$what is $state: launch/tpu.sh delete, then run again" ;;
  esac
  local spot=()
  if [ "$SPOT" = 1 ]; then spot=(--spot); fi
  if [ "$QUEUED" = 1 ]; then
    if [ -z "$state" ]; then
      run gcloud compute tpus queued-resources create "$QR_NAME" "${GCLOUD_FLAGS[@]}" \
        --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR" --runtime-version="$version" \
        --scopes="$SCOPES" ${spot[@]+"${spot[@]}"} ${CREATE_EXTRA[@]+"${CREATE_EXTRA[@]}"}
    fi
    local describe=(gcloud compute tpus queued-resources describe "$QR_NAME" "${GCLOUD_FLAGS[@]}"
      --format='value(state.state)')
    if [ "$DRY_RUN" = 1 ]; then
      note "repeated every 30 s until the state is ACTIVE:"
      quote_cmd "${describe[@]}"
      return
    fi
    while :; do
      state=$("${describe[@]}")
      note "queued resource $QR_NAME: $state"
      case "$state" in
        ACTIVE) break ;;
        FAILED | SUSPENDED) die "queued resource $QR_NAME is $state" ;;
      esac
      sleep 30
    done
  else
    # Returns when the VM (every host of a slice) is READY.
    run gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_FLAGS[@]}" \
      --accelerator-type="$ACCELERATOR" --version="$version" --scopes="$SCOPES" \
      ${spot[@]+"${spot[@]}"} ${CREATE_EXTRA[@]+"${CREATE_EXTRA[@]}"}
  fi
}

cmd_check() {
  need gcloud
  launch_python -c 'import jax; jax.distributed.initialize(); print(f"host {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} local of {jax.device_count()} devices", flush=True)'
}

cmd_install() {
  need gcloud git tar
  local tarball=${TMPDIR:-/tmp}/cer_jax-$TPU_NAME.tgz
  # The checkout as it is now (uncommitted edits included), without .git and ignored files.
  # shellcheck disable=SC2016  # expanded by the inner bash
  run bash -c 'set -o pipefail; cd "$1" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d "" f; do if [ -e "$f" ]; then printf "%s\0" "$f"; fi; done | tar --null -T - -czf "$2"' \
    pack "$REPO" "$tarball"
  run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME:cer_jax.tgz" --worker=all \
    "${GCLOUD_FLAGS[@]}" --quiet ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"}
  # On each worker: unpack, stop a run that an earlier launch left there (it runs from the
  # checkout being replaced), get uv (it brings Python $PYTHON_VERSION when the image has an
  # older one), make the venv once, install the checkout with the TPU build of JAX.
  local script
  # shellcheck disable=SC2016  # expanded on the worker
  script="set -eu; JAX_SPEC=$(shell_quote "$JAX_SPEC"); PYTHON_VERSION=$(shell_quote "$PYTHON_VERSION")"'; rm -rf ~/cer_jax.new; mkdir ~/cer_jax.new; tar -C ~/cer_jax.new -xzf ~/cer_jax.tgz; bash ~/cer_jax.new/launch/worker/stop_earlier_run.sh; rm -rf ~/cer_jax; mv ~/cer_jax.new ~/cer_jax; rm ~/cer_jax.tgz; export PATH="$HOME/.local/bin:$PATH"; command -v uv >/dev/null || python3 -m pip install --user --quiet uv; [ -x ~/cer_jax_venv/bin/python ] || uv venv --python "$PYTHON_VERSION" ~/cer_jax_venv; uv pip install --python ~/cer_jax_venv/bin/python -e ~/cer_jax "$JAX_SPEC"'
  if [ -n "$(torch_weights_vars)" ]; then
    script="$script; uv pip install --python ~/cer_jax_venv/bin/python --index-url $TORCH_CPU_INDEX torch"
  fi
  on_all_workers "$script"
  cmd_check
}

# Fails unless what `upload` copies is here: the TFDS build (or the MANUAL_DIR it is built from)
# and each local *_WEIGHTS file or folder. `all` checks this before `create`: a missing file used
# to stop it after the TPU was created (and billed) and the checkout installed.
check_upload_inputs() {
  [ "$DRY_RUN" = 1 ] && return 0
  if [ -n "${MANUAL_DIR:-}" ]; then
    [ -d "$MANUAL_DIR" ] || die "MANUAL_DIR=$MANUAL_DIR: no such folder (the unpacked RAF-DB tree, with EmoLabel/ and Image/)"
  elif [ ! -d "$LOCAL_DATA_DIR/rafdb/$TFDS_CONFIG" ]; then
    # (A build of another config only, or a TFDS_CONFIG typo: the trainings found no dataset.)
    die "no TFDS build of rafdb/$TFDS_CONFIG in $LOCAL_DATA_DIR/rafdb: set MANUAL_DIR=/path/to/RAF-DB/compound (or LOCAL_DATA_DIR, or TFDS_CONFIG; UPLOAD=0 when the bucket has the data already)"
  fi
  local name file
  for name in $MEMBERS; do
    file=$(member_weights "$name")
    case "$file" in
      "" | gs://*) continue ;;
    esac
    [ -e "$file" ] || die "$(weights_var "$name")=$file: no such file or folder"
  done
}

# Builds the TFDS dataset here from MANUAL_DIR, once. `all` does it before `create`: a wrong tree
# (RAF-DB's root or basic/ for a compound config) used to stop it after the TPU was created
# (and billed) and the checkout installed.
DATASET_BUILT=0
build_dataset() {
  if [ -z "${MANUAL_DIR:-}" ] || [ "$DATASET_BUILT" = 1 ]; then return 0; fi
  run "$PYTHON" -m tfds_rafdb.rafdb --builder_config="$TFDS_CONFIG" --manual_dir="$MANUAL_DIR" \
    --data_dir="$LOCAL_DATA_DIR"
  DATASET_BUILT=1
}

cmd_upload() {
  need_bucket
  need gcloud
  check_upload_inputs
  build_dataset
  run gcloud storage rsync --recursive "$LOCAL_DATA_DIR/rafdb" "$DATA_DIR/rafdb"
  local name file dest side
  for name in $MEMBERS; do
    file=$(member_weights "$name")
    case "$file" in
      "" | gs://*) continue ;;
    esac
    file=${file%/}
    dest=$(weights_for "$name" "$file")
    if [ -d "$file" ]; then # a Hugging Face snapshot folder: the reader picks the file in it
      run gcloud storage rsync --recursive "$file" "$dest"
      continue
    fi
    run gcloud storage cp "$file" "$dest"
    # The Hugging Face files the trainer reads beside the weights (cer_jax.pretrained.implied):
    # config.json says how the network computes (ViT's GELU, LayerNorm eps) and names the
    # head's classes; preprocessor_config.json the input mean/std it was pre-trained on, which
    # the trainer warns about when the config feeds others (left behind, a run on the TPU gave
    # no warning where the same run on a GPU did).
    for side in config.json preprocessor_config.json; do
      if [ -f "$(dirname "$file")/$side" ] && [ "${file##*/}" != "$side" ]; then
        run gcloud storage cp "$(dirname "$file")/$side" "${dest%/*}/$side"
      fi
    done
  done
}

cmd_train() {
  need_bucket
  need gcloud
  check_config_in_checkout "$1"
  run_train "$@"
}

cmd_fuse() {
  need_bucket
  need gcloud
  run_fuse "$RUNS" "$@"
  run gcloud storage cat "$RUNS/fusion/report.md"
}

cmd_ensemble() {
  need_bucket
  need gcloud
  run_ensemble "$RUNS" "$@"
  run gcloud storage cat "$RUNS/fusion/report.md"
}

cmd_tensorboard() {
  need_bucket
  need tensorboard
  run tensorboard --logdir "$RUNS"
}

cmd_delete() {
  need gcloud
  if [ "$QUEUED" = 1 ]; then
    run gcloud compute tpus queued-resources delete "$QR_NAME" "${GCLOUD_FLAGS[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --quiet
  fi
}

cmd_all() {
  need_bucket
  need gcloud
  # A mistyped ACCELERATOR stops here, not after the dataset build below.
  if [ "$CREATE" = 1 ]; then tpu_version >/dev/null; fi
  if [ "$UPLOAD" = 1 ] && [ "$SMOKE" != 1 ]; then
    check_upload_inputs
    build_dataset
  fi
  if [ "$CREATE" = 1 ]; then cmd_create; fi
  if [ "$INSTALL" = 1 ]; then cmd_install; fi
  if [ "$UPLOAD" = 1 ] && [ "$SMOKE" != 1 ]; then cmd_upload; fi
  cmd_ensemble "$@"
  # RUNS too: under SMOKE=1 (or a RUNS of its own) a plain `tensorboard` shows BUCKET/runs.
  note "TensorBoard: BUCKET=$(shell_quote "$BUCKET") RUNS=$(shell_quote "$RUNS") launch/tpu.sh tensorboard (that is: tensorboard --logdir $RUNS)"
  note "when done: launch/tpu.sh delete (a TPU is billed while it exists)"
}

parse_flags "$@"
shift "$FLAG_COUNT"
[ $# -ge 1 ] || { usage >&2; exit 2; }
COMMAND=$1
shift
case "$COMMAND" in
  create | install | check | upload | tensorboard | delete)
    no_arguments "$COMMAND" "$@"
    "cmd_$COMMAND" ;;
  train)
    check_args "train CONFIG WORKDIR [OVERRIDES...]" 2 "$@"
    cmd_train "$@" ;;
  ensemble | fuse | all)
    check_args "$COMMAND [OVERRIDES...]" 0 "$@"
    "cmd_$COMMAND" "$@" ;;
  *) die "unknown command '$COMMAND' (see launch/tpu.sh --help)" ;;
esac
