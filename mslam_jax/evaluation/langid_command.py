"""`mslam langid`: spoken language ID of audio files by the linear probe of an evaluated checkpoint.

The probe is the one `mslam eval` trained (MODEL_DIR/eval/step_<N>/langid_probe_speech.npz); with
--corpus_dir and no saved probe, one is trained on the spot from the corpus' speech train split.
"""
import argparse
import glob
import logging
import os
import re
import sys

from mslam_jax import user_commands


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--checkpoint", required=True, help="a pre-training run directory (MODEL_DIR)")
  parser.add_argument("--step", type=int, default=None, help="default: latest checkpoint")
  parser.add_argument("--corpus_dir", default=None, help="train a probe here if none was saved by `mslam eval`")
  parser.add_argument("--top", type=int, default=3)
  parser.add_argument("files", nargs="+", help="audio files")


def _saved_probe(model_dir: str, step: int) -> str | None:
  path = os.path.join(model_dir, "eval", f"step_{step}", "langid_probe_speech.npz")
  return path if os.path.exists(path) else None


def run(args: argparse.Namespace) -> int:
  user_commands.setup_logging()
  from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import langid  # pylint: disable=g-import-not-at-top
  try:
    model, params, step = user_commands.load_run(args.checkpoint, args.step)
    encoder = eval_data.Encoder(model, params)
    probe_path = _saved_probe(args.checkpoint, step)
    if probe_path:
      probe = langid.LinearProbe.load(probe_path)
    else:
      corpus_dir = args.corpus_dir or user_commands.corpus_dir_from_gin()
      if not corpus_dir:
        raise ValueError(f"no saved probe for step {step}: run `mslam eval` first or pass --corpus_dir")
      logging.info("No saved probe for step %d: training one on %s", step, corpus_dir)
      evaluator = langid.LangIDEvaluator(corpus_dir=corpus_dir, modalities=("speech",))
      x, y = evaluator.embed(encoder, "speech", "train", evaluator.max_train_per_lang)
      probe = langid.LinearProbe().fit(x, y)
    audios = [user_commands.read_audio(p) for p in args.files]
  except (ValueError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"mslam langid: {e}", file=sys.stderr)
    return 2
  probs = probe.predict_proba(encoder.speech(audios))
  results = []
  for path, p in zip(args.files, probs):
    order = p.argsort()[::-1][:args.top]
    results.append({"file": path, "language": str(probe.classes_[order[0]]),
                    "top": [{"language": str(probe.classes_[k]), "probability": round(float(p[k]), 4)} for k in order]})
  user_commands.print_json({"step": step, "results": results})
  return 0
