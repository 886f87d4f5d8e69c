"""Character n-gram LMs and CTC beam search fused with them, on hand-made text and log-probabilities."""
import itertools

import numpy as np
import pytest

from mslam_jax.evaluation import asr, char_lm

V = 9  # ids 0-4 reserved (EOS 1, blank 4); 5..8 are the characters a, b, c, d
A, B, C, D = 5, 6, 7, 8


def test_every_context_gives_a_distribution_and_seen_continuations_win():
  lm = char_lm.CharNgramLM.fit([[A, B, C], [A, B, D], [A, B, C]], order=3, vocab_size=V)
  for context in ([], [A], [A, B], [D, D], [C, A, B]):
    probs = np.exp(lm.log_probs(context))
    assert probs.sum() == pytest.approx(1.0) and (probs > 0).all()
  after_ab = lm.log_probs([A, B])
  assert after_ab[C] > after_ab[D] > after_ab[A]  # 2 : 1 : never
  assert np.argmax(lm.log_probs([])) == A  # sentences start with a
  assert np.argmax(lm.log_probs([A, B, C])) == char_lm.EOS_ID
  # An unseen context falls back to its seen suffix.
  np.testing.assert_allclose(lm.log_probs([D, A]), lm.log_probs([C, A]))


def test_per_language_models_prefer_their_own_language():
  rng = np.random.default_rng(0)
  patterns = {"xxx": [A, B, C, D], "yyy": [D, C, B, A]}
  sentences = [(lang, (p * 3)[k:k + 6]) for lang, p in patterns.items() for k in rng.integers(0, 4, 30)]
  lms = char_lm.LanguageModels.fit(sentences, order=4, vocab_size=V)
  held_out = (patterns["xxx"] * 3)[1:7]
  assert lms.for_language("xxx").sentence_log_prob(held_out) > lms.for_language("yyy").sentence_log_prob(held_out) + 5
  assert lms.for_language("zzz") is lms.pooled


def _brute_force_fused(probs, lm, weight, bonus):
  """The best collapsed labelling by log(sum over its paths) + weight * log p_lm(labelling, EOS) + bonus * length."""
  totals = {}
  for path in itertools.product(range(probs.shape[1]), repeat=probs.shape[0]):
    label, prev = [], None
    for tok in path:
      if tok != prev and tok != asr.BLANK_ID:
        label.append(tok)
      prev = tok
    totals[tuple(label)] = totals.get(tuple(label), 0.0) + np.prod([probs[t, tok] for t, tok in enumerate(path)])
  score = lambda label: np.log(totals[label]) + weight * lm.sentence_log_prob(label) + bonus * len(label)
  return list(max(totals, key=score))


@pytest.mark.parametrize("seed", range(4))
def test_fused_beam_matches_exhaustive_search(seed):
  rng = np.random.default_rng(seed)
  lm = char_lm.CharNgramLM.fit([[A, B, A], [B, A, B, B], [A, A]], order=2, vocab_size=7)
  logits = rng.normal(size=(4, 7)) * 2
  logits[:, :4] = -30  # reserved ids; blank 4, characters 5 and 6
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  for weight, bonus in ((0.0, 0.0), (1.0, 0.5), (2.0, 1.5)):
    decoded = asr.lm_beam_decode(np.log(probs), lm, weight, bonus, beam_size=64, token_prune=7, prune_log_prob=-np.inf)
    assert decoded == _brute_force_fused(probs, lm, weight, bonus)
  # Without the LM it is the plain prefix beam search.
  assert asr.lm_beam_decode(np.log(probs), lm, 0.0, 0.0, beam_size=64, token_prune=7,
                            prune_log_prob=-np.inf) == asr.beam_decode(np.log(probs), beam_size=64, token_prune=7)


def _frames(chars, confusable=None):
  """One frame a character then a blank; at `confusable` the wrong character D is slightly likelier."""
  rows = []
  for i, ch in enumerate(chars):
    row = np.full(V, 1e-4)
    if i == confusable:
      row[D], row[ch] = 0.5, 0.45
    else:
      row[ch] = 0.95
    rows.append(row / row.sum())
    blank = np.full(V, 1e-4)
    blank[asr.BLANK_ID] = 1.0
    rows.append(blank / blank.sum())
  return np.log(np.asarray(rows))


def test_the_lm_corrects_a_confusable_character_and_tuning_finds_it():
  words = [A, B, C, A, B, C]
  lms = char_lm.LanguageModels.fit([("xxx", words)] * 20, order=3, vocab_size=V)
  log_probs = _frames(words, confusable=2)
  assert asr.greedy_decode(log_probs) == [A, B, D, A, B, C]
  assert asr.lm_beam_decode(log_probs, lms.for_language("xxx"), 1.0, 0.0) == words

  class Letters:  # a vocabulary's decode: ids 5.. -> "abcd"
    vocab_size = V

    def decode(self, ids):
      return "".join("abcd"[i - A] for i in ids)

  chosen = asr.tune_lm_fusion(lms, [("xxx", "abcabc", log_probs)], Letters(), weights=(1.0,), length_bonuses=(0.0,))
  assert chosen == {"weight": 1.0, "length_bonus": 0.0, "cer": 0.0}
  assert (lms.weight, lms.length_bonus) == (1.0, 0.0)
  # Where the LM does not help (clean frames: no error to fix), tuning keeps the decoder without it.
  misleading = char_lm.LanguageModels.fit([("xxx", [A, B, D, A, B, C])] * 20, order=3, vocab_size=V)
  kept = asr.tune_lm_fusion(misleading, [("xxx", "abcabc", _frames(words))], Letters(), weights=(3.0,),
                            length_bonuses=(0.0,))
  assert kept == {"weight": 0.0, "length_bonus": 0.0, "cer": 0.0} and misleading.weight == 0.0
