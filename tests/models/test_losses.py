"""Objectives at initialization sit where theory puts them; CTC matches a brute-force count."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mslam_jax.models import losses
from mslam_jax.models import masking

# One compile per function and shape rather than one per primitive (eager mode).
contrastive_loss = jax.jit(losses.contrastive_loss, static_argnames=("num_negatives", "temperature"))
masked_cross_entropy = jax.jit(losses.masked_cross_entropy)
ctc_loss = jax.jit(losses.ctc_loss)
symmetric_infonce = jax.jit(losses.symmetric_infonce)


def test_negatives_come_from_other_masked_frames_of_the_same_utterance():
  masked = jnp.array([[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 0, 0]], dtype=bool)
  idx = np.asarray(losses.sample_negative_indices(jax.random.key(0), masked, 200))
  for b in range(2):
    allowed = set(np.flatnonzero(np.asarray(masked[b])))
    for t in allowed:
      drawn = set(idx[b, t].tolist())
      assert drawn == allowed - {t}, (b, t, drawn)  # all others seen, never itself nor unmasked


def test_infonce_of_random_embeddings_is_log_of_candidates():
  k = 100
  key_ctx, key_tgt, key_mask, key_neg = jax.random.split(jax.random.key(1), 4)
  context = jax.random.normal(key_ctx, (2, 200, 2048))
  targets = jax.random.normal(key_tgt, (2, 200, 2048))
  masked = masking.start_prob_span_mask(key_mask, jnp.ones((2, 200), bool), 0.065, 10)
  loss, accuracy = contrastive_loss(key_neg, context, targets, masked, num_negatives=k, temperature=0.1)
  # Random cosines have std 1/sqrt(D); at T=0.1 the logits' spread adds about var/2 = 0.024.
  assert abs(float(loss) - math.log(k + 1)) < 0.06, float(loss)
  assert float(accuracy) < 0.05
  # A context that points at its own target wins against every distractor.
  loss, accuracy = contrastive_loss(key_neg, targets, targets, masked, num_negatives=k, temperature=0.1)
  assert float(accuracy) == 1.0 and float(loss) < 0.01


def test_infonce_drops_distractors_with_the_positive_code():
  context = jax.random.normal(jax.random.key(2), (2, 50, 16))
  targets = jax.random.normal(jax.random.key(3), (2, 50, 16))
  masked = jnp.ones((2, 50), bool)
  codes = jnp.zeros((2, 50), jnp.int32)  # all targets carry the same code: nothing to contrast
  loss, _ = contrastive_loss(jax.random.key(4), context, targets, masked, target_codes=codes)
  assert float(loss) < 1e-6
  # Unmasked frames and utterances with a single masked frame are not scored.
  masked = jnp.zeros((2, 50), bool).at[0, 3].set(True)
  loss, accuracy = contrastive_loss(jax.random.key(4), context, targets, masked)
  assert float(loss) == 0.0 and float(accuracy) == 0.0


def test_masked_cross_entropy_of_uniform_logits_is_log_vocab():
  for vocab in (4096,):
    logits = jnp.zeros((3, 7, vocab))
    targets = jax.random.randint(jax.random.key(5), (3, 7), 0, vocab)
    weights = jax.random.bernoulli(jax.random.key(6), 0.5, (3, 7))
    loss, _ = masked_cross_entropy(logits, targets, weights)
    np.testing.assert_allclose(float(loss), math.log(vocab), rtol=1e-5)
  # Only weighted positions count: wrong logits elsewhere change nothing.
  logits = jnp.zeros((1, 4, 8)).at[0, 0, 5].set(100.0)
  targets = jnp.array([[5, 1, 2, 3]])
  loss, accuracy = masked_cross_entropy(logits, targets, jnp.array([[True, False, False, False]]))
  assert float(loss) < 1e-6 and float(accuracy) == 1.0
  # Grouped codebooks: logits [B, T, G, V], targets [B, T, G], weights [B, T].
  loss, _ = masked_cross_entropy(jnp.zeros((2, 3, 2, 16)), jnp.ones((2, 3, 2), jnp.int32), jnp.ones((2, 3)))
  np.testing.assert_allclose(float(loss), math.log(16), rtol=1e-5)


def test_masked_cross_entropy_and_its_gradient_match_the_log_softmax_reference():
  logits = 3.0 * jax.random.normal(jax.random.key(7), (2, 5, 2, 33))
  targets = jax.random.randint(jax.random.key(8), (2, 5, 2), 0, 33)
  weights = jnp.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])

  def reference(x):
    picked = jnp.take_along_axis(jax.nn.log_softmax(x, axis=-1), targets[..., None], axis=-1)[..., 0]
    w = jnp.broadcast_to(weights[..., None], picked.shape).astype(jnp.float32)
    return -jnp.sum(picked * w) / jnp.sum(w)

  ours = lambda x: losses.masked_cross_entropy(x, targets, weights)[0]
  np.testing.assert_allclose(float(ours(logits)), float(reference(logits)), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(reference)(logits), atol=1e-7)


def _brute_force_ctc_nll(log_probs, label, blank):
  """-log sum over every frame labelling whose collapse (merge repeats, drop blanks) is `label`."""
  num_frames, vocab = log_probs.shape
  total = 0.0
  for path in itertools.product(range(vocab), repeat=num_frames):
    collapsed = [s for i, s in enumerate(path) if s != blank and (i == 0 or s != path[i - 1])]
    if collapsed == list(label):
      total += math.exp(sum(log_probs[t, s] for t, s in enumerate(path)))
  return -math.log(total)


def test_ctc_matches_brute_force_over_alignments():
  vocab, frames, blank = 6, 5, losses.BLANK_ID
  logits = np.asarray(jax.random.normal(jax.random.key(7), (2, frames + 2, vocab)))
  log_probs = np.asarray(jax.nn.log_softmax(logits[:, :frames], axis=-1))
  labels = np.array([[5, 5, 0], [2, 5, 1]])  # a repeat (needs a blank between) / a 3-char label
  label_mask = np.array([[1, 1, 0], [1, 1, 1]])
  logit_mask = np.zeros((2, frames + 2), np.int32)
  logit_mask[:, :frames] = 1  # two padding frames that must not count
  expected = [_brute_force_ctc_nll(log_probs[0], [5, 5], blank), _brute_force_ctc_nll(log_probs[1], [2, 5, 1], blank)]
  loss, infeasible = ctc_loss(jnp.asarray(logits), logit_mask, labels, label_mask)
  np.testing.assert_allclose(float(loss), sum(expected) / 5, rtol=1e-4)
  assert float(infeasible) == 0


def test_ctc_drops_and_counts_infeasible_utterances():
  logits = jax.random.normal(jax.random.key(8), (2, 4, 6))
  logit_mask = jnp.ones((2, 4), jnp.int32)
  labels = jnp.array([[5, 6, 7, 8, 9], [5, 5, 5, 0, 0]])  # 5 labels > 4 frames; 3 repeats need 5
  label_mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  loss, infeasible = ctc_loss(logits, logit_mask, labels, label_mask)
  assert float(infeasible) == 2 and float(loss) == 0.0
  mixed_labels = jnp.array([[5, 6, 0, 0, 0], [5, 6, 7, 8, 9]])
  mixed_mask = jnp.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
  loss, infeasible = ctc_loss(logits, logit_mask, mixed_labels, mixed_mask)
  # The same batch with the second transcript emptied (an empty row is neither scored nor counted).
  alone, none_dropped = ctc_loss(logits, logit_mask, mixed_labels, mixed_mask.at[1].set(0))
  assert float(infeasible) == 1 and float(none_dropped) == 0 and np.isfinite(float(loss))
  np.testing.assert_allclose(float(loss), float(alone), rtol=1e-6)


def test_symmetric_infonce_of_random_embeddings_is_log_batch():
  batch = 64
  a = jax.random.normal(jax.random.key(9), (batch, 4096))
  b = jax.random.normal(jax.random.key(10), (batch, 4096))
  valid = jnp.ones((batch,), bool)
  temperature = losses.clipped_temperature(jnp.log(0.1), 0.01, 1.0)
  loss, accuracy = symmetric_infonce(a, b, valid, temperature)
  assert abs(float(loss) - math.log(batch)) < 0.05, float(loss)
  loss, accuracy = symmetric_infonce(a, a, valid, temperature)
  assert float(accuracy) == 1.0 and float(loss) < 0.01  # 63 e^-10 from the distractors
  # Padding rows take no part: the loss equals that of the valid rows alone.
  padded_valid = valid.at[40:].set(False)
  loss_padded, _ = symmetric_infonce(a, b, padded_valid, temperature)
  loss_alone, _ = symmetric_infonce(a[:40], b[:40], valid[:40], temperature)
  np.testing.assert_allclose(float(loss_padded), float(loss_alone), rtol=1e-5)


def test_clipped_temperature_stays_in_range():
  assert float(losses.clipped_temperature(jnp.array(-20.0), 0.01, 1.0)) == np.float32(0.01)
  assert float(losses.clipped_temperature(jnp.array(3.0), 0.01, 1.0)) == 1.0
  grad = jax.grad(lambda x: losses.clipped_temperature(x, 0.01, 1.0))(jnp.log(0.07))
  np.testing.assert_allclose(float(grad), 0.07, rtol=1e-4)


def test_codebook_health_figures():
  vocab = 8
  uniform = jnp.full((2, 5, 1, vocab), 1.0 / vocab)
  mask = jnp.ones((2, 5))
  np.testing.assert_allclose(float(losses.codebook_perplexity(uniform, mask)), vocab, rtol=1e-4)
  assert abs(float(losses.diversity_loss(uniform, mask))) < 1e-4
  collapsed = jax.nn.one_hot(jnp.zeros((2, 5, 1), jnp.int32), vocab)
  np.testing.assert_allclose(float(losses.codebook_perplexity(collapsed, mask)), 1.0, rtol=1e-4)
  np.testing.assert_allclose(float(losses.diversity_loss(collapsed, mask)), 1 - 1 / vocab, rtol=1e-4)
  codes = jnp.array([[0, 1, 2, 7, 7]])
  assert float(losses.codebook_usage(codes, jnp.ones((1, 5)), vocab)) == 4 / 8
  assert float(losses.codebook_usage(codes, jnp.array([[1, 1, 0, 0, 0]]), vocab)) == 2 / 8
