#!/usr/bin/env bash
# Runs N cooperating JAX processes on this machine (the multi-host code paths on one box):
#   launch/local_multiprocess.sh [--dry-run] NUM_PROCESSES [sdn_jax.main flags...]
#   launch/local_multiprocess.sh 2 --config configs/tiny.py --workdir runs/mp
# Each process gets DEVICES_PER_PROCESS devices (on a CPU, XLA fakes that many; default 1)
# and its share of every batch; process 0 coordinates on 127.0.0.1:$PORT (default: a free
# port; loopback only). If one process fails, the others are stopped (they would wait for
# it forever); SIGTERM/SIGINT to this script go to every process, which then agree on a
# step, save a checkpoint there and stop. --dry-run prints the commands instead.
set -euo pipefail
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
usage="usage: $0 [--dry-run] NUM_PROCESSES [sdn_jax.main flags...]"
num_processes="${1:?$usage}"
if ! [[ "$num_processes" =~ ^[1-9][0-9]*$ ]]; then echo "$usage" >&2; exit 2; fi
shift
python="${PYTHON:-python}"
devices="${DEVICES_PER_PROCESS:-1}"
port="${PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
# The caller's XLA flags stay (e.g. faster CPU compiles); the device count is ours.
xla_flags="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}"
platforms="${JAX_PLATFORMS-cpu}"  # set it empty to let JAX pick (GPUs)

commands=()
for ((i = 0; i < num_processes; i++)); do
  printf -v command '%q ' env "XLA_FLAGS=${xla_flags# }" "JAX_PLATFORMS=${platforms}" \
    "$python" -m sdn_jax.main "$@" --coordinator_address="127.0.0.1:${port}" \
    --num_processes="${num_processes}" --process_id="${i}"
  commands+=("${command% }")
done
if ((dry_run)); then
  for command in "${commands[@]}"; do echo "$command &"; done
  echo "wait  # all ${num_processes}; if one fails, the others are killed"
  exit 0
fi

pids=()
for command in "${commands[@]}"; do
  eval "exec $command" &  # exec: the pid is the process itself, which signals must reach
  pids+=($!)
done
forward() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
trap forward TERM INT
status=0
for ((left = ${#pids[@]}; left > 0; left--)); do
  finished=0 ended=""
  wait -n -p ended || finished=$?  # the next of our processes to end
  if [[ -z "${ended:-}" ]]; then left=$((left + 1)); continue; fi  # a signal, forwarded
  if ((finished != 0 && status == 0)); then
    status=$finished
    # 130: stopped at an agreed step (the others stop there too); anything else: a failure.
    if ((finished != 130)); then kill -KILL "${pids[@]}" 2>/dev/null || true; fi
  fi
done
exit "$status"
