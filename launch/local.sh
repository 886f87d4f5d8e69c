#!/usr/bin/env bash
# Pre-train on this machine (CPU or one accelerator host), e.g. the tiny model on the built-in corpus:
#
#   launch/local.sh MODEL_DIR CORPUS_DIR [TRAIN_STEPS] [SIZE] [extra mslam train flags...]
#   launch/local.sh /tmp/mslam_run /tmp/corpus 2000 tiny --gin.train.log_every=10
#
# A MODEL_DIR holding checkpoints resumes from the latest. Ctrl-C / SIGTERM saves and exits.
# Fake several CPU devices to try a mesh: XLA_FLAGS=--xla_force_host_platform_device_count=8 \
#   launch/local.sh ... --gin.make_mesh.data=2 --gin.make_mesh.fsdp=2 --gin.make_mesh.model=2
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gin_quote.sh"
if [[ $# -lt 2 ]]; then sed -n '2,9p' "$0"; exit 2; fi
MODEL_DIR=$1; CORPUS_DIR=$2; TRAIN_STEPS=${3:-2000}; SIZE=${4:-tiny}
shift $(( $# < 4 ? $# : 4 ))
exec mslam train --gin_file="models/${SIZE}.gin" --gin_file=runs/pretrain.gin \
  --gin.MODEL_DIR="$(gin_str "${MODEL_DIR}")" --gin.CORPUS_DIR="$(gin_str "${CORPUS_DIR}")" \
  --gin.TRAIN_STEPS="${TRAIN_STEPS}" "$@"
