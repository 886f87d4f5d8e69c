"""`mslam finetune`: a task head fine-tuned from a pre-training checkpoint, on trainer.Trainer.

  mslam finetune --task ctc --init_from=/tmp/run [--step=STEP] --gin_file=runs/finetune_ctc.gin \
      --gin.MODEL_DIR="'/tmp/run_ctc'" [--corpus_dir=DIR] [--freeze all|top_k|frozen] [--steps N]

MODEL_DIR is the fine-tuning run's directory (checkpoints, metrics.jsonl, the test figures); a job
restarted on it resumes from its latest checkpoint. Tasks: ctc (ASR, CER/WER), classify (spoken
language ID), translate (speech translation; its run config binds the model and data).

An XTREME-S benchmark task over prepared corpora (`mslam data prepare`) instead of the built-in
corpus; the task picks the head and the metric:

  mslam finetune --xtreme_s fleurs_asr --corpora fleurs=/data/prepared/fleurs --init_from=/tmp/run \
      --gin.MODEL_DIR="'/tmp/run_fleurs_asr'"
"""
import argparse

from mslam_jax import config
from mslam_jax.commands import common

GIN_FILES = {"ctc": "runs/finetune_ctc.gin", "classify": "runs/finetune_classify.gin",
             "translate": "runs/finetune_translate.gin"}
XTREME_S_GIN_FILE = "runs/finetune_xtreme_s.gin"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  config.add_gin_arguments(parser)
  parser.add_argument("--task", choices=sorted(GIN_FILES), default=None, help="default: ctc")
  parser.add_argument("--xtreme_s", default=None,
                      help="an XTREME-S task on prepared corpora instead (fleurs_asr, fleurs_langid, mls_asr, "
                           "voxpopuli_asr, babel_asr, covost2_ast, minds14_intent); it picks the head")
  parser.add_argument("--corpora", default=None, help="the prepared corpora of --xtreme_s: NAME=DIR[,NAME=DIR...]")
  common.add_flag(parser, "--init_from", old=("--model_dir",), default=None, help="the pre-training run")
  common.add_flag(parser, "--step", old=("--checkpoint",), type=int, default=None, help="its step (default: latest)")
  parser.add_argument("--out", default=None, help="the fine-tuning run's directory (same as --gin.MODEL_DIR)")
  parser.add_argument("--corpus_dir", default=None, help="default: the pre-training run's CORPUS_DIR")
  parser.add_argument("--freeze", choices=("frozen", "top_k", "all"), default=None)
  parser.add_argument("--top_k", type=int, default=None)
  parser.add_argument("--steps", type=int, default=None)


def run(args: argparse.Namespace) -> int:
  common.setup_logging()
  from mslam_jax.evaluation import finetune_job  # pylint: disable=g-import-not-at-top
  if not args.init_from:
    raise ValueError("pass --init_from RUN_DIR (the pre-training run to start from)")
  # The pre-training run's own MODEL_DIR must never become the fine-tuning run's by default.
  if not args.out and not any(b.partition("=")[0].strip() == "MODEL_DIR" for b in args.gin_bindings):
    raise ValueError("pass --gin.MODEL_DIR=... (the fine-tuning run's directory)")
  if args.xtreme_s:
    if args.task:
      raise ValueError("--task and --xtreme_s exclude each other: the XTREME-S task picks its head")
    bindings = [f"INIT_FROM = '{args.init_from}'", f"XTREME_S = {args.xtreme_s!r}",
                f"XTREME_S_CORPORA = {parse_corpora(args.corpora)!r}"]
    gin_files = args.gin_file or [XTREME_S_GIN_FILE]
  elif args.corpora:
    raise ValueError("--corpora is for --xtreme_s TASK (the benchmark task to fine-tune on them)")
  else:
    task = args.task or "ctc"
    bindings = [f"INIT_FROM = '{args.init_from}'", f"finetune_run.task = '{task}'"]
    gin_files = args.gin_file or [GIN_FILES[task]]
  if args.out:
    bindings.append(f"MODEL_DIR = '{args.out}'")
  bindings += list(args.gin_bindings)
  if args.corpus_dir:
    bindings.append(f"CORPUS_DIR = '{args.corpus_dir}'")
  for name in ("freeze", "top_k", "steps"):
    value = getattr(args, name)
    if value is not None:
      bindings.append(f"FinetuneConfig.{name} = {value!r}")
  if args.step is not None:
    bindings.append(f"finetune_run.step = {args.step}")
  config.parse_run_config(args.init_from, gin_files, bindings, args.gin_search_path)
  config.check_required_macros()
  metrics = finetune_job.finetune_run()
  common.print_json({k: v for k, v in metrics.items() if "/" not in k})
  return 0


def parse_corpora(text: str | None) -> dict[str, str]:
  """"fleurs=/data/fleurs,covost2=/data/covost2" -> {"fleurs": "/data/fleurs", ...}."""
  corpora = {}
  for part in (text or "").split(","):
    name, sep, directory = part.partition("=")
    if not part.strip():
      continue
    if not sep or not name.strip() or not directory.strip():
      raise ValueError(f"--corpora {text!r}: give NAME=DIR pairs separated by commas, e.g. fleurs=/data/fleurs")
    corpora[name.strip()] = directory.strip()
  if not corpora:
    raise ValueError("--xtreme_s needs its prepared corpus: pass --corpora NAME=DIR (e.g. fleurs=/data/fleurs)")
  return corpora
