#!/usr/bin/env bash
# Train cer_jax on one machine with NVIDIA GPUs (all visible GPUs form the data mesh).
#
# Usage: launch/gpu.sh CONFIG WORKDIR [--config.* overrides...]
#   CONFIG   e.g. configs/manet.py (or configs/manet.py:smoke)
#   WORKDIR  output directory (checkpoints, TensorBoard events, config.json, export/)
# Environment:
#   INSTALL [1]  install the checkout and jax[cuda12] into the active Python first (0 to skip)
#   CUDA_VISIBLE_DEVICES  which GPUs to use
# TensorFlow (tf.data only) is kept off the GPUs by the input pipeline. Data and weights are
# read from local paths only: see --config.dataset.* and --config.init.checkpoint.
set -euo pipefail

CONFIG=${1:?usage: launch/gpu.sh CONFIG WORKDIR [overrides...]}
WORKDIR=${2:?usage: launch/gpu.sh CONFIG WORKDIR [overrides...]}
shift 2
REPO=$(cd "$(dirname "$0")/.." && pwd)

if [ "${INSTALL:-1}" = 1 ]; then
  python -m pip install -q -e "$REPO" 'jax[cuda12]>=0.10.2,<0.11'
fi
cd "$REPO"
# Let XLA take what it needs rather than 75% of GPU memory up front (tf.data shares the host).
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
exec python -m cer_jax.train --config="$CONFIG" --workdir="$WORKDIR" "$@"
