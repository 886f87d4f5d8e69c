"""`mslam train`: gin-configured pre-training (mslam_jax/train.py).

  mslam train --gin_file=models/tiny.gin --gin_file=runs/pretrain.gin \
      --gin.MODEL_DIR="'/tmp/run'" --gin.TRAIN_STEPS=1000

A run on a MODEL_DIR that holds checkpoints resumes from the latest by itself. SIGTERM
(preemption), SIGINT (Ctrl-C) and SIGHUP save a checkpoint and exit with 0. Multi-host: pass
--coordinator_address/--num_processes/--process_id (or --distributed_auto on TPU pods / SLURM) and
start the same command on every host; each feeds its shard of the batch.

Exit codes: 0 done (or preempted and saved), 2 bad configuration, 3 stopped on non-finite losses.
"""
import argparse
import json
import logging
import sys

from mslam_jax import config
from mslam_jax.commands import common

EXIT_OK, EXIT_NONFINITE = 0, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
  config.add_gin_arguments(parser)
  group = parser.add_argument_group("multi-host (jax.distributed)")
  group.add_argument("--coordinator_address", default=None, help="host:port of process 0")
  group.add_argument("--num_processes", type=int, default=None)
  group.add_argument("--process_id", type=int, default=None)
  group.add_argument("--distributed_auto", action="store_true",
                     help="let JAX detect the cluster (Cloud TPU pods, SLURM, Open MPI)")


def run(args: argparse.Namespace) -> int:
  common.setup_logging()
  from mslam_jax import partitioning  # pylint: disable=g-import-not-at-top
  from mslam_jax import train  # pylint: disable=g-import-not-at-top
  config.parse_gin(args.gin_file, args.gin_bindings, args.gin_search_path)
  config.check_required_macros()
  # jax.distributed must start before any backend is touched (gin parsing does not touch one).
  partitioning.initialize_distributed(
      **{k: v for k, v in dict(coordinator_address=args.coordinator_address,
                               num_processes=args.num_processes, process_id=args.process_id,
                               auto_detect=args.distributed_auto or None).items()
         if v is not None})
  try:
    summary = train.train()
  except train.NonFiniteLossError as e:
    logging.error("%s", e)
    print(f"mslam train: stopped: {e}", file=sys.stderr)
    return EXIT_NONFINITE
  logging.info("Run summary: %s", json.dumps(summary))
  return EXIT_OK
