"""Cross-modal retrieval metrics: speech->text and text->speech over one pool of all languages.

Row i of the speech and text embedding matrices are the same utterance (a paired test item).
Scores are cosine similarities; the rank of the true partner counts every other candidate scoring
at least as high (ties count against the query, so a collapsed encoder scores R@1 = 0, not 1).

With clip durations the report adds R@1 among the candidates whose clips last about as long as the
query's (within DURATION_WINDOW_S), with its own chance level: an encoder can rank a pool by duration
alone (long clips with long transcripts), and this figure says how much of R@1 rests on content.
"""
import os
from typing import Sequence

import gin
import numpy as np

from mslam_jax import storage
from mslam_jax.evaluation import data as eval_data
from mslam_jax.evaluation import base

DURATION_WINDOW_S = 0.3


def normalize(embeddings: np.ndarray, center: bool = False) -> np.ndarray:
  """L2-normalized rows; with `center`, the modality's mean is removed first.

  Centering matters for mSLAM's pooled embeddings: each modality sits in its own cone (a shared
  offset) that dominates raw cosine similarity between speech and text.
  """
  x = np.asarray(embeddings, np.float64)
  if center:
    x = x - x.mean(axis=0, keepdims=True)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def similarity(query: np.ndarray, candidates: np.ndarray, center: bool = False) -> np.ndarray:
  """Cosine similarity [queries, candidates] of the `normalize`d rows."""
  return normalize(query, center) @ normalize(candidates, center).T


def _check_paired(query: np.ndarray, candidates: np.ndarray) -> None:
  if query.shape[0] != candidates.shape[0]:
    raise ValueError(f"need as many queries as candidates: {query.shape[0]} vs {candidates.shape[0]}")


def ranks(similarity: np.ndarray) -> np.ndarray:
  """0-based rank of the diagonal entry in each row (ties counted against it)."""
  similarity = np.asarray(similarity)
  true = np.diagonal(similarity)[:, None]
  return (similarity >= true).sum(axis=1) - 1


def r1_among(similarity: np.ndarray, allowed: np.ndarray) -> float:
  """R@1 of the diagonal with row i's candidates limited to `allowed[i]` (which must hold i)."""
  return float(np.mean(ranks(np.where(allowed, similarity, -np.inf)) < 1))


def retrieval_metrics(query: np.ndarray, candidates: np.ndarray, ks: Sequence[int] = (1, 5),
                      center: bool = True) -> dict[str, float]:
  """R@k and MRR of retrieving candidates[i] for query[i]."""
  _check_paired(query, candidates)
  return rank_metrics(ranks(similarity(query, candidates, center)), ks)


