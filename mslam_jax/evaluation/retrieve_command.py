"""`mslam retrieve`: rank texts for each audio file (and audio files for each text) by the encoder."""
import argparse
import logging
import sys

import numpy as np

from mslam_jax import user_commands


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--checkpoint", required=True, help="a pre-training run directory (MODEL_DIR)")
  parser.add_argument("--step", type=int, default=None, help="default: latest checkpoint")
  parser.add_argument("--audio", nargs="+", required=True, help="audio files")
  parser.add_argument("--texts", required=True, help="a UTF-8 file with one candidate text per line")
  parser.add_argument("--corpus_dir", default=None, help="vocabulary source (default: the run's CORPUS_DIR)")
  parser.add_argument("--top", type=int, default=5)
  parser.add_argument("--no_center", action="store_true",
                      help="do not remove each modality's mean before cosine similarity")


def run(args: argparse.Namespace) -> int:
  user_commands.setup_logging()
  from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import retrieval  # pylint: disable=g-import-not-at-top
  with open(args.texts, encoding="utf-8") as f:
    texts = [line.strip() for line in f if line.strip()]
  if not texts:
    print(f"mslam retrieve: no texts in {args.texts}", file=sys.stderr)
    return 2
  try:
    model, params, step = user_commands.load_run(args.checkpoint, args.step)
    corpus_dir = args.corpus_dir or user_commands.corpus_dir_from_gin()
    if not corpus_dir:
      raise ValueError("no vocabulary: pass --corpus_dir")
    vocab = eval_data.load_vocabulary(corpus_dir)
    audios = [user_commands.read_audio(p) for p in args.audio]
  except (ValueError, FileNotFoundError) as e:
    logging.error("%s", e)
    print(f"mslam retrieve: {e}", file=sys.stderr)
    return 2
  encoder = eval_data.Encoder(model, params, cross_modal=True)
  speech = encoder.speech(audios)
  text = encoder.text(eval_data.tokenize(vocab, texts))
  center = not args.no_center and len(texts) > 1 and len(audios) > 1
  sim = retrieval.normalize(speech, center) @ retrieval.normalize(text, center).T
  top = min(args.top, len(texts))
  result = {"step": step, "audio_to_text": [], "text_to_audio": []}
  for i, path in enumerate(args.audio):
    order = np.argsort(-sim[i])[:top]
    result["audio_to_text"].append({"audio": path, "best": [{"text": texts[j], "score": round(float(sim[i, j]), 4)}
                                                            for j in order]})
  for j, t in enumerate(texts):
    i = int(np.argmax(sim[:, j]))
    result["text_to_audio"].append({"text": t, "audio": args.audio[i], "score": round(float(sim[i, j]), 4)})
  user_commands.print_json(result)
  return 0
