"""CTC decoding (greedy and prefix beam search) and error rates per language.

Decoders take per-utterance log-probabilities [T, V] (numpy, valid frames only) and return token
ids with blanks removed and repeats merged. Error rates come from jiwer; this module only groups
utterances by language and skips those that cannot be scored (empty reference).
"""
import collections
import logging
from typing import Iterable, Mapping, Sequence

import jiwer
import numpy as np

# The reserved ids of mslam_jax.data.vocabularies (PAD 0, EOS 1, UNK 2, MASK 3, CTC blank 4): none
# belongs in a transcript. Kept here as literals so decoding needs no TF/SeqIO import.
BLANK_ID = 4
_RESERVED_IDS = frozenset(range(BLANK_ID + 1))


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
  log_probs = np.asarray(log_probs, np.float64)
  neg_inf = -np.inf
  # prefix (tuple of ids) -> (log p ending in blank, log p ending in non-blank)
  beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, neg_inf)}
  for frame in log_probs:
    candidates = np.argsort(frame)[::-1][:token_prune]
    next_beams: dict[tuple[int, ...], list[float]] = collections.defaultdict(lambda: [neg_inf, neg_inf])
    for prefix, (p_blank, p_token) in beams.items():
      p_total = np.logaddexp(p_blank, p_token)
      for token in candidates.tolist():
        p = frame[token]
        if token == blank_id:
          entry = next_beams[prefix]
          entry[0] = np.logaddexp(entry[0], p_total + p)
          continue
        last = prefix[-1] if prefix else None
        extended = prefix + (token,)
        entry = next_beams[extended]
        if token == last:
          # A repeat extends the prefix only through a blank; otherwise it collapses into it.
          entry[1] = np.logaddexp(entry[1], p_blank + p)
          same = next_beams[prefix]
          same[1] = np.logaddexp(same[1], p_token + p)
        else:
          entry[1] = np.logaddexp(entry[1], p_total + p)
    ranked = sorted(next_beams.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:beam_size]
    beams = {prefix: (scores[0], scores[1]) for prefix, scores in ranked}
  best = max(beams.items(), key=lambda kv: np.logaddexp(*kv[1]))[0]
  return list(best)


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