def rank_metrics(r: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
  """R@k and MRR from the true partners' 0-based ranks (`ranks`)."""
  out = {f"r{k}": float(np.mean(r < k)) for k in ks}
  out["mrr"] = float(np.mean(1.0 / (r + 1)))
  return out


def speech_text_retrieval(speech: np.ndarray, text: np.ndarray, langs: Sequence[str] | None = None,
                          center: bool = True, seconds: Sequence[float] | None = None,
                          held_out: Sequence[str] = ()) -> dict[str, float]:
  """Both directions with the metric names of the evaluation report.

  With `langs`, adds R@1 per language of the query (the pool still holds every language), and with
  `held_out` (languages whose pairs pre-training never saw) R@1 of their queries (`*_heldout`) and
  of the others' (`*_seen`): cross-modal transfer to a language and fit to the trained ones are
  apart. With `seconds` (each clip's duration), adds R@1 among candidates within DURATION_WINDOW_S
  of the query's clip (`*_similar_duration`) and that figure's chance level.
  """
  _check_paired(speech, text)
  metrics = {}
  similar = None
  if seconds is not None:
    seconds = np.asarray(seconds, np.float64)
    similar = np.abs(seconds[:, None] - seconds[None, :]) <= DURATION_WINDOW_S
    metrics["retrieval_chance_r1_similar_duration"] = float(np.mean(1.0 / similar.sum(axis=1)))
  for direction, (q, c) in {"speech_to_text": (speech, text), "text_to_speech": (text, speech)}.items():
    sim = similarity(q, c, center)  # one similarity matrix for every figure below
    r = ranks(sim)
    metrics.update({f"retrieval_{name}_{direction}": value for name, value in rank_metrics(r).items()})
    if langs is not None:
      langs_arr = np.asarray(langs)
      for lang in sorted(set(langs)):
        metrics[f"retrieval_r1_{direction}/{lang}"] = float(np.mean(r[langs_arr == lang] < 1))
      unseen = np.isin(langs_arr, list(held_out))
      for suffix, queries in (("_heldout", unseen), ("_seen", ~unseen)):
        if held_out and queries.any():
          metrics[f"retrieval_r1_{direction}{suffix}"] = float(np.mean(r[queries] < 1))
    if similar is not None:  # symmetric: the same window for either direction
      metrics[f"retrieval_r1_{direction}_similar_duration"] = r1_among(sim, similar)
  metrics["retrieval_pool_size"] = float(speech.shape[0])
  metrics["retrieval_chance_r1"] = 1.0 / max(1, speech.shape[0])
  return metrics


def plot_similarity(path: str, similarity: np.ndarray, langs: Sequence[str], title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5.5, 5))
  image = ax.imshow(similarity, cmap="viridis", aspect="auto")
  boundaries = [i for i in range(1, len(langs)) if langs[i] != langs[i - 1]]
  for b in boundaries:
    ax.axhline(b - 0.5, color="white", linewidth=0.5)
    ax.axvline(b - 0.5, color="white", linewidth=0.5)
  ax.set_xlabel("text (grouped by language)")
  ax.set_ylabel("speech (grouped by language)")
  ax.set_title(title)
  fig.colorbar(image, ax=ax, fraction=0.046)
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=100)
  plt.close(fig)


@base.register("retrieval")
@gin.configurable
class RetrievalEvaluator:
  """Speech<->text retrieval over the paired test split of every language, pooled into one set."""

  def __init__(self, corpus_dir: str | None = None, split: str = "test", langs: Sequence[str] | None = None,
               max_per_lang: int | None = 50, batch_size: int = 16, center: bool = True):
    self.corpus_dir = corpus_dir
    self.split, self.langs = split, langs
    self.max_per_lang, self.batch_size, self.center = max_per_lang, batch_size, center

  def evaluate(self, ctx: base.EvalContext) -> dict[str, float]:
    corpus_dir = ctx.corpus(self.corpus_dir, type(self).__name__)
    step, out_dir = ctx.step, ctx.out_dir
    utts = eval_data.read_utterances(corpus_dir, "paired", self.split, self.langs, self.max_per_lang)
    utts = [u for u in utts if len(u.audio) and u.text.strip()]
    if len(utts) < 2:
      raise ValueError(f"retrieval needs at least 2 paired {self.split} utterances in {corpus_dir}")
    vocab = eval_data.load_vocabulary(corpus_dir)
    encoder = eval_data.Encoder(ctx.model, ctx.params, self.batch_size, cross_modal=True, cache=ctx.compiled)
    speech = encoder.speech([u.audio for u in utts])
    text = encoder.text(eval_data.tokenize(vocab, [u.text for u in utts]))
    langs = [u.lang for u in utts]
    metrics = speech_text_retrieval(speech, text, langs, center=self.center,
                                    seconds=[len(u.audio) / eval_data.SAMPLE_RATE for u in utts],
                                    held_out=eval_data.held_out_languages(corpus_dir))
    if out_dir:
      plot_similarity(os.path.join(out_dir, "retrieval_similarity.png"), similarity(speech, text, self.center), langs,
                      f"speech-text cosine similarity, step {step}")
    return metrics
