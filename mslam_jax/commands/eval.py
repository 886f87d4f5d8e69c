"""`mslam eval`: evaluation sweep over a run's checkpoints (mslam_jax/evaluation/sweep.py).

  mslam eval --model_dir=/tmp/run [--step latest|all|STEP] [--ablation_model_dir DIR] [--out DIR]

Each checkpoint's figures go to MODEL_DIR/eval/step_<N>/ (or OUT/step_<N>/); a checkpoint already
evaluated is skipped unless --force. Exit code 2 when an evaluator failed on some checkpoint (named
on stderr); that checkpoint is evaluated again by the next sweep.
"""
import sys
import argparse
import json

from mslam_jax import config
from mslam_jax.commands import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
  config.add_gin_arguments(parser)
  parser.add_argument("--model_dir", default=None, help="the run to evaluate (same as --gin.MODEL_DIR)")
  parser.add_argument("--corpus_dir", default=None, help="the corpus to evaluate on (default: the run's CORPUS_DIR)")
  common.add_flag(parser, "--step", old=("--checkpoint",), default="latest",
                  help="latest (default), all, or a step number")
  common.add_flag(parser, "--out", old=("--output_dir",), default=None, help="default: MODEL_DIR/eval")
  parser.add_argument("--ablation_model_dir", default=None,
                      help="a speech-only pre-trained run: adds zero_shot_*_speech_only_ablation figures")
  parser.add_argument("--force", action="store_true", help="re-evaluate checkpoints already evaluated")


def _macro_from_bindings(bindings, name: str) -> str | None:
  for binding in bindings:
    if binding.partition("=")[0].strip() == name:
      return binding.partition("=")[2].strip().strip("'\"")
  return None


def run(args: argparse.Namespace) -> int:
  common.setup_logging()
  from mslam_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import sweep  # pylint: disable=g-import-not-at-top
  bindings = list(args.gin_bindings)
  if args.model_dir:
    bindings.append(f"MODEL_DIR = '{args.model_dir}'")
  if args.corpus_dir:
    bindings.append(f"CORPUS_DIR = '{args.corpus_dir}'")
  model_dir = args.model_dir or _macro_from_bindings(bindings, "MODEL_DIR")
  if not model_dir:
    raise ValueError("pass --model_dir (or --gin.MODEL_DIR=...)")
  if args.corpus_dir:  # another build's vocabulary would make every score noise
    from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
    for step in checkpoints.select_steps(model_dir, args.step):
      checkpoints.check_corpus(checkpoints.step_dir(model_dir, step), args.corpus_dir, model_dir)
  results = sweep.sweep(model_dir, args.step, ablation_model_dir=args.ablation_model_dir,
                        gin_files=args.gin_file or ["runs/eval.gin"], bindings=bindings,
                        search_paths=args.gin_search_path, output_dir=args.out, force=args.force)
  config.log_operative_config()
  for step, metrics in sorted(results.items()):
    print(json.dumps({"step": step, **report.headline(metrics)}))
  failed = sweep.failed_evaluators(results)
  for step, names in sorted(failed.items()):
    print(f"mslam eval: step {step}: evaluator(s) {', '.join(names)} failed (see the log above); the next "
          "sweep evaluates this checkpoint again", file=sys.stderr)
  return 2 if failed else 0
