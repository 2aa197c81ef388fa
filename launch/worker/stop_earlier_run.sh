#!/usr/bin/env bash
# Runs on a TPU worker (launch/tpu.sh puts it before every Python it starts there, and before
# `install` replaces the checkout): stops a cer_jax tool of ~/cer_jax_venv, of this user, that an
# earlier launch left running. A dropped `gcloud ... tpu-vm ssh` (or a Ctrl-C to it) does not
# stop the remote process, which keeps the TPU open, so the next launch would fail with "TPU
# initialization failed: ... Device or resource busy". SIGTERM first, as a preemption: a
# training saves a checkpoint at its next log step and exits, and the new launch resumes from
# it; SIGKILL after STOP_WAIT seconds [300].
set -u

wait_s=${STOP_WAIT:-300}
# Anchored at the start of a command line: the shell that runs this script holds the same words
# further on in its own (`bash -c 'cd ~/cer_jax && ... ~/cer_jax_venv/bin/python -m ...'`).
pattern="^$HOME/cer_jax_venv/bin/python -m cer_jax[.]"
running() { pgrep "$@" -u "$(id -u)" -f "$pattern"; }

running >/dev/null || exit 0
printf '[%s] stopping a cer_jax run that an earlier launch left on this worker (SIGTERM: a training saves a checkpoint first):\n' \
  "$(hostname)" >&2
running -a >&2
pkill -TERM -u "$(id -u)" -f "$pattern" || true # it may have ended meanwhile
for ((i = 0; i < wait_s; i++)); do
  running >/dev/null || exit 0
  sleep 1
done
printf '[%s] still running after %s s: SIGKILL\n' "$(hostname)" "$wait_s" >&2
pkill -KILL -u "$(id -u)" -f "$pattern" || true
for ((i = 0; i < 30; i++)); do
  running >/dev/null || exit 0
  sleep 1
done
printf '[%s] error: still running after SIGKILL:\n' "$(hostname)" >&2
running -a >&2
exit 1
