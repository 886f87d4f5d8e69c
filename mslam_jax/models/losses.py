"""The pre-training objectives of mSLAM as pure functions of arrays (no parameters, no state).

Every loss returns a scalar (mean over the items it covers) together with its health figure
(accuracy, counts), computed in float32 whatever the compute dtype. Padding is excluded through
explicit masks; an objective that has nothing to score in a batch returns 0, not NaN.

The per-item objectives (masked prediction, contrastive, CTC) take an optional `denominator`: the
number of items of the whole batch (their `*_count` function, summed) when the batch is scored in
micro-batches; each micro-batch's sum over that number adds up to the whole batch's mean.
"""
from typing import Optional

import jax
import jax.numpy as jnp
import optax

from mslam_jax.data.special_ids import BLANK_ID

# Stands in for log(0) in masked logits; finite so that masked rows never produce NaN gradients.
_NEG_INF = -1e9


def _divide(total: jax.Array, count: jax.Array) -> jax.Array:
  """total / count, 0 rather than NaN when nothing was counted."""
  return total / jnp.maximum(jnp.asarray(count, jnp.float32), 1.0)


def _safe_mean(values: jax.Array, weights: jax.Array, denominator: Optional[jax.Array] = None) -> jax.Array:
  weights = weights.astype(jnp.float32)
  return _divide(jnp.sum(values * weights), jnp.sum(weights) if denominator is None else denominator)


def _l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def sample_negative_indices(rng: jax.Array, masked: jax.Array, num_negatives: int) -> jax.Array:
  """For every frame, `num_negatives` indices drawn uniformly (with replacement) from the OTHER
  masked frames of the same utterance. Returns int32 [B, T, K]; meaningless where the utterance has
  fewer than two masked frames (callers drop those frames).
  """
  batch, length = masked.shape
  num_masked = masked.sum(axis=-1).astype(jnp.int32)  # [B]
  # Positions of masked frames first, in time order (stable sort on the inverted mask).
  masked_positions = jnp.argsort(~masked, axis=-1, stable=True)  # [B, T]
  rank = jnp.cumsum(masked, axis=-1) - 1  # rank of a masked frame among masked frames
  draws = jax.random.uniform(rng, (batch, length, num_negatives))
  pool = jnp.maximum(num_masked - 1, 1)[:, None, None]
  r = jnp.minimum(jnp.floor(draws * pool).astype(jnp.int32), pool - 1)
  r = jnp.where(r >= rank[..., None], r + 1, r)  # skip the frame itself
  r = jnp.minimum(r, jnp.maximum(num_masked - 1, 0)[:, None, None])
  flat = jnp.take_along_axis(masked_positions, r.reshape(batch, -1), axis=-1)
  return flat.reshape(batch, length, num_negatives).astype(jnp.int32)


def _contrastive_scored(masked: jax.Array) -> jax.Array:
  """The masked frames of utterances with at least two of them (one has no distractor)."""
  masked = masked.astype(bool)
  return masked & (masked.sum(axis=-1, keepdims=True) >= 2)


def contrastive_count(masked: jax.Array) -> jax.Array:
  """How many frames `contrastive_loss` scores."""
  return jnp.sum(_contrastive_scored(masked)).astype(jnp.float32)


