"""`mslam langid`: spoken language ID of audio files by the linear probe of an evaluated checkpoint.

  mslam langid --model_dir=/tmp/run [--step=STEP] [--eval_dir=DIR] [--corpus_dir=DIR] FILE...

The probe is the one `mslam eval` trained (EVAL_DIR/step_<N>/langid_probe_speech.npz; EVAL_DIR is
`mslam eval --out`, default MODEL_DIR/eval; the demo's is OUT/eval); with --corpus_dir and no saved
probe, one is trained on the spot from the corpus' speech train split.
"""
import argparse
import logging
import os

from mslam_jax import config
from mslam_jax.commands import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common.add_flag(parser, "--model_dir", old=("--checkpoint",), required=True,
                  help="a pre-training run directory (MODEL_DIR)")
  parser.add_argument("--step", type=int, default=None, help="default: latest checkpoint")
  parser.add_argument("--eval_dir", default=None,
                      help="where `mslam eval --out` wrote (default: MODEL_DIR/eval; `mslam demo`'s: OUT/eval)")
  parser.add_argument("--corpus_dir", default=None, help="train a probe here if none was saved by `mslam eval`")
  parser.add_argument("--top", type=int, default=3)
  parser.add_argument("files", nargs="+", help="audio files")


def _saved_probe(model_dir: str, step: int, eval_dir: str | None) -> str | None:
  from etils import epath  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import base  # pylint: disable=g-import-not-at-top
  path = os.path.join(base.step_eval_dir(model_dir, step, eval_dir), "langid_probe_speech.npz")
  return path if epath.Path(path).exists() else None  # local or remote (gs://...)


def run(args: argparse.Namespace) -> int:
  common.setup_logging()
  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import audio as audio_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import langid  # pylint: disable=g-import-not-at-top
  audios = [audio_lib.read_user_audio(p) for p in args.files]  # bad files refused before any model loads
  model, params, step = config.load_run(args.model_dir, args.step)
  encoder = eval_data.Encoder(model, params, fit_small_calls=True)
  probe_path = _saved_probe(args.model_dir, step, args.eval_dir)
  if probe_path:
    probe = langid.LinearProbe.load(probe_path)
  else:
    corpus_dir = args.corpus_dir or config.macro("CORPUS_DIR")
    if not corpus_dir:
      raise ValueError(f"no saved probe for step {step}: run `mslam eval` first, or pass --eval_dir (where it "
                       f"wrote) or --corpus_dir (to train one here)")
    checkpoints.check_corpus(checkpoints.step_dir(args.model_dir, step), corpus_dir, args.model_dir)
    logging.info("No saved probe for step %d: training one on %s", step, corpus_dir)
    evaluator = langid.LangIDEvaluator(corpus_dir=corpus_dir, modalities=("speech",))
    features, units = evaluator.speech_setup(model)
    x, y = evaluator.embed(encoder, "speech", "train", evaluator.max_train_per_lang, units=units)
    probe = langid.LinearProbe(features=features, classifier=evaluator.probes["speech"], units=units).fit(x, y)
  probs = probe.predict_proba(langid.speech_features(encoder, audios, probe.features, probe.units))
  results = []
  for path, p in zip(args.files, probs):
    order = p.argsort()[::-1][:args.top]
    results.append({"file": path, "language": str(probe.classes_[order[0]]),
                    "top": [{"language": str(probe.classes_[k]), "probability": round(float(p[k]), 4)} for k in order]})
  common.print_json({"step": step, "results": results})
  return 0
