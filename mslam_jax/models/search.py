"""Greedy and beam search over a next-token function, jittable (fixed shapes, lax loops).

Both take `logits_fn(tokens [N, L + 1], t) -> logits [N, V]`: the logits that predict the token at
position t + 1 from the buffer `tokens` (position 0 holds the start id; positions after t are
still padding and must not matter, which a causal decoder guarantees). Both return tokens without
the start id, padded with `pad_id` after the first EOS.

Beam search keeps `beam_size` live hypotheses and the `beam_size` best finished ones, scoring a
finished hypothesis by GNMT's length normalisation, log p / ((5 + |y|) / 6)^alpha (Wu et al. 2016;
alpha 0: plain log-probability). It stops once no live hypothesis can still beat the worst kept
finished one (live scores only fall; the bound uses the longest length when alpha > 0).
"""
from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
LogitsFn = Callable[[Array, Array], Array]
NEG_INF = -1.0e9  # finite: -inf - -inf would give NaN in the score arithmetic


def length_penalty(length: Array, alpha: float) -> Array:
  """GNMT's ((5 + length) / 6) ** alpha."""
  return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _after_eos(tokens: Array, eos_id: int) -> Array:
  """Positions strictly after the first EOS of each row (tokens [..., L])."""
  is_eos = (tokens == eos_id).astype(jnp.int32)
  return (jnp.cumsum(is_eos, axis=-1) - is_eos) > 0


def greedy_search(logits_fn: LogitsFn, batch_size: int, max_length: int, eos_id: int,
                  start_id: int = 0, pad_id: int = 0) -> tuple[Array, Array]:
  """(tokens [B, max_length], log-probability of each row [B]) by arg-max decoding."""
  buffer = jnp.full((batch_size, max_length + 1), pad_id, jnp.int32).at[:, 0].set(start_id)

  def body(state):
    t, buffer, score, done = state
    log_probs = jax.nn.log_softmax(logits_fn(buffer, t).astype(jnp.float32), axis=-1)
    token = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    score = score + jnp.where(done, 0.0, jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0])
    token = jnp.where(done, pad_id, token)
    buffer = jax.lax.dynamic_update_slice(buffer, token[:, None], (0, t + 1))
    return t + 1, buffer, score, done | (token == eos_id)

  def running(state):  # until every row has its EOS
    t, _, _, done = state
    return (t < max_length) & ~jnp.all(done)

  _, buffer, score, _ = jax.lax.while_loop(
      running, body, (jnp.zeros((), jnp.int32), buffer, jnp.zeros((batch_size,), jnp.float32),
                      jnp.zeros((batch_size,), bool)))
  return buffer[:, 1:], score


def beam_search(logits_fn: LogitsFn, batch_size: int, beam_size: int, max_length: int, eos_id: int,
                alpha: float = 0.6, start_id: int = 0, pad_id: int = 0) -> tuple[Array, Array]:
  """(tokens [B, K, max_length], scores [B, K]), best first; scores are length-normalised.

  `logits_fn` sees the B * K hypotheses flattened batch-major ([B * K, L + 1]): whatever it
  conditions on (encoder frames) must be repeated K times per item (`repeat_for_beams`).
  A row that never finishes returns its live hypotheses, normalised at max_length.
  """
  b, k, length = batch_size, beam_size, max_length + 1
  seqs = jnp.full((b, k, length), pad_id, jnp.int32).at[:, :, 0].set(start_id)
  # Only beam 0 is live at first, so the K beams do not start as K copies of one hypothesis.
  live_logp = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1), jnp.float32)[None], (b, 1))
  finished = (seqs, jnp.full((b, k), NEG_INF, jnp.float32))

  def gather(x, index):  # x [B, M, ...], index [B, N] -> [B, N, ...]
    return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)

  def body(state):
    t, seqs, live_logp, (fin_seqs, fin_scores) = state
    logits = logits_fn(seqs.reshape(b * k, length), t).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    vocab = log_probs.shape[-1]
    candidates = (live_logp[:, :, None] + log_probs.reshape(b, k, vocab)).reshape(b, k * vocab)
    # 2K candidates: even if K of them end in EOS, K live ones remain.
    top_logp, top_index = jax.lax.top_k(candidates, 2 * k)
    token = (top_index % vocab).astype(jnp.int32)
    new_seqs = gather(seqs, top_index // vocab).at[:, :, t + 1].set(token)
    ends = token == eos_id
    # Finished: the old ones and the new EOS-ended ones, best K kept.
    new_scores = jnp.where(ends, top_logp / length_penalty(t + 1, alpha), NEG_INF)
    all_seqs = jnp.concatenate([fin_seqs, new_seqs], axis=1)
    all_scores = jnp.concatenate([fin_scores, new_scores], axis=1)
    fin_scores, keep = jax.lax.top_k(all_scores, k)
    fin_seqs = gather(all_seqs, keep)
    # Live: the best K that did not end.
    live_logp, keep = jax.lax.top_k(jnp.where(ends, NEG_INF, top_logp), k)
    return t + 1, gather(new_seqs, keep), live_logp, (fin_seqs, fin_scores)

  def running(state):
    t, _, live_logp, (_, fin_scores) = state
    # The best score a live hypothesis could still reach: its log-probability only falls, and
    # the length normalisation is largest at the longest length.
    best_live = jnp.max(live_logp, axis=1) / length_penalty(max_length if alpha > 0 else 1, alpha)
    worst_kept = jnp.min(fin_scores, axis=1)
    return (t < max_length) & jnp.any(best_live > worst_kept)

  _, seqs, live_logp, (fin_seqs, fin_scores) = jax.lax.while_loop(
      running, body, (jnp.zeros((), jnp.int32), seqs, live_logp, finished))
  # Rows with no finished hypothesis fall back to their live ones.
  none_finished = jnp.all(fin_scores <= NEG_INF / 2, axis=1)
  live_scores = live_logp / length_penalty(max_length, alpha)
  out_seqs = jnp.where(none_finished[:, None, None], seqs, fin_seqs)[:, :, 1:]
  out_scores = jnp.where(none_finished[:, None], live_scores, fin_scores)
  return jnp.where(_after_eos(out_seqs, eos_id), pad_id, out_seqs), out_scores


def repeat_for_beams(x: Array, beam_size: int) -> Array:
  """[B, ...] -> [B * K, ...], each item repeated K times in a row (beam_search's layout)."""
  return jnp.repeat(x, beam_size, axis=0)
