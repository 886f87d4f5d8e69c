"""CTC decoding (greedy, prefix beam search, beam search fused with a character LM) and error rates
per language.

Decoders take per-utterance log-probabilities [T, V] (numpy, valid frames only) and return token
ids with blanks removed and repeats merged. Error rates come from jiwer; this module only groups
utterances by language and skips those that cannot be scored (empty reference).
"""
import collections
import heapq
import logging
import math
from typing import Iterable, Mapping, Sequence

import jiwer
import numpy as np

from mslam_jax.data.special_ids import BLANK_ID, EOS_ID, NUM_RESERVED

# The reserved ids (PAD, EOS, UNK, MASK, CTC blank): none belongs in a transcript.
_RESERVED_IDS = frozenset(range(NUM_RESERVED))


def greedy_decode(log_probs: np.ndarray, blank_id: int = BLANK_ID) -> list[int]:
  """Best path: argmax per frame, merge repeats, drop blanks."""
  best = np.asarray(log_probs).argmax(axis=-1)
  out, previous = [], None
  for token in best.tolist():
    if token != previous and token != blank_id:
      out.append(token)
    previous = token
  return out


def beam_decode(log_probs: np.ndarray, beam_size: int = 8, blank_id: int = BLANK_ID,
                token_prune: int = 16) -> list[int]:
  """CTC prefix beam search (Hannun et al. 2014) without a language model.

  Each prefix keeps two log scores: paths ending in blank and paths ending in its last token, so
  that "a a" (with a blank between) and "a" (a repeat) are told apart. Only the `token_prune` most
  likely tokens of a frame are expanded, which keeps a 4k-symbol vocabulary cheap.
  """
  return _prefix_beam_search(log_probs, None, 0.0, 0.0, beam_size, blank_id, token_prune, -math.inf)


def lm_beam_decode(log_probs: np.ndarray, lm, weight: float, length_bonus: float, beam_size: int = 8,
                   blank_id: int = BLANK_ID, token_prune: int = 8, prune_log_prob: float = -10.0) -> list[int]:
  """CTC prefix beam search with shallow fusion of a character LM (evaluation.char_lm.CharNgramLM).

  A prefix ranks by log p_ctc + weight * log p_lm + length_bonus * len; the LM scores a symbol when it
  extends a prefix, and the end of the sentence (EOS) once at the end. A frame expands at most
  `token_prune` symbols, and none less likely than `prune_log_prob`.
  """
  return _prefix_beam_search(log_probs, lm, weight, length_bonus, beam_size, blank_id, token_prune, prune_log_prob)


def _prefix_beam_search(log_probs, lm, weight, length_bonus, beam_size, blank_id, token_prune, prune_log_prob):
  neg_inf = -math.inf
  # prefix -> [log p ending in blank, log p ending in its last symbol, weighted LM + length score]
  beams: dict[tuple[int, ...], list[float]] = {(): [0.0, neg_inf, 0.0]}
  for frame in np.asarray(log_probs, np.float64):
    order = np.argsort(frame)[::-1][:token_prune]
    # Python floats from here: scalar numpy arithmetic would triple the search's time.
    candidates = [(int(t), float(frame[t])) for t in order if frame[t] >= prune_log_prob] or [
        (int(order[0]), float(frame[order[0]]))]
    next_beams: dict[tuple[int, ...], list[float]] = {}
    for prefix, (p_blank, p_token, fused) in beams.items():
      p_total = _logaddexp(p_blank, p_token)
      last = prefix[-1] if prefix else None
      lm_next = None
      for token, p in candidates:
        if token == blank_id:
          same = next_beams.setdefault(prefix, [neg_inf, neg_inf, fused])
          same[0] = _logaddexp(same[0], p_total + p)
          continue
        if token == last:
          # A repeat extends the prefix only through a blank; otherwise it collapses into it.
          same = next_beams.setdefault(prefix, [neg_inf, neg_inf, fused])
          same[1] = _logaddexp(same[1], p_token + p)
          source = p_blank
        else:
          source = p_total
        if source == neg_inf:
          continue
        extended = next_beams.get(prefix + (token,))
        if extended is None:
          step = 0.0
          if lm is not None:
            lm_next = lm.log_probs(prefix) if lm_next is None else lm_next
            step = weight * float(lm_next[token]) + length_bonus
          extended = next_beams[prefix + (token,)] = [neg_inf, neg_inf, fused + step]
        extended[1] = _logaddexp(extended[1], source + p)
    beams = dict(heapq.nlargest(beam_size, next_beams.items(),
                                key=lambda kv: _logaddexp(kv[1][0], kv[1][1]) + kv[1][2]))
  end = (lambda prefix: weight * float(lm.log_probs(prefix)[EOS_ID])) if lm is not None else (lambda prefix: 0.0)
  return list(max(beams.items(), key=lambda kv: _logaddexp(kv[1][0], kv[1][1]) + kv[1][2] + end(kv[0]))[0])


