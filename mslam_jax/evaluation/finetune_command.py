"""`mslam finetune`: CTC fine-tuning of a pre-trained checkpoint (gin_configs/runs/finetune_ctc.gin)."""
import argparse
import logging
import sys

from mslam_jax import config
from mslam_jax import user_commands


def add_arguments(parser: argparse.ArgumentParser) -> None:
  config.add_gin_arguments(parser)
  parser.add_argument("--model_dir", required=True, help="the pre-training run")
  parser.add_argument("--out", required=True, help="output directory (fine-tuned model, metrics, plots)")
  parser.add_argument("--checkpoint", type=int, default=None, help="step (default: latest)")
  parser.add_argument("--corpus_dir", default=None, help="default: the run's CORPUS_DIR")
  parser.add_argument("--freeze", choices=("frozen", "top_k", "all"), default=None)
  parser.add_argument("--top_k", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None)


def run(args: argparse.Namespace) -> int:
  user_commands.setup_logging()
  from mslam_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  bindings = [f"MODEL_DIR = '{args.model_dir}'", f"OUTPUT_DIR = '{args.out}'"] + list(args.gin_bindings)
  if args.corpus_dir:
    bindings.append(f"CORPUS_DIR = '{args.corpus_dir}'")
  for name in ("freeze", "top_k", "steps"):
    value = getattr(args, name)
    if value is not None:
      bindings.append(f"FinetuneConfig.{name} = {value!r}")
  if args.checkpoint is not None:
    bindings.append(f"finetune_run.step = {args.checkpoint}")
  try:
    eval_lib.parse_run_config(args.model_dir, args.gin_file or ["runs/finetune_ctc.gin"], bindings,
                              args.gin_search_path)
    metrics = user_commands.finetune_run()
  except (ValueError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"mslam finetune: {e}", file=sys.stderr)
    return 2
  config.log_operative_config(args.out)
  user_commands.print_json({k: v for k, v in metrics.items() if "/" not in k})
  return 0
