"""Pooling of variable-length frames: masked means over whole utterances and over ordered stretches."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mslam_jax.layers import pooling
from mslam_jax.models import heads


def test_one_segment_is_the_masked_mean_and_padding_is_ignored():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 4))
  mask = jnp.array([[1] * 9, [1] * 5 + [0] * 4])
  np.testing.assert_allclose(pooling.segment_means(x, mask, 1)[:, 0], pooling.masked_mean(x, mask), rtol=1e-5, atol=1e-6)
  moved = x.at[1, 5:].set(100.0)
  np.testing.assert_allclose(pooling.segment_means(moved, mask, 4), pooling.segment_means(x, mask, 4), rtol=1e-6)


def test_segments_follow_the_order_and_split_long_and_short_rows_alike():
  ramp = lambda n: jnp.linspace(0.0, 1.0, n)[None, :, None]  # pylint: disable=unnecessary-lambda-assignment
  short, long = pooling.segment_means(ramp(12), jnp.ones((1, 12)), 3), pooling.segment_means(ramp(60), jnp.ones((1, 60)), 3)
  # Each stretch holds its share of the row: a clip and a transcript of different lengths agree.
  np.testing.assert_allclose(short, long, atol=0.03)
  assert np.all(np.diff(np.asarray(long)[0, :, 0]) > 0.2)
  # Weights of every place sum to one: a constant row pools to itself in every stretch.
  np.testing.assert_allclose(pooling.segment_means(jnp.full((1, 7, 2), 3.0), jnp.ones((1, 7)), 5), 3.0, rtol=1e-6)


def test_segmented_head_tells_an_order_apart_that_one_mean_cannot():
  frames = jax.random.normal(jax.random.PRNGKey(1), (1, 8, 6))
  backwards, mask = frames[:, ::-1], jnp.ones((1, 8))
  for segments, differs in ((1, False), (4, True)):
    head = heads.EmbeddingHead(features=5, frame_hidden=16, segments=segments)
    params = head.init(jax.random.PRNGKey(2), frames, mask)
    gap = float(jnp.abs(head.apply(params, frames, mask) - head.apply(params, backwards, mask)).max())
    assert (gap > 1e-3) == differs, (segments, gap)