def _logaddexp(a: float, b: float) -> float:
  if a < b:
    a, b = b, a
  if b == -math.inf:
    return a
  return a + math.log1p(math.exp(b - a))


def ids_to_text(vocab, ids: Iterable[int]) -> str:
  """Decodes ids to text, dropping reserved ids and ids beyond the vocabulary."""
  size = getattr(vocab, "vocab_size", None)
  kept = [int(i) for i in ids if int(i) not in _RESERVED_IDS and (size is None or int(i) < size)]
  return vocab.decode(kept) if kept else ""


def decode_batch(log_probs: np.ndarray, mask: np.ndarray, method: str = "greedy", beam_size: int = 8,
                 blank_id: int = BLANK_ID) -> list[list[int]]:
  """Decodes a batch [B, T, V] with its frame mask [B, T]."""
  if method not in ("greedy", "beam"):
    raise ValueError(f"CTC decoding method must be 'greedy' or 'beam', got {method!r}")
  out = []
  for row, row_mask in zip(np.asarray(log_probs), np.asarray(mask)):
    valid = row[: int(row_mask.sum())]
    if method == "greedy":
      out.append(greedy_decode(valid, blank_id))
    else:
      out.append(beam_decode(valid, beam_size, blank_id))
  return out


def tune_lm_fusion(lms, rows: Sequence[tuple[str, str, np.ndarray]], vocab,
                   weights: Sequence[float] = (0.6, 1.2), length_bonuses: Sequence[float] = (1.5, 3.0),
                   beam_size: int = 8) -> dict[str, float]:
  """Sets `lms.weight` and `lms.length_bonus` (evaluation.char_lm.LanguageModels) to the point with
  the lowest CER on `rows`, (language, reference, log-probabilities) of held-aside utterances: the
  grid, or no LM at all (weight 0, no bonus) where it does not help. Returns the point and its CER."""
  if not rows:
    raise ValueError("no utterances to tune the LM fusion weights on")
  refs = [ref for _, ref, _ in rows]
  best = None
  for weight, bonus in [(0.0, 0.0)] + [(w, b) for w in weights for b in length_bonuses]:
    hyps = [ids_to_text(vocab, lm_beam_decode(lp, lms.for_language(lang), weight, bonus, beam_size))
            for lang, _, lp in rows]
    cer = float(jiwer.cer(refs, hyps))
    logging.info("LM fusion: weight %.2f, length bonus %.2f: CER %.4f on %d utterances", weight, bonus, cer,
                 len(rows))
    if best is None or cer < best[0]:
      best = (cer, weight, bonus)
  cer, lms.weight, lms.length_bonus = best
  return {"weight": lms.weight, "length_bonus": lms.length_bonus, "cer": cer}


def error_rates_by_language(references: Sequence[str], hypotheses: Sequence[str],
                            langs: Sequence[str]) -> dict[str, dict[str, float]]:
  """CER and WER (jiwer) per language and over all utterances ("all").

  Utterances with an empty reference are skipped and counted in `skipped` (a rate over nothing is
  undefined). Returns {lang: {"cer", "wer", "num_utterances", "skipped"}}.
  """
  if not len(references) == len(hypotheses) == len(langs):
    raise ValueError("references, hypotheses and langs must have the same length")
  grouped: Mapping[str, list[tuple[str, str]]] = collections.defaultdict(list)
  skipped: Mapping[str, int] = collections.Counter()
  for ref, hyp, lang in zip(references, hypotheses, langs):
    if not ref.strip():
      skipped[lang] += 1
      continue
    grouped[lang].append((ref, hyp))
  if sum(skipped.values()):
    logging.warning("CER/WER: skipped %d utterances with empty references", sum(skipped.values()))
  results = {}
  everything = []
  for lang in sorted(set(langs)):
    pairs = grouped.get(lang, [])
    everything.extend(pairs)
    results[lang] = _rates(pairs) | {"skipped": float(skipped[lang])}
  results["all"] = _rates(everything) | {"skipped": float(sum(skipped.values()))}
  return results


def _rates(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
  if not pairs:
    return {"cer": float("nan"), "wer": float("nan"), "num_utterances": 0.0}
  refs = [r for r, _ in pairs]
  hyps = [h for _, h in pairs]
  return {"cer": float(jiwer.cer(refs, hyps)), "wer": float(jiwer.wer(refs, hyps)),
          "num_utterances": float(len(pairs))}
