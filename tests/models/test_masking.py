"""Masking: measured rates and span lengths match the settings; padding is never masked."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mslam_jax.models import masking

# One compile per shape and setting rather than one per primitive (eager mode).
start_prob_span_mask = jax.jit(masking.start_prob_span_mask, static_argnums=(2, 3, 4))
rate_span_mask = jax.jit(masking.rate_span_mask, static_argnums=(2, 3, 4))


def _lengths_mask(lengths, max_len):
  return jnp.arange(max_len)[None, :] < jnp.asarray(lengths)[:, None]


def _runs(row):
  """(start, length) of each run of True in a 1-D bool array."""
  row = np.concatenate([[False], np.asarray(row), [False]]).astype(int)
  edges = np.flatnonzero(np.diff(row))
  return list(zip(edges[::2], edges[1::2] - edges[::2]))


def _expected_start_prob_share(length, p, span):
  """Exact expected masked share of start_prob_span_mask (starts in [0, n - span], no min span)."""
  last_start = max(length - span, 0)
  probs = []
  for t in range(length):
    starts_covering = max(0, min(t, last_start) - max(0, t - span + 1) + 1)
    probs.append(1.0 - (1.0 - p) ** starts_covering)
  return float(np.mean(probs))


def test_speech_span_mask_rate_matches_start_probability():
  lengths = np.array([400, 300, 250, 350] * 64)
  mask = _lengths_mask(lengths, 400)
  sampled = start_prob_span_mask(jax.random.key(0), mask, 0.065, 10, 0)
  sampled = np.asarray(sampled)
  assert not sampled[~np.asarray(mask)].any()
  measured = sampled.sum() / lengths.sum()
  expected = np.sum([_expected_start_prob_share(n, 0.065, 10) * n for n in lengths]) / lengths.sum()
  # 256 utterances x ~325 frames: the standard error of the share is well under 0.005.
  assert abs(measured - expected) < 0.01, (measured, expected)
  # Away from the edges the share is 1 - (1 - p)^span, the w2v-BERT figure (~0.49).
  assert abs(sampled[:, 50:240].mean() - (1 - (1 - 0.065) ** 10)) < 0.015


def test_speech_spans_are_span_length_long():
  mask = _lengths_mask([1000] * 32, 1000)
  sampled = np.asarray(start_prob_span_mask(jax.random.key(1), mask, 0.004, 10, 0))
  runs = [length for row in sampled for _, length in _runs(row)]
  assert len(runs) > 50
  assert min(runs) == 10  # no span is cut short
  lengths, counts = np.unique(runs, return_counts=True)
  assert lengths[np.argmax(counts)] == 10  # with rare starts, isolated spans dominate
  assert max(runs) < 40


def test_speech_mask_min_spans_and_short_utterances():
  lengths = [200, 4, 0]
  mask = _lengths_mask(lengths, 200)
  sampled = np.asarray(start_prob_span_mask(jax.random.key(2), mask, 1e-6, 10, 1))
  assert sampled[0].sum() == 10
  assert sampled[1].sum() == 4 and sampled[1, :4].all()  # shorter than a span: all of it
  assert sampled[2].sum() == 0


@pytest.mark.parametrize("rate,span", [(0.15, 20), (0.75, 10)])
def test_rate_span_mask_rate_and_span_lengths(rate, span):
  lengths = np.array([2000, 1500, 1800, 1234] * 8)
  mask = _lengths_mask(lengths, 2000)
  sampled = np.asarray(rate_span_mask(jax.random.key(3), mask, rate, span, 1))
  assert not sampled[~np.asarray(mask)].any()
  shares = sampled.sum(axis=1) / lengths
  # Exact budget up to the two partial spans at the ends of each row.
  assert np.all(np.abs(shares - rate) <= 2 * span / lengths + 1e-6), shares
  assert abs(shares.mean() - rate) < 0.01
  for row, n in zip(sampled, lengths):
    for start, length in _runs(row):
      if start > 0 and start + length < n:  # interior runs are whole spans (possibly adjacent)
        assert length % span == 0, (start, length)


def test_rate_span_mask_masks_something_in_short_rows():
  mask = _lengths_mask([3, 30, 0], 30)
  sampled = np.asarray(rate_span_mask(jax.random.key(4), mask, 0.15, 20, 1))
  assert sampled[0].sum() >= 1 and sampled[1].sum() >= 1 and sampled[2].sum() == 0


def test_apply_masks():
  tokens = jnp.array([[5, 6, 7, 0]])
  token_mask = jnp.array([[False, True, False, False]])
  np.testing.assert_array_equal(masking.apply_token_mask(tokens, token_mask, 3), [[5, 3, 7, 0]])
  frames = jnp.ones((1, 3, 2))
  out = masking.apply_frame_mask(frames, jnp.array([[True, False, True]]), jnp.array([7.0, 8.0]))
  np.testing.assert_array_equal(out[0], [[7, 8], [1, 1], [7, 8]])


def test_masking_config_validate_names_binding():
  with pytest.raises(ValueError, match="MaskingConfig.text_span_length"):
    masking.MaskingConfig(text_span_length=0).validate()
  with pytest.raises(ValueError, match="MaskingConfig.tlm_speech_rate"):
    masking.MaskingConfig(tlm_speech_rate=1.5).validate()
  masking.MaskingConfig().validate()
