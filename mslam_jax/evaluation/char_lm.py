"""Character n-gram language models over vocabulary ids, for shallow fusion in CTC beam search.

A model is an interpolated Kneser-Ney n-gram (Chen & Goodman 1998: one absolute discount per order,
continuation counts below the top order) over the ids of the corpus' character vocabulary, so the
decoder scores the same symbols the CTC head emits. Sentences start with `order - 1` copies of the
EOS id as context and end with EOS. `LanguageModels` keeps one model per language and a pooled one
for languages without text of their own.

Why not KenLM/pyctcdecode: they score words at word boundaries; a character model scores every
emitted symbol, which is what fixes spelling in deep orthographies (English, French), and a few
thousand sentences a language train it in a second.
"""
import collections
import dataclasses
from typing import Iterable, Mapping, Sequence

import numpy as np

from mslam_jax.data.special_ids import EOS_ID  # the sentence boundary on both sides


class CharNgramLM:
  """log p(next id | previous order-1 ids) for every id at once (`log_probs`)."""

  def __init__(self, order: int, vocab_size: int, counts: Sequence[Mapping[tuple, Mapping[int, float]]],
               discounts: Sequence[float]):
    if order < 1:
      raise ValueError(f"an n-gram order must be at least 1, got {order}")
    self.order, self.vocab_size = order, vocab_size
    self._counts, self._discounts = counts, discounts  # per context length k = 0 .. order-1
    self._cache: dict[tuple, np.ndarray] = {}

  @classmethod
  def fit(cls, sentences: Iterable[Sequence[int]], order: int, vocab_size: int) -> "CharNgramLM":
    """Counts every n-gram of the id sequences (EOS-padded), then continuation counts below the top."""
    top: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
    for ids in sentences:
      padded = [EOS_ID] * (order - 1) + [int(i) for i in ids] + [EOS_ID]
      for end in range(order - 1, len(padded)):
        top[tuple(padded[end - order + 1:end])][padded[end]] += 1
    counts: list[dict] = [None] * order
    counts[order - 1] = {h: dict(c) for h, c in top.items()}
    for k in range(order - 2, -1, -1):  # continuation counts: distinct left neighbours of (h, c)
      lower: dict[tuple, collections.Counter] = collections.defaultdict(collections.Counter)
      for h, following in counts[k + 1].items():
        for token in following:
          lower[h[1:]][token] += 1
      counts[k] = {h: dict(c) for h, c in lower.items()}
    discounts = [_discount(c) for c in counts]
    return cls(order, vocab_size, counts, discounts)

  def log_probs(self, context: Sequence[int]) -> np.ndarray:
    """[vocab_size] log-probabilities of the next id after `context` (only its last order-1 ids count)."""
    key = tuple(context[-(self.order - 1):]) if self.order > 1 else ()
    if len(key) < self.order - 1:
      key = (EOS_ID,) * (self.order - 1 - len(key)) + key
    cached = self._cache.get(key)
    if cached is None:
      cached = self._cache[key] = np.log(self._probs(key))
    return cached

  def _probs(self, key: tuple) -> np.ndarray:
    probs = np.full(self.vocab_size, 1.0 / self.vocab_size)
    for k in range(self.order):  # from the empty context up to the full one
      following = self._counts[k].get(key[len(key) - k:] if k else ())
      if not following:
        break  # an unseen context: the shorter one's distribution stands
      total = sum(following.values())
      discount = self._discounts[k]
      kept = np.zeros(self.vocab_size)
      for token, count in following.items():
        if token < self.vocab_size:
          kept[token] = max(count - discount, 0.0)
      probs = kept / total + discount * len(following) / total * probs
    return probs / probs.sum()

  def sentence_log_prob(self, ids: Sequence[int]) -> float:
    """log p(ids, EOS): for perplexity checks."""
    context, total = [], 0.0
    for token in list(ids) + [EOS_ID]:
      total += float(self.log_probs(context)[token])
      context.append(int(token))
    return total


def _discount(level: Mapping[tuple, Mapping[int, float]]) -> float:
  """D = n1 / (n1 + 2 n2) over the counts of one order (0.5 when it has no singletons or doubletons)."""
  histogram = collections.Counter(c for following in level.values() for c in following.values() if c <= 2)
  n1, n2 = histogram[1], histogram[2]
  return n1 / (n1 + 2 * n2) if n1 and n2 else 0.5


@dataclasses.dataclass
class LanguageModels:
  """One character model per language, a pooled one for the rest, and the fusion weights.

  `weight` scales the LM's log-probability and `length_bonus` is added per emitted symbol (it offsets
  the LM's pull towards short hypotheses); asr.tune_lm_fusion picks both on held-aside utterances.
  """
  per_language: dict[str, CharNgramLM]
  sentences: dict[str, list[Sequence[int]]]  # the pooled model is fit from them when first asked for
  order: int
  vocab_size: int
  weight: float = 1.0
  length_bonus: float = 2.5
  _pooled: CharNgramLM | None = None

  def for_language(self, lang: str | None) -> CharNgramLM:
    return self.per_language.get(lang) or self.pooled

  @property
  def pooled(self) -> CharNgramLM:
    if self._pooled is None:
      self._pooled = CharNgramLM.fit((ids for rows in self.sentences.values() for ids in rows), self.order,
                                     self.vocab_size)
    return self._pooled

  @classmethod
  def fit(cls, sentences: Iterable[tuple[str, Sequence[int]]], order: int, vocab_size: int) -> "LanguageModels":
    """sentences: (language, ids) pairs."""
    by_lang: dict[str, list] = collections.defaultdict(list)
    for lang, ids in sentences:
      by_lang[lang].append(ids)
    if not by_lang:
      raise ValueError("no sentences to train a character language model on")
    per_language = {lang: CharNgramLM.fit(rows, order, vocab_size) for lang, rows in by_lang.items()}
    return cls(per_language, dict(by_lang), order, vocab_size)
