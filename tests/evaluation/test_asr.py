"""CTC decoding and per-language error rates on hand-made log-probabilities."""
import itertools

import numpy as np
import pytest

from mslam_jax.evaluation import asr

BLANK = asr.BLANK_ID


def _log_probs(rows):
  return np.log(np.asarray(rows, np.float64))


def test_greedy_merges_repeats_and_drops_blanks():
  # Vocabulary of 7: ids 5 and 6 are characters. Best path: 5 5 blank 5 6 6 -> [5, 5, 6].
  rows = []
  for best in [5, 5, BLANK, 5, 6, 6]:
    row = np.full(7, 0.02)
    row[best] = 1 - 0.02 * 6
    rows.append(row)
  assert asr.greedy_decode(_log_probs(rows)) == [5, 5, 6]


def test_beam_finds_the_labelling_greedy_misses():
  # Blank wins every frame (greedy: empty), but "5" collects more paths: 0.4025 vs 0.16.
  row = np.zeros(7) + 1e-9
  row[BLANK], row[5], row[6] = 0.4, 0.35, 0.25
  log_probs = _log_probs([row, row])
  assert asr.greedy_decode(log_probs) == []
  assert asr.beam_decode(log_probs, beam_size=4) == [5]


def _brute_force_best(probs):
  """Most probable collapsed labelling by summing every path (tiny T and V only)."""
  totals = {}
  for path in itertools.product(range(probs.shape[1]), repeat=probs.shape[0]):
    label, prev = [], None
    for tok in path:
      if tok != prev and tok != BLANK:
        label.append(tok)
      prev = tok
    p = np.prod([probs[t, tok] for t, tok in enumerate(path)])
    totals[tuple(label)] = totals.get(tuple(label), 0.0) + p
  return list(max(totals, key=totals.get))


@pytest.mark.parametrize("seed", range(5))
def test_beam_matches_exhaustive_search(seed):
  rng = np.random.default_rng(seed)
  # ids 0..3 reserved but given tiny mass; BLANK=4, characters 5 and 6.
  logits = rng.normal(size=(5, 7)) * 2
  logits[:, :4] = -30
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  assert asr.beam_decode(np.log(probs), beam_size=64, token_prune=7) == _brute_force_best(probs)


def test_decode_batch_respects_mask():
  row = np.full(7, 1e-3)
  row[5] = 1.0
  pad_row = np.full(7, 1e-3)
  pad_row[6] = 1.0
  batch = np.log(np.stack([[row, row, pad_row], [row, pad_row, pad_row]]))
  mask = np.array([[1, 1, 0], [1, 1, 1]])
  assert asr.decode_batch(batch, mask) == [[5], [5, 6]]
  assert asr.decode_batch(batch, mask, method="beam") == [[5], [5, 6]]
  with pytest.raises(ValueError, match="greedy"):
    asr.decode_batch(batch, mask, method="viterbi")


def test_error_rates_by_language():
  refs = ["abcd", "ab cd", "xyz", ""]
  hyps = ["abcd", "ab ce", "xy", "q"]
  langs = ["eng", "eng", "fra", "fra"]
  rates = asr.error_rates_by_language(refs, hyps, langs)
  assert rates["eng"]["cer"] == pytest.approx(1 / 9)
  assert rates["eng"]["wer"] == pytest.approx(1 / 3)
  assert rates["fra"]["cer"] == pytest.approx(1 / 3)
  assert rates["fra"]["skipped"] == 1
  assert rates["all"]["num_utterances"] == 3
  assert rates["all"]["cer"] == pytest.approx(2 / 12)


class _CharVocab:
  def decode(self, ids):
    return "".join(chr(ord("a") + i - 5) for i in ids)


def test_ids_to_text_drops_reserved_ids():
  assert asr.ids_to_text(_CharVocab(), [0, 5, 4, 6, 1, 2, 3]) == "ab"
