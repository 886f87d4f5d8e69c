"""`mslam finetune`: CTC fine-tuning of a pre-trained checkpoint (gin_configs/runs/finetune_ctc.gin).

  mslam finetune --model_dir=/tmp/run --out=/tmp/run/ctc [--step=STEP] [--corpus_dir=DIR]
"""
import argparse

from mslam_jax import config
from mslam_jax.commands import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
  config.add_gin_arguments(parser)
  parser.add_argument("--model_dir", required=True, help="the pre-training run")
  parser.add_argument("--out", required=True, help="output directory (fine-tuned model, metrics, plots)")
  common.add_flag(parser, "--step", old=("--checkpoint",), type=int, default=None, help="step (default: latest)")
  parser.add_argument("--corpus_dir", default=None, help="default: the run's CORPUS_DIR")
  parser.add_argument("--freeze", choices=("frozen", "top_k", "all"), default=None)
  parser.add_argument("--top_k", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None)


def run(args: argparse.Namespace) -> int:
  common.setup_logging()
  from mslam_jax.evaluation import finetune_job  # pylint: disable=g-import-not-at-top
  bindings = [f"MODEL_DIR = '{args.model_dir}'", f"OUTPUT_DIR = '{args.out}'"] + list(args.gin_bindings)
  if args.corpus_dir:
    bindings.append(f"CORPUS_DIR = '{args.corpus_dir}'")
  for name in ("freeze", "top_k", "steps"):
    value = getattr(args, name)
    if value is not None:
      bindings.append(f"FinetuneConfig.{name} = {value!r}")
  if args.step is not None:
    bindings.append(f"finetune_run.step = {args.step}")
  config.parse_run_config(args.model_dir, args.gin_file or ["runs/finetune_ctc.gin"], bindings,
                          args.gin_search_path)
  metrics = finetune_job.finetune_run()
  config.log_operative_config(args.out)
  common.print_json({k: v for k, v in metrics.items() if "/" not in k})
  return 0
