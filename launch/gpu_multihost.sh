#!/usr/bin/env bash
# Pre-train on several GPU hosts: run this script once per host (by hand, pdsh, or a scheduler).
# Under SLURM (srun) or Open MPI, JAX detects the cluster: pass --distributed_auto as an extra
# flag and leave COORDINATOR empty. Otherwise give process 0's address and each host's rank:
#
#   COORDINATOR=10.0.0.1:1234 NUM_PROCESSES=4 PROCESS_ID=$RANK \
#     launch/gpu_multihost.sh MODEL_DIR CORPUS_DIR TRAIN_STEPS SIZE [extra flags...]
#
# Each process drives its local GPUs and feeds its shard of the global batch; MODEL_DIR and
# CORPUS_DIR must be on a filesystem every host sees.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gin_quote.sh"
if [[ $# -lt 4 ]]; then sed -n '2,10p' "$0"; exit 2; fi
MODEL_DIR=$1; CORPUS_DIR=$2; TRAIN_STEPS=$3; SIZE=$4; shift 4
DIST=()
if [[ -n "${COORDINATOR:-}" ]]; then
  DIST=(--coordinator_address="${COORDINATOR}" --num_processes="${NUM_PROCESSES:?}"
        --process_id="${PROCESS_ID:?}")
fi
exec mslam train "${DIST[@]}" --gin_file="models/${SIZE}.gin" --gin_file=runs/pretrain.gin \
  --gin.MODEL_DIR="$(gin_str "${MODEL_DIR}")" --gin.CORPUS_DIR="$(gin_str "${CORPUS_DIR}")" \
  --gin.TRAIN_STEPS="${TRAIN_STEPS}" "$@"