def contrastive_loss(
    rng: jax.Array,
    context: jax.Array,
    targets: jax.Array,
    masked: jax.Array,
    *,
    num_negatives: int = 100,
    temperature: float = 0.1,
    target_codes: Optional[jax.Array] = None,
    denominator: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
  """wav2vec 2.0 / w2v-BERT InfoNCE of context vectors against quantized targets.

  For each masked frame, the candidates are its own target and `num_negatives` targets of other
  masked frames of the same utterance; logits are cosine similarities / temperature. Negatives
  that carry the very same code as the positive (`target_codes` [B, T] or [B, T, G]) are dropped,
  as fairseq does, since they are indistinguishable from it.

  Args:
    rng: PRNG key for sampling the distractors.
    context: [B, T, D] projected encoder outputs.
    targets: [B, T, D] projected quantized vectors.
    masked: bool [B, T], the masked (scored) frames.
    num_negatives: distractors per frame (K).
    temperature: logit temperature.
    target_codes: optional code ids of the targets.
    denominator: the frames scored over the whole batch (module docstring); default: these.

  Returns:
    (loss, accuracy): mean -log p(positive) over scored frames, and the share of frames whose
    positive has the highest logit.
  """
  masked = masked.astype(bool)
  # Similarities of every frame to every target of its utterance: [B, T, T]; far smaller than
  # gathering K target vectors per frame ([B, T, K, D]).
  sim = jnp.einsum("btd,bsd->bts", _l2_normalize(context), _l2_normalize(targets)) / temperature
  positive = jnp.diagonal(sim, axis1=1, axis2=2)  # [B, T]
  neg_idx = sample_negative_indices(rng, masked, num_negatives)
  negative = jnp.take_along_axis(sim, neg_idx, axis=2)  # [B, T, K]
  if target_codes is not None:
    codes = target_codes if target_codes.ndim == 3 else target_codes[..., None]
    neg_codes = jax.vmap(lambda c, i: c[i])(codes, neg_idx)  # [B, T, K, G]
    same = jnp.all(neg_codes == codes[:, :, None, :], axis=-1)
    negative = jnp.where(same, _NEG_INF, negative)
  logits = jnp.concatenate([positive[..., None], negative], axis=-1)
  nll = jax.nn.logsumexp(logits, axis=-1) - positive
  scored = _contrastive_scored(masked)
  correct = positive >= jnp.max(negative, axis=-1)
  return _safe_mean(nll, scored, denominator), _safe_mean(correct, scored, denominator)


def codebook_perplexity(probs: jax.Array, mask: jax.Array) -> jax.Array:
  """Perplexity of the batch-averaged code distribution, summed over groups.

  Args:
    probs: [B, T, G, V] per-frame code probabilities (softmax of the logits, no Gumbel noise).
    mask: [B, T] valid frames.
  """
  weights = mask.astype(jnp.float32)[..., None, None]
  avg = _divide(jnp.sum(probs.astype(jnp.float32) * weights, axis=(0, 1)), jnp.sum(weights))
  entropy = -jnp.sum(avg * jnp.log(avg + 1e-7), axis=-1)  # [G]
  return jnp.sum(jnp.exp(entropy))


def diversity_loss(probs: jax.Array, mask: jax.Array) -> jax.Array:
  """wav2vec 2.0 diversity loss: (G*V - perplexity) / (G*V); 0 when every entry is used evenly."""
  num_groups, num_entries = probs.shape[-2:]
  total = num_groups * num_entries
  return (total - codebook_perplexity(probs, mask)) / total


def codebook_usage(codes: jax.Array, mask: jax.Array, num_entries: int) -> jax.Array:
  """Share of codebook entries chosen by at least one valid frame (mean over groups).

  Args:
    codes: int [B, T] or [B, T, G] chosen entries.
    mask: [B, T] valid frames.
    num_entries: entries per group (V).
  """
  codes = codes if codes.ndim == 3 else codes[..., None]
  hits = jax.nn.one_hot(codes, num_entries, dtype=jnp.float32) * mask.astype(jnp.float32)[..., None, None]
  used = jnp.sum(hits, axis=(0, 1)) > 0  # [G, V]
  return jnp.mean(used.astype(jnp.float32))


def _target_weights(targets: jax.Array, weights: jax.Array) -> jax.Array:
  """[B, T] weights broadcast over the targets' groups ([B, T, G])."""
  return jnp.broadcast_to(weights.reshape(weights.shape + (1,) * (targets.ndim - weights.ndim)), targets.shape)


def masked_count(targets: jax.Array, weights: jax.Array) -> jax.Array:
  """How many targets `masked_cross_entropy` scores."""
  return jnp.sum(_target_weights(targets, weights).astype(jnp.float32))


def masked_cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, denominator: Optional[jax.Array] = None
) -> tuple[jax.Array, jax.Array]:
  """Cross-entropy and accuracy of integer targets on the weighted (masked) positions.

  Serves the masked prediction of codebook ids (logits [B, T, (G,) V]) and span-masked LM over the
  character vocabulary alike. `denominator`: the targets scored over the whole batch (module
  docstring); default: these.
  """
  logits = logits.astype(jnp.float32)
  # The target's logit by a one-hot select, not a gather (optax's integer-label cross-entropy): the
  # gather's gradient is a scatter-add (with the token lookup's, 8 % of the 600m step on an H200),
  # where the select's fuses with the softmax's.
  target_logit = jnp.sum(jnp.where(targets[..., None] == jnp.arange(logits.shape[-1]), logits, 0.0), axis=-1)
  nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
  # The target's logit is the largest (a tie counts as correct): one max reduction, which the
  # softmax's own shares, where argmax costs a slow variadic reduce on CPU.
  correct = target_logit >= jnp.max(logits, axis=-1)
  weights = _target_weights(targets, weights)
  return _safe_mean(nll, weights, denominator), _safe_mean(correct, weights, denominator)


