#!/usr/bin/env bash
# Train cer_jax on a Cloud TPU VM (every host runs the same command; JAX finds the others).
#
# Usage: launch/tpu_vm.sh CONFIG WORKDIR [--config.* overrides...]
#   CONFIG   e.g. configs/vit.py (or configs/vit.py:smoke)
#   WORKDIR  a gs:// bucket path or a directory every host can write (checkpoints, events)
# Environment (defaults in brackets):
#   TPU_NAME [cer-jax]  ZONE [us-central2-b]  ACCELERATOR [v4-8]  VERSION [tpu-ubuntu2204-base]
#   PROJECT  [gcloud's default]  CREATE [1]: create the TPU VM first (0 to reuse one)
#   REPO     [the current checkout, copied with gcloud scp]
# Data and weights are never downloaded: copy RAF-DB / the TFDS build and the pre-trained files
# to the hosts (or a bucket) yourself and point --config.dataset.data_dir / manual_dir /
# --config.init.checkpoint at them.
set -euo pipefail

CONFIG=${1:?usage: launch/tpu_vm.sh CONFIG WORKDIR [overrides...]}
WORKDIR=${2:?usage: launch/tpu_vm.sh CONFIG WORKDIR [overrides...]}
shift 2
TPU_NAME=${TPU_NAME:-cer-jax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR=${ACCELERATOR:-v4-8}
VERSION=${VERSION:-tpu-ubuntu2204-base}
CREATE=${CREATE:-1}
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}

tpu() { gcloud compute tpus tpu-vm "$@" --zone="$ZONE" $PROJECT_FLAG; }

if [ "$CREATE" = 1 ]; then
  tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$VERSION"
fi

# Copy the checkout to every host and install it with the TPU build of JAX.
tar -C "$REPO" --exclude=.git -czf /tmp/cer_jax.tgz .
tpu scp /tmp/cer_jax.tgz "$TPU_NAME":~/cer_jax.tgz --worker=all
tpu ssh "$TPU_NAME" --worker=all --command="
  set -e; mkdir -p ~/cer_jax && tar -C ~/cer_jax -xzf ~/cer_jax.tgz && cd ~/cer_jax &&
  python3 -m pip install -q -U pip && python3 -m pip install -q -e . 'jax[tpu]>=0.10.2,<0.11'"

# Run on all hosts at once; quote the overrides for the remote shell.
OVERRIDES=$(printf ' %q' "$@")
tpu ssh "$TPU_NAME" --worker=all --command="
  cd ~/cer_jax && python3 -m cer_jax.train --config=$CONFIG --workdir=$WORKDIR $OVERRIDES"
