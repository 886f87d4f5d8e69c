"""Cross-modal retrieval metrics: speech->text and text->speech over one pool of all languages.

Row i of the speech and text embedding matrices are the same utterance (a paired test item).
Scores are cosine similarities; the rank of the true partner counts every other candidate scoring
at least as high (ties count against the query, so a collapsed encoder scores R@1 = 0, not 1).

With clip durations the report adds R@1 among the candidates whose clips last about as long as the
query's (within DURATION_WINDOW_S), with its own chance level: an encoder can rank a pool by duration
alone (long clips with long transcripts), and this figure says how much of R@1 rests on content.
"""
import functools
import os
from typing import Callable, Sequence

import gin
import numpy as np

from mslam_jax import storage
from mslam_jax.data.special_ids import BLANK_ID
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


def reranked_order(similarity: np.ndarray, cost: Callable[[np.ndarray], np.ndarray], top_k: int) -> np.ndarray:
  """Each query's candidates [Q, C], best first, after a second stage: its `top_k` by similarity
  reordered by `cost` (lower first; equal costs keep the similarity order), the rest behind them in
  similarity order.

  `cost`: [P, 2] (query, candidate) index pairs -> [P] costs; only shortlisted pairs are scored.
  """
  order = np.argsort(-similarity, axis=1, kind="stable")
  queries, top_k = similarity.shape[0], min(top_k, similarity.shape[1])
  shortlist = order[:, :top_k]
  costs = np.asarray(cost(np.stack([np.repeat(np.arange(queries), top_k), shortlist.reshape(-1)], axis=1)))
  within = np.argsort(costs.reshape(queries, top_k), axis=1, kind="stable")
  order[:, :top_k] = np.take_along_axis(shortlist, within, axis=1)
  return order


def reranked_ranks(similarity: np.ndarray, cost: Callable[[np.ndarray], np.ndarray], top_k: int) -> np.ndarray:
  """`ranks` of each row's diagonal partner in `reranked_order`; a partner outside the shortlist
  keeps its first-stage rank (ties counted against it), behind the whole shortlist."""
  order = reranked_order(similarity, cost, top_k)
  position = np.argmax(order == np.arange(order.shape[0])[:, None], axis=1)
  top_k = min(top_k, similarity.shape[1])
  return np.where(position < top_k, position, np.maximum(ranks(similarity), top_k))


