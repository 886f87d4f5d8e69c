"""`mslam retrieve`: rank texts for each audio file (and audio files for each text) by the encoder.

  mslam retrieve --model_dir=/tmp/run [--step=STEP] --audio A.wav B.wav --texts texts.txt [--rerank_top_k 50]

In the cross-modal embedding space, then (for an mSLAM-CTC run) each query's top candidates are
reordered by the pre-trained CTC head's likelihood of the text given the clip (evaluation/retrieval.py).
"""
import argparse

import numpy as np

from mslam_jax import config
from mslam_jax.commands import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common.add_flag(parser, "--model_dir", old=("--checkpoint",), required=True,
                  help="a pre-training run directory (MODEL_DIR)")
  parser.add_argument("--step", type=int, default=None, help="default: latest checkpoint")
  parser.add_argument("--audio", nargs="+", required=True, help="audio files")
  parser.add_argument("--texts", required=True, help="a UTF-8 file with one candidate text per line")
  parser.add_argument("--corpus_dir", default=None, help="vocabulary source (default: the run's CORPUS_DIR)")
  parser.add_argument("--top", type=int, default=5)
  parser.add_argument("--no_center", action="store_true",
                      help="do not remove each modality's mean before cosine similarity")
  parser.add_argument("--rerank_top_k", type=int, default=50,
                      help="reorder each query's top K candidates by the pre-trained CTC head (runs with a CTC "
                           "objective; 0: embedding similarity alone)")


def run(args: argparse.Namespace) -> int:
  common.setup_logging()
  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import audio as audio_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import retrieval  # pylint: disable=g-import-not-at-top
  if args.rerank_top_k < 0:
    raise ValueError(f"--rerank_top_k must be >= 0 (0: no reranking), got {args.rerank_top_k}")
  with open(args.texts, encoding="utf-8") as f:
    texts = [line.strip() for line in f if line.strip()]
  if not texts:
    raise ValueError(f"no texts in {args.texts}")
  audios = [audio_lib.read_user_audio(p) for p in args.audio]  # bad files refused before any model loads
  model, params, step = config.load_run(args.model_dir, args.step)
  corpus_dir = args.corpus_dir or config.macro("CORPUS_DIR")
  if not corpus_dir:
    raise ValueError("no vocabulary: pass --corpus_dir")
  checkpoints.check_corpus(checkpoints.step_dir(args.model_dir, step), corpus_dir, args.model_dir)
  vocab = eval_data.load_vocabulary(corpus_dir)
  encoder = eval_data.Encoder(model, params, cross_modal=True, fit_small_calls=True)
  tokens = eval_data.tokenize(vocab, texts)
  text = encoder.text(tokens)
  speech, cost = retrieval.speech_and_pair_cost(encoder, audios, tokens, args.rerank_top_k)  # of (clip, text) pairs
  reranked = cost is not None
  center = not args.no_center and len(texts) > 1 and len(audios) > 1
  sim = retrieval.similarity(speech, text, center)
  if reranked:
    audio_order = retrieval.reranked_order(sim, cost, args.rerank_top_k)
    text_order = retrieval.reranked_order(sim.T, lambda pairs: cost(pairs[:, ::-1]), args.rerank_top_k)
  else:
    audio_order, text_order = np.argsort(-sim, axis=1, kind="stable"), np.argsort(-sim.T, axis=1, kind="stable")
  top = min(args.top, len(texts))
  result = {"step": step, "reranked_by_ctc": reranked, "audio_to_text": [], "text_to_audio": []}
  for i, path in enumerate(args.audio):
    result["audio_to_text"].append({"audio": path, "best": [{"text": texts[j], "score": round(float(sim[i, j]), 4)}
                                                            for j in audio_order[i, :top]]})
  for j, t in enumerate(texts):
    i = int(text_order[j, 0])
    result["text_to_audio"].append({"text": t, "audio": args.audio[i], "score": round(float(sim[i, j]), 4)})
  common.print_json(result)
  return 0
