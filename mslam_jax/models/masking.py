"""Span masking for speech frames and text tokens: pure JAX, jit-able, padding-aware.

Two samplers cover every masking scheme of mSLAM:
- `start_prob_span_mask`: w2v-BERT / wav2vec 2.0 speech masking. Every valid frame starts a span
  with probability `start_prob`; spans of `span_length` frames may overlap, so the masked share is
  about 1 - (1 - start_prob) ** span_length (about 49 % for 0.065 and 10 frames).
- `rate_span_mask`: SpanBERT-style masking with an exact budget: the sequence is cut into spans of
  `span_length` at a random offset and round(rate * length / span_length) spans are masked. Used
  for text span-masked LM (mSLAM: spans of 20 characters) and for TLM (SLAM: ~75 % of frames,
  50 % of characters).
Masks returned are bool [B, T], never True on padding.
"""
import dataclasses

import gin
import jax
import jax.numpy as jnp


def _span_dilate(starts: jax.Array, span_length: int) -> jax.Array:
  """Marks t if any start lies in [t - span_length + 1, t] (a sliding OR via a cumulative sum)."""
  counts = jnp.cumsum(starts.astype(jnp.int32), axis=-1)
  shifted = jnp.pad(counts, ((0, 0), (span_length, 0)))[:, : counts.shape[1]]
  return (counts - shifted) > 0


def start_prob_span_mask(
    rng: jax.Array, mask: jax.Array, start_prob: float, span_length: int, min_spans: int = 1
) -> jax.Array:
  """w2v-BERT span masking: Bernoulli span starts over valid frames, overlapping spans.

  Starts are drawn only where a whole span fits inside the valid frames (as fairseq does), so
  every span is `span_length` long. With `min_spans` >= 1, an utterance that drew no start gets
  one at a uniformly chosen position, so every utterance has masked frames to predict (unless it
  is shorter than one span, in which case its first span covers what there is).
  """
  if span_length < 1:
    raise ValueError(f"span_length must be >= 1, got {span_length}")
  mask = mask.astype(bool)
  batch, length = mask.shape
  lengths = mask.sum(axis=-1)
  positions = jnp.arange(length)[None, :]
  # Utterances shorter than one span may start only at 0.
  eligible = positions <= jnp.maximum(lengths - span_length, 0)[:, None]
  eligible &= mask
  start_rng, forced_rng = jax.random.split(rng)
  starts = jax.random.bernoulli(start_rng, start_prob, (batch, length)) & eligible
  if min_spans > 0:
    need = (starts.sum(axis=-1) < min_spans) & (lengths > 0)
    scores = jnp.where(eligible, jax.random.uniform(forced_rng, (batch, length)), -1.0)
    forced = jax.nn.one_hot(jnp.argmax(scores, axis=-1), length, dtype=bool)
    starts |= forced & need[:, None]
  return _span_dilate(starts, span_length) & mask


def rate_span_mask(
    rng: jax.Array, mask: jax.Array, rate: float, span_length: int, min_spans: int = 1
) -> jax.Array:
  """SpanBERT-style masking with an exact budget of contiguous, non-overlapping spans.

  Each row is cut into spans of `span_length` at a random offset; round(rate * n / span_length)
  spans (n = the row's valid length; at least `min_spans` when n > 0) are chosen uniformly among
  the spans that hold valid positions. The masked share is `rate` up to the partial spans at the
  row's ends.
  """
  if span_length < 1:
    raise ValueError(f"span_length must be >= 1, got {span_length}")
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"rate must be in [0, 1], got {rate}")
  mask = mask.astype(bool)
  batch, length = mask.shape
  num_chunks = (length + span_length - 1) // span_length + 1
  offset_rng, score_rng = jax.random.split(rng)
  offsets = jax.random.randint(offset_rng, (batch, 1), 0, span_length)
  chunk_of = (jnp.arange(length)[None, :] + offsets) // span_length  # [B, T]
  chunk_one_hot = jax.nn.one_hot(chunk_of, num_chunks, dtype=jnp.int32)  # [B, T, C]
  valid_in_chunk = jnp.einsum("bt,btc->bc", mask.astype(jnp.int32), chunk_one_hot)
  chunk_valid = valid_in_chunk > 0
  lengths = mask.sum(axis=-1)
  budget = jnp.round(rate * lengths / span_length).astype(jnp.int32)
  budget = jnp.where(lengths > 0, jnp.maximum(budget, min_spans), 0)
  budget = jnp.minimum(budget, chunk_valid.sum(axis=-1))
  scores = jnp.where(chunk_valid, jax.random.uniform(score_rng, (batch, num_chunks)), 2.0)
  ranks = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  chunk_masked = ranks < budget[:, None]
  return jnp.take_along_axis(chunk_masked, chunk_of, axis=-1) & mask


def apply_token_mask(tokens: jax.Array, token_mask: jax.Array, mask_id: int) -> jax.Array:
  """Replaces masked tokens by `mask_id` (always; no 80/10/10 split: characters gain little)."""
  return jnp.where(token_mask, mask_id, tokens)


def apply_frame_mask(frames: jax.Array, frame_mask: jax.Array, mask_embedding: jax.Array) -> jax.Array:
  """Replaces masked frames [B, T, D] by a (learned) embedding [D]."""
  return jnp.where(frame_mask[..., None], mask_embedding.astype(frames.dtype), frames)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  """Every masking rate and span length of the three streams (PAPER.md's figures by default).

  Attributes:
    speech_start_prob: w2v-BERT span start probability on unpaired speech.
    speech_span_length: w2v-BERT span length in (subsampled) frames.
    text_rate: share of characters masked for span-masked LM (SpanBERT's 15 %; unconfirmed).
    text_span_length: text span length (mSLAM: 20 characters).
    tlm_speech_rate: share of paired-speech frames masked for TLM (SLAM: ~75 %).
    tlm_speech_span_length: TLM frame span length.
    tlm_text_rate: share of transcript characters masked for TLM (SLAM: 50 %).
    tlm_text_span_length: TLM character span length.
    text_ctc_rate: share of characters masked in the text CTC objective's input (spans of
      text_span_length, a draw of its own); None: the text MLM's masked characters are reused.
    min_spans: every non-empty sequence gets at least this many spans.
  """
  speech_start_prob: float = 0.065
  speech_span_length: int = 10
  text_rate: float = 0.15
  text_span_length: int = 20
  tlm_speech_rate: float = 0.75
  tlm_speech_span_length: int = 10
  tlm_text_rate: float = 0.5
  tlm_text_span_length: int = 5
  text_ctc_rate: float | None = None
  min_spans: int = 1

  def validate(self) -> None:
    """Rejects impossible settings, naming the gin binding to fix."""
    for name in ("speech_start_prob", "text_rate", "tlm_speech_rate", "tlm_text_rate"):
      value = getattr(self, name)
      if not 0.0 < value <= 1.0:
        raise ValueError(f"MaskingConfig.{name} must be in (0, 1], got {value}")
    if self.text_ctc_rate is not None and not 0.0 < self.text_ctc_rate < 1.0:
      raise ValueError(f"MaskingConfig.text_ctc_rate must be in (0, 1) (None: text_rate's mask), got {self.text_ctc_rate}")
    for name in ("speech_span_length", "text_span_length", "tlm_speech_span_length", "tlm_text_span_length"):
      value = getattr(self, name)
      if value < 1:
        raise ValueError(f"MaskingConfig.{name} must be >= 1, got {value}")
    if self.min_spans < 0:
      raise ValueError(f"MaskingConfig.min_spans must be >= 0, got {self.min_spans}")
