#!/usr/bin/env bash
# The accelerator check (under 8 minutes on one H100): a venv with the pinned jax for the
# device, then celeba128's train step at batch 32 and 128 in float32 and bfloat16
# (python -m sdn_jax.device_check), JSON with steps/s, images/s and MFU.
#
#   bash launch/device_check.sh [--dry-run] [OUT_DIR]       (default OUT_DIR: $OUT or .)
#
# PLATFORM=cuda12 (default) or tpu picks jax's extra. Without network access, point
# WHEELHOUSE at a folder of wheels (pip download -r requirements.txt 'jax[cuda12]==...'
# on a machine that has it). An existing venv at $VENV is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
out_dir="${1:-${OUT:-.}}"
platform="${PLATFORM:-cuda12}"
venv="${VENV:-/tmp/sdn-device-venv}"
jax_version="$(sed -n 's/^jax==//p' requirements.txt)"
pip_options=(-q)
if [[ -n "${WHEELHOUSE:-}" ]]; then pip_options+=(--no-index --find-links "$WHEELHOUSE"); fi

commands=(
  "test -x $venv/bin/python || python3 -m venv $venv"
  "$venv/bin/pip install ${pip_options[*]} -r requirements.txt 'jax[$platform]==$jax_version'"
  "$venv/bin/python -c 'import jax; print(jax.devices())'"
  "timeout 420 $venv/bin/python -m sdn_jax.device_check --out $out_dir/device_check.json --seconds 15"
)
for command in "${commands[@]}"; do
  echo "+ $command" >&2
  if ((!dry_run)); then bash -c "$command"; fi
done