def _bucket(length, unit: int = 64):
  """`length` (an int or an array of them) rounded up to a multiple of `unit`, at least `unit`."""
  return np.maximum(unit, -(-np.asarray(length) // unit) * unit)


@functools.lru_cache(maxsize=None)
def _pair_cost_program(blank_id: int):
  """The jitted (frames, characters, padded clips and texts, pair indices) -> per-character CTC cost;
  one per process, so that every call of `ctc_costs` reuses its compiled shapes."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  @functools.partial(jax.jit, static_argnums=(0, 1))
  def cost(t, l, clips, clip_pad, labels, label_pad, per_char, clip, text):
    nll = optax.ctc_loss(clips[clip, :t], clip_pad[clip, :t], labels[text, :l], label_pad[text, :l],
                         blank_id=blank_id)
    return nll / per_char[text]

  return cost


def ctc_costs(log_probs: Sequence[np.ndarray], token_lists: Sequence[Sequence[int]], pairs: np.ndarray,
              blank_id: int, batch_size: int = 1024) -> np.ndarray:
  """CTC negative log-likelihood per character of transcript `pairs[p, 1]` given clip `pairs[p, 0]`
  (its CTC head's log-probabilities [T, vocab]): how well the clip spells the text, comparable
  between texts of different lengths.

  Clips and texts are padded once; pairs go in batches of like lengths (frames and characters in
  multiples of 64: a few shapes, a few compiles), gathered inside the compiled program. A length's
  last batch pads to a power of two, not to `batch_size`: with many lengths and few pairs each (a
  small pool) full batches did a hundred times the work."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  clip_len = np.array([len(x) for x in log_probs])
  text_len = np.array([len(t) for t in token_lists])
  frames, chars = int(_bucket(clip_len.max())), int(_bucket(text_len.max()))
  clips = np.zeros((len(log_probs), frames, log_probs[0].shape[-1]), np.float32)
  labels = np.zeros((len(token_lists), chars), np.int32)
  for i, x in enumerate(log_probs):
    clips[i, :len(x)] = x
  for i, tokens in enumerate(token_lists):
    labels[i, :len(tokens)] = tokens
  clip_pad = (np.arange(frames)[None] >= clip_len[:, None]).astype(np.float32)
  label_pad = (np.arange(chars)[None] >= text_len[:, None]).astype(np.float32)
  per_char = np.maximum(text_len, 1).astype(np.float32)
  arrays = [jnp.asarray(a) for a in (clips, clip_pad, labels, label_pad, per_char)]
  cost = _pair_cost_program(blank_id)
  pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
  shape = np.stack([_bucket(clip_len[pairs[:, 0]]), _bucket(text_len[pairs[:, 1]])], axis=1)
  out = np.zeros(len(pairs), np.float64)
  for t, l in sorted({tuple(x) for x in shape}):
    index = np.flatnonzero((shape[:, 0] == t) & (shape[:, 1] == l))
    for start in range(0, len(index), batch_size):
      part = index[start:start + batch_size]
      # A bucket's last batch pads to a power of two, at least 8 (at most two shapes a bucket), with
      # the pair (0, 0).
      chunk = np.zeros((eval_data.batch_rows(len(part), batch_size, smallest=8), 2), np.int32)
      chunk[:len(part)] = pairs[part]
      out[part] = np.asarray(cost(t, l, *arrays, chunk[:, 0], chunk[:, 1]))[:len(part)]
  return out


def ctc_pair_cost(log_probs: Sequence[np.ndarray], token_lists: Sequence[Sequence[int]]
                  ) -> Callable[[np.ndarray], np.ndarray]:
  """[P, 2] (clip, transcript) index pairs -> `ctc_costs`, each pair scored once however often it is
  asked (both directions' shortlists share most of their pairs): the second stage's cost."""
  return _remembered(lambda pairs: ctc_costs(log_probs, token_lists, pairs, BLANK_ID))


def speech_and_pair_cost(encoder: "eval_data.Encoder", audios: Sequence[np.ndarray],
                         token_lists: Sequence[Sequence[int]], rerank_top_k: int):
  """The clips' embeddings [N, D] and the second stage's cost (`ctc_pair_cost`) from the same encoder
  pass, where `rerank_top_k` asks for it and the model pre-trained a CTC head (mSLAM-CTC); else
  (`encoder.speech`, None)."""
  if rerank_top_k and getattr(encoder.model, "has_ctc_head", False):
    speech, log_probs = encoder.speech_with_ctc(audios)
    return speech, ctc_pair_cost(log_probs, token_lists)
  return encoder.speech(audios), None


def _remembered(cost: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
  """`cost` that scores each pair once, however often it is asked."""
  known: dict[tuple[int, int], float] = {}

  def lookup(pairs: np.ndarray) -> np.ndarray:
    keys = [tuple(p) for p in np.asarray(pairs).tolist()]
    new = sorted(set(keys) - known.keys())
    if new:
      known.update(zip(new, np.asarray(cost(np.array(new))).tolist()))
    return np.array([known[k] for k in keys])

  return lookup


def speech_text_retrieval(speech: np.ndarray, text: np.ndarray, langs: Sequence[str] | None = None,
                          center: bool = True, seconds: Sequence[float] | None = None,
                          held_out: Sequence[str] = (),
                          pair_cost: Callable[[np.ndarray], np.ndarray] | None = None,
                          rerank_top_k: int = 50) -> dict[str, float]:
  """Both directions with the metric names of the evaluation report.

  With `langs`, adds R@1 per language of the query (the pool still holds every language), and with
  `held_out` (languages whose pairs pre-training never saw) R@1 of their queries (`*_heldout`) and
  of the others' (`*_seen`): cross-modal transfer to a language and fit to the trained ones are
  apart. With `seconds` (each clip's duration), adds R@1 among candidates within DURATION_WINDOW_S
  of the query's clip (`*_similar_duration`) and that figure's chance level.

  With `pair_cost` ([P, 2] (clip, transcript) index pairs -> [P] costs, e.g. `ctc_pair_cost`), the
  same figures again for two-stage retrieval (`*_ctc_rerank`): the embedding's `rerank_top_k`
  candidates reordered by cost (`reranked_ranks`), as image-text retrieval reranks its shortlist
  with a matching head.
  """
  _check_paired(speech, text)
  metrics = {}
  similar = None
  if seconds is not None:
    seconds = np.asarray(seconds, np.float64)
    similar = np.abs(seconds[:, None] - seconds[None, :]) <= DURATION_WINDOW_S
    metrics["retrieval_chance_r1_similar_duration"] = float(np.mean(1.0 / similar.sum(axis=1)))
  directions = {"speech_to_text": (speech, text, lambda pairs: pairs),
                "text_to_speech": (text, speech, lambda pairs: pairs[:, ::-1])}
  for direction, (q, c, as_clip_text) in directions.items():
    sim = similarity(q, c, center)  # one similarity matrix for every figure below
    stages = {"": ranks(sim)}
    if pair_cost is not None:
      stages["_ctc_rerank"] = reranked_ranks(sim, lambda pairs: pair_cost(as_clip_text(pairs)), rerank_top_k)
    for stage, r in stages.items():
      metrics.update({f"retrieval_{name}_{direction}{stage}": value for name, value in rank_metrics(r).items()})
      if langs is not None:
        langs_arr = np.asarray(langs)
        if not stage:
          for lang in sorted(set(langs)):
            metrics[f"retrieval_r1_{direction}/{lang}"] = float(np.mean(r[langs_arr == lang] < 1))
        unseen = np.isin(langs_arr, list(held_out))
        for suffix, queries in (("_heldout", unseen), ("_seen", ~unseen)):
          if held_out and queries.any():
            metrics[f"retrieval_r1_{direction}{stage}{suffix}"] = float(np.mean(r[queries] < 1))
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
  """Speech<->text retrieval over the paired test split of every language, pooled into one set.

  In the cross-modal embedding space, and (for a model whose pre-training trains a CTC head,
  mSLAM-CTC) in two stages: the embedding's `rerank_top_k` candidates reordered by the pre-trained
  CTC head's likelihood of each transcript given each clip (`ctc_costs`; `*_ctc_rerank` figures;
  0: off).
  """

  def __init__(self, corpus_dir: str | None = None, split: str = "test", langs: Sequence[str] | None = None,
               max_per_lang: int | None = 50, batch_size: int = 16, center: bool = True, rerank_top_k: int = 50):
    if rerank_top_k < 0:
      raise ValueError(f"RetrievalEvaluator.rerank_top_k must be >= 0 (0: no reranking), got {rerank_top_k}")
    self.corpus_dir = corpus_dir
    self.split, self.langs = split, langs
    self.max_per_lang, self.batch_size, self.center = max_per_lang, batch_size, center
    self.rerank_top_k = rerank_top_k

  def evaluate(self, ctx: base.EvalContext) -> dict[str, float]:
    corpus_dir = ctx.corpus(self.corpus_dir, type(self).__name__)
    step, out_dir = ctx.step, ctx.out_dir
    utts = eval_data.read_utterances(corpus_dir, "paired", self.split, self.langs, self.max_per_lang)
    utts = [u for u in utts if len(u.audio) and u.text.strip()]
    if len(utts) < 2:
      raise ValueError(f"retrieval needs at least 2 paired {self.split} utterances in {corpus_dir}")
    vocab = eval_data.load_vocabulary(corpus_dir)
    encoder = eval_data.Encoder(ctx.model, ctx.params, self.batch_size, cross_modal=True, cache=ctx.compiled)
    tokens = eval_data.tokenize(vocab, [u.text for u in utts])
    text = encoder.text(tokens)
    langs = [u.lang for u in utts]
    speech, pair_cost = speech_and_pair_cost(encoder, [u.audio for u in utts], tokens, self.rerank_top_k)
    metrics = speech_text_retrieval(speech, text, langs, center=self.center,
                                    seconds=[len(u.audio) / eval_data.SAMPLE_RATE for u in utts],
                                    held_out=eval_data.held_out_languages(corpus_dir), pair_cost=pair_cost,
                                    rerank_top_k=self.rerank_top_k)
    if out_dir:
      plot_similarity(os.path.join(out_dir, "retrieval_similarity.png"), similarity(speech, text, self.center), langs,
                      f"speech-text cosine similarity, step {step}")
    return metrics
