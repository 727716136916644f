#!/usr/bin/env bash
# Trains sdn-jax on a Cloud TPU VM slice (every host runs `python -m sdn_jax.main`; JAX finds
# the slice's other hosts by itself: sdn_jax/distributed.py). launch/README.md walks through it.
#
#   launch/tpu_vm.sh [--dry-run] --bucket BUCKET [options] [STEP...] [-- sdn_jax.main flags]
#
# Steps, in this order by default (name some to run only those):
#   create   create the slice, or reuse it if it exists
#   setup    copy this checkout (git archive of HEAD) to every host; a venv from
#            requirements.txt plus jax[tpu] at the pinned jax version; mount the bucket
#            with gcsfuse at $MOUNT on every host (data and the run live there: all hosts
#            must see the same checkpoint folder)
#   data     worker 0 only, once: prepare CelebA at 128 px from the release in
#            gs://BUCKET/celeba into $MOUNT/tensorflow_datasets (skipped if prepared)
#   train    start the run on all hosts in the background (nohup; a rerun resumes)
#   logs     stream worker 0's log (Ctrl-C stops the streaming, not the run)
#   delete   delete the slice (only when named; the bucket is kept)
#
# Options: --name (sdn-celeba128), --zone (us-west4-a), --type (v5litepod-16), --version
# (v2-alpha-tpuv5-lite), --config (configs/celeba128.py), --run (celeba128: the workdir
# $MOUNT/runs/RUN), --bucket (required). --dry-run prints every command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0 name=sdn-celeba128 zone=us-west4-a type=v5litepod-16 version=v2-alpha-tpuv5-lite
config=configs/celeba128.py run=celeba128 bucket="" steps=() extra=()
MOUNT=/mnt/sdn
while (($#)); do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --name | --zone | --type | --version | --config | --run | --bucket)
      [[ $# -ge 2 ]] || { echo "error: $1 needs a value" >&2; exit 2; }
      declare "${1#--}=$2"; shift ;;
    create | setup | data | train | logs | delete) steps+=("$1") ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown argument $1 (see the top of $0)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$bucket" ]] || { echo "error: --bucket BUCKET is required (data and runs live there)" >&2; exit 2; }
((${#steps[@]})) || steps=(create setup data train logs)
jax_version="$(sed -n 's/^jax==//p' requirements.txt)"
venv="~/sdn-venv" code="~/sdn-jax"
workdir="$MOUNT/runs/$run" data_dir="$MOUNT/tensorflow_datasets"

run() {  # a command, or with --dry-run its shell-quoted text
  if ((dry_run)); then printf '%q ' "$@" | sed 's/ $//'; echo; else "$@"; fi
}
on() {  # on WORKERS COMMAND: a shell command on the slice's hosts (all, or 0)
  if ((dry_run)); then
    echo "gcloud compute tpus tpu-vm ssh $name --zone $zone --worker=$1 --command '${2//\'/\'\\\'\'}'"
  else
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker="$1" --command "$2"
  fi
}

for step in "${steps[@]}"; do
  echo "# --- $step"
  case "$step" in
    create)
      if ((dry_run)); then
        echo "# (reused if 'gcloud compute tpus tpu-vm describe $name --zone $zone' finds it)"
        run gcloud compute tpus tpu-vm create "$name" --zone "$zone" \
          --accelerator-type "$type" --version "$version"
      elif gcloud compute tpus tpu-vm describe "$name" --zone "$zone" >/dev/null 2>&1; then
        echo "Reusing the TPU VM $name in $zone"
      else
        run gcloud compute tpus tpu-vm create "$name" --zone "$zone" \
          --accelerator-type "$type" --version "$version"
      fi ;;
    setup)
      run git archive --format=tar.gz -o /tmp/sdn-jax.tar.gz HEAD
      run gcloud compute tpus tpu-vm scp /tmp/sdn-jax.tar.gz "$name:~/" --zone "$zone" --worker=all
      on all "set -e; mkdir -p $code && tar xzf ~/sdn-jax.tar.gz -C $code && \
python3 -m venv $venv && $venv/bin/pip install -q -r $code/requirements.txt \
'jax[tpu]==$jax_version' && \
(command -v gcsfuse >/dev/null || (export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s) && \
echo \"deb https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" | \
sudo tee /etc/apt/sources.list.d/gcsfuse.list && \
curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add - && \
sudo apt-get update -q && sudo apt-get install -y -q gcsfuse)) && \
sudo mkdir -p $MOUNT && sudo chown \$USER $MOUNT && \
(mountpoint -q $MOUNT || gcsfuse --implicit-dirs $bucket $MOUNT)" ;;
    data)
      on 0 "set -e; cd $code; test -d $data_dir/celeba_identity/128px || ( \
gcloud storage cp -r gs://$bucket/celeba /tmp/celeba && \
$venv/bin/python -m sdn_jax.data.prepare --dataset celeba --manual_dir /tmp/celeba \
--data_dir $data_dir --image_size 128 )" ;;
    train)
      flags="$(printf ' %q' --config "$config" --workdir "$workdir" \
        --config.data.data_dir="$data_dir" "${extra[@]}")"
      on all "cd $code && mkdir -p $MOUNT/logs && nohup $venv/bin/python -m sdn_jax.main$flags \
> $MOUNT/logs/$run.\$(hostname).log 2>&1 < /dev/null &" ;;
    logs)
      on 0 "tail -F $MOUNT/logs/$run.\$(hostname).log" ;;
    delete)
      run gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet ;;
  esac
done
