#!/usr/bin/env bash
# Pre-train on a Cloud TPU pod slice: the same command runs on every worker; JAX finds the pod
# (--distributed_auto) and each host feeds its shard of the global batch.
#
#   launch/tpu_pod.sh TPU_NAME ZONE MODEL_DIR CORPUS_DIR TRAIN_STEPS SIZE [extra flags...]
#   launch/tpu_pod.sh my-v4-64 us-central2-b gs://bucket/runs/600m gs://bucket/corpus 1300000 \
#     mslam_600m --gin.make_mesh.fsdp=-1 --gin.SPEECH_BATCH=2048 --gin.TEXT_BATCH=8192 \
#     --gin.PAIRED_BATCH=256
#
# MODEL_DIR and CORPUS_DIR must be visible to every host (a GCS bucket). Check memory first:
#   mslam compile --gin_file=models/SIZE.gin --gin_file=runs/pretrain.gin --mesh=fsdp:N
# The workers need the package installed: gcloud ... ssh --worker=all --command="pip install ..."
# Preemption (SIGTERM on any worker) saves a checkpoint at a step all hosts agree on; rerun this
# command and the run resumes from it.
set -euo pipefail
if [[ $# -lt 6 ]]; then sed -n '2,16p' "$0"; exit 2; fi
TPU_NAME=$1; ZONE=$2; MODEL_DIR=$3; CORPUS_DIR=$4; TRAIN_STEPS=$5; SIZE=$6; shift 6
source "$(dirname "${BASH_SOURCE[0]}")/gin_quote.sh"
# The remote shell parses --command once more: every argument is quoted for it (printf %q), so
# paths with spaces, quotes or `;` arrive as one argument each, never as shell code.
REMOTE=(mslam train --distributed_auto --gin_file="models/${SIZE}.gin" --gin_file=runs/pretrain.gin
        --gin.MODEL_DIR="$(gin_str "${MODEL_DIR}")" --gin.CORPUS_DIR="$(gin_str "${CORPUS_DIR}")"
        --gin.TRAIN_STEPS="${TRAIN_STEPS}" "$@")
gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all \
  --command="$(printf '%q ' "${REMOTE[@]}")"
