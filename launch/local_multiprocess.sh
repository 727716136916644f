#!/usr/bin/env bash
# Runs N cooperating JAX processes on this machine (multi-host code paths on one box):
#   launch/local_multiprocess.sh 2 --config configs/tiny.py --workdir runs/mp
# Each process gets its share of the devices (XLA_FLAGS fakes DEVICES_PER_PROCESS CPU
# devices) and of every batch; process 0 coordinates on 127.0.0.1:$PORT.
set -euo pipefail
num_processes="${1:?usage: $0 NUM_PROCESSES [sdn_jax.main flags...]}"
shift
port="${PORT:-12355}"
devices="${DEVICES_PER_PROCESS:-1}"
pids=()
for ((i = 0; i < num_processes; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu \
    python -m sdn_jax.main "$@" \
    --coordinator_address="127.0.0.1:${port}" --num_processes="${num_processes}" \
    --process_id="${i}" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
