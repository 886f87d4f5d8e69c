"""Cross-modal retrieval metrics: speech->text and text->speech over one pool of all languages.

Row i of the speech and text embedding matrices are the same utterance (a paired test item).
Scores are cosine similarities; the rank of the true partner counts every other candidate scoring
at least as high (ties count against the query, so a collapsed encoder scores R@1 = 0, not 1).
"""
from typing import Sequence

import numpy as np


def normalize(embeddings: np.ndarray, center: bool = False) -> np.ndarray:
  """L2-normalized rows; with `center`, the modality's mean is removed first.

  Centering matters for mSLAM's pooled embeddings: each modality sits in its own cone (a shared
  offset) that dominates raw cosine similarity between speech and text.
  """
  x = np.asarray(embeddings, np.float64)
  if center:
    x = x - x.mean(axis=0, keepdims=True)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def ranks(similarity: np.ndarray) -> np.ndarray:
  """0-based rank of the diagonal entry in each row (ties counted against it)."""
  similarity = np.asarray(similarity)
  true = np.diagonal(similarity)[:, None]
  return (similarity >= true).sum(axis=1) - 1


def retrieval_metrics(query: np.ndarray, candidates: np.ndarray, ks: Sequence[int] = (1, 5),
                      center: bool = True) -> dict[str, float]:
  """R@k and MRR of retrieving candidates[i] for query[i]."""
  if query.shape[0] != candidates.shape[0]:
    raise ValueError(f"need as many queries as candidates: {query.shape[0]} vs {candidates.shape[0]}")
  sim = normalize(query, center) @ normalize(candidates, center).T
  r = ranks(sim)
  out = {f"r{k}": float(np.mean(r < k)) for k in ks}
  out["mrr"] = float(np.mean(1.0 / (r + 1)))
  return out


def speech_text_retrieval(speech: np.ndarray, text: np.ndarray, langs: Sequence[str] | None = None,
                          center: bool = True) -> dict[str, float]:
  """Both directions with the metric names of the evaluation report.

  With `langs`, adds R@1 per language of the query (the pool still holds every language).
  """
  metrics = {}
  for direction, (q, c) in {"speech_to_text": (speech, text), "text_to_speech": (text, speech)}.items():
    m = retrieval_metrics(q, c, center=center)
    metrics.update({f"retrieval_{name}_{direction}": value for name, value in m.items()})
    if langs is not None:
      sim = normalize(q, center) @ normalize(c, center).T
      r = ranks(sim)
      langs_arr = np.asarray(langs)
      for lang in sorted(set(langs)):
        metrics[f"retrieval_r1_{direction}/{lang}"] = float(np.mean(r[langs_arr == lang] < 1))
  metrics["retrieval_pool_size"] = float(speech.shape[0])
  metrics["retrieval_chance_r1"] = 1.0 / max(1, speech.shape[0])
  return metrics