def ctc_feasible(logit_mask: jax.Array, labels: jax.Array, label_mask: jax.Array) -> jax.Array:
  """Whether each utterance has frames enough for its transcript (labels + repeated neighbours)."""
  label_mask = label_mask.astype(bool)
  repeats = (labels[:, 1:] == labels[:, :-1]) & label_mask[:, 1:] & label_mask[:, :-1]
  needed = label_mask.sum(axis=-1) + repeats.sum(axis=-1)
  return (logit_mask.astype(bool).sum(axis=-1) >= needed) & (label_mask.sum(axis=-1) > 0)


def ctc_count(logit_mask: jax.Array, labels: jax.Array, label_mask: jax.Array) -> jax.Array:
  """How many label tokens `ctc_loss` scores (those of the feasible utterances)."""
  feasible = ctc_feasible(logit_mask, labels, label_mask)
  return jnp.sum(jnp.where(feasible, label_mask.sum(axis=-1), 0)).astype(jnp.float32)


def ctc_loss(
    logits: jax.Array,
    logit_mask: jax.Array,
    labels: jax.Array,
    label_mask: jax.Array,
    *,
    blank_id: int = BLANK_ID,
    denominator: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
  """CTC (optax) normalized per label token, over the utterances that can be aligned at all.

  An utterance with more label tokens than frames would put optax's log(0) stand-in (1e5) into
  the loss; it is dropped instead and counted. `denominator`: the label tokens scored over the
  whole batch (module docstring); default: these.

  Returns:
    (loss, num_infeasible): sum of -log p(labels) over feasible utterances divided by their number
    of label tokens, and how many utterances were dropped.
  """
  per_seq = optax.ctc_loss(
      logits.astype(jnp.float32),
      1.0 - logit_mask.astype(jnp.float32),
      labels,
      1.0 - label_mask.astype(jnp.float32),
      blank_id=blank_id,
  )
  feasible = ctc_feasible(logit_mask, labels, label_mask)
  if denominator is None:
    denominator = ctc_count(logit_mask, labels, label_mask)
  loss = _divide(jnp.sum(jnp.where(feasible, per_seq, 0.0)), denominator)
  num_infeasible = jnp.sum((~feasible) & (label_mask.sum(axis=-1) > 0)).astype(jnp.float32)
  return loss, num_infeasible


def frame_mse(prediction: jax.Array, target: jax.Array, weights: jax.Array,
              denominator: Optional[jax.Array] = None) -> jax.Array:
  """Mean over the weighted frames of the per-frame mean squared difference ([B, T, D], [B, T])."""
  per_frame = jnp.mean(jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
  return _safe_mean(per_frame, weights, denominator)


def clipped_temperature(log_temperature: jax.Array, min_temperature: float, max_temperature: float) -> jax.Array:
  """exp of a log-parameterized temperature, clipped to [min, max] (CLIP clamps its scale alike)."""
  return jnp.exp(jnp.clip(log_temperature.astype(jnp.float32), jnp.log(min_temperature), jnp.log(max_temperature)))


def symmetric_infonce(
    a: jax.Array, b: jax.Array, valid: jax.Array, temperature: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """CLIP-style symmetric InfoNCE between paired embeddings a[i] <-> b[i] ([B, D] each).

  Invalid items (padding rows of the sub-batch) are neither queries nor candidates.

  Returns:
    (loss, accuracy): mean of the a->b and b->a cross-entropies, and the mean top-1 retrieval
    accuracy of both directions.
  """
  valid = valid.astype(bool)
  logits = jnp.einsum("id,jd->ij", _l2_normalize(a), _l2_normalize(b)) / temperature
  pair = valid[:, None] & valid[None, :]
  logits = jnp.where(pair, logits, _NEG_INF)
  labels = jnp.arange(a.shape[0])
  a_to_b = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  b_to_a = optax.softmax_cross_entropy_with_integer_labels(logits.T, labels)
  acc_ab = jnp.argmax(logits, axis=-1) == labels
  acc_ba = jnp.argmax(logits, axis=0) == labels
  loss = 0.5 * (_safe_mean(a_to_b, valid) + _safe_mean(b_to_a, valid))
  accuracy = 0.5 * (_safe_mean(acc_ab, valid) + _safe_mean(acc_ba, valid))
  return loss, accuracy
