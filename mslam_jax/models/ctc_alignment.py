"""Batched CTC forced alignment inside the step: which character each speech frame says.

The training-time twin of evaluation/alignment.viterbi_align (one utterance, numpy, float64, for
timestamps): the same Viterbi over the blank-interleaved transcript, for a whole batch under jit,
so that an objective can read a pair's durations from the CTC head's own posteriors
(ObjectiveWeights.consistency). Nothing here is differentiated: callers pass stop-gradded inputs.
"""
import jax
import jax.numpy as jnp

_NEG = -1e30  # a finite -inf: sums of two stay finite in float32 and argmax ties stay defined


def viterbi_states(log_probs: jax.Array, frame_mask: jax.Array, labels: jax.Array, label_mask: jax.Array,
                   blank_id: int) -> jax.Array:
  """The most likely CTC path of each utterance, as a state per frame.

  Args:
    log_probs: [B, T, V] per-frame log-probabilities (or logits: the path only compares sums).
    frame_mask: [B, T], 1 on valid frames (a prefix).
    labels / label_mask: [B, L] the transcripts' ids and their mask (a prefix).
    blank_id: the CTC blank.
  Returns:
    int32 [B, T]: the state of each frame in the 2L+1 states blank, c0, blank, c1, ..., blank
    (odd: character (s - 1) / 2; even: a blank). Frames past an utterance's end repeat its last
    state. An utterance whose frames cannot hold its transcript gets a path all the same: mask it
    out with losses.ctc_feasible.
  """
  batch, _, _ = log_probs.shape
  num_labels = labels.shape[1]
  num_states = 2 * num_labels + 1
  ext = jnp.full((batch, num_states), blank_id, labels.dtype).at[:, 1::2].set(labels)
  valid_label = label_mask.astype(bool)
  # A skip from s-2 to s enters a character that differs from the one before it.
  can_skip = jnp.zeros((batch, num_states), bool).at[:, 3::2].set(labels[:, 1:] != labels[:, :-1])
  emit = jnp.take_along_axis(log_probs.astype(jnp.float32), ext[:, None, :], axis=2)  # [B, T, S]
  frame_mask = frame_mask.astype(bool)

  first = jnp.full((batch, num_states), _NEG, jnp.float32).at[:, :2].set(emit[:, 0, :2])

  def forward(score, xs):
    emit_t, valid_t = xs
    step = jnp.pad(score, ((0, 0), (1, 0)), constant_values=_NEG)[:, :-1]
    skip = jnp.where(can_skip, jnp.pad(score, ((0, 0), (2, 0)), constant_values=_NEG)[:, :-2], _NEG)
    candidates = jnp.stack([score, step, skip])
    choice = jnp.argmax(candidates, axis=0)
    new = jnp.max(candidates, axis=0) + emit_t
    valid_t = valid_t[:, None]
    return jnp.where(valid_t, new, score), jnp.where(valid_t, choice, 0).astype(jnp.int8)

  xs = (jnp.moveaxis(emit[:, 1:], 1, 0), jnp.moveaxis(frame_mask[:, 1:], 1, 0))
  score, back = jax.lax.scan(forward, first, xs)  # back: [T-1, B, S], the move into frame t

  # The path ends on the last character or the blank after it.
  last = 2 * jnp.sum(valid_label, axis=-1).astype(jnp.int32)
  at = lambda s: jnp.take_along_axis(score, s[:, None], axis=1)[:, 0]
  end = jnp.where(at(last) >= at(jnp.maximum(last - 1, 0)), last, jnp.maximum(last - 1, 0))

  def backward(state, back_t):
    moved = jnp.take_along_axis(back_t, state[:, None], axis=1)[:, 0].astype(jnp.int32)
    return state - moved, state

  start, later = jax.lax.scan(backward, end, back, reverse=True)
  return jnp.concatenate([start[:, None], jnp.moveaxis(later, 0, 1)], axis=1)


def held_characters(states: jax.Array, labels: jax.Array) -> jax.Array:
  """[B, T] states -> [B, T] the character each frame belongs to: a blank frame holds the
  character before it (the first character before any), so each character's run of frames is
  its duration in the speech."""
  index = jnp.maximum((states - 1) // 2, 0)
  return jnp.take_along_axis(labels, index, axis=1)
