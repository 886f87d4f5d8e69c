"""Self-attention: relative-key clipping against a direct reference, masks, finite padded rows."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mslam_jax.layers import attention
from tests import layer_inputs

DIM, HEADS, LENGTH = 16, 2, 9


random_variables = layer_inputs.random_variables


def test_relative_key_indices_clip_left_and_right():
  indices = np.asarray(attention.relative_key_indices(6, 6, left_max=2, right_max=1))
  for q in range(6):
    for k in range(6):
      # Table row 0 is distance -left_max (keys far in the past), the last row +right_max.
      assert indices[q, k] == min(max(k - q, -2), 1) + 2
  assert indices.min() == 0 and indices.max() == 3


def _reference_relative_key(params, x, mask, left, right):
  """HF Wav2Vec2BertSelfAttention (relative_key) written directly with an [L, L, D] table."""
  p = jax.tree_util.tree_map(np.asarray, params)
  proj = lambda n: np.einsum("bld,dhk->blhk", x, p[f"{n}_kernel"]) + p[f"{n}_bias"]
  q, k, v = proj("query"), proj("key"), proj("value")
  head_dim = q.shape[-1]
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
  length = x.shape[1]
  distance = np.clip(np.arange(length)[None, :] - np.arange(length)[:, None], -left, right)
  table = p["relative_key_embedding"][distance + left]  # [Lq, Lk, D]
  scores = scores + np.einsum("bqhd,qkd->bhqk", q, table) / math.sqrt(head_dim)
  scores = np.where(mask[:, None, None, :] != 0, scores, -1e30)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", probs, v)
  return np.einsum("bqhd,hdo->bqo", out, p["out_kernel"]) + p["out_bias"]


def test_relative_key_matches_direct_reference_with_clipping():
  # Clipping distances well below the length, and asymmetric, so that clipping matters.
  layer = attention.MultiHeadSelfAttention(HEADS, position_type="relative_key", left_max_position=3,
                                           right_max_position=1)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, LENGTH, DIM))
  mask = jnp.array([[1] * LENGTH, [1] * 6 + [0] * 3])
  params = random_variables(layer, x, mask)["params"]
  # Large table entries, so that the relative term dominates and a wrong index shows.
  params["relative_key_embedding"] = params["relative_key_embedding"] * 10
  out = jax.jit(layer.apply)({"params": params}, x, mask)
  expected = _reference_relative_key(params, np.asarray(x), np.asarray(mask), 3, 1)
  np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=1e-5)


def test_skew_and_gather_relative_logits_agree():
  rng = np.random.default_rng(0)
  table = rng.standard_normal((3 + 2 + 1, 4)).astype(np.float32)
  for length in (1, 7):
    query = rng.standard_normal((2, HEADS, length, 4)).astype(np.float32)
    indices = np.asarray(attention.relative_key_indices(length, length, 3, 2))
    direct = np.einsum("bhqd,qkd->bhqk", query, table[indices])
    np.testing.assert_allclose(attention.relative_key_logits_gather(query, table, 3, 2), direct, atol=1e-5)
    np.testing.assert_allclose(attention.relative_key_logits_skew(query, table, 3, 2), direct, atol=1e-5)


@pytest.mark.parametrize("length,left,right", [(7, 3, 2), (5, 8, 8), (1, 2, 2), (6, 0, 0), (6, 0, 3), (6, 2, 0)])
def test_relative_key_gradient_equals_the_direct_tables(length, left, right):
  # The gather's backward pass is written by hand (no scatter): it must equal the gradient of the
  # direct [L, L, D] table, clipped ends included, for the query and the table alike.
  rng = np.random.default_rng(1)
  query = jnp.asarray(rng.standard_normal((2, HEADS, length, 4)), jnp.float32)
  table = jnp.asarray(rng.standard_normal((left + right + 1, 4)), jnp.float32)
  weights = jnp.asarray(rng.standard_normal((2, HEADS, length, length)), jnp.float32)
  indices = attention.relative_key_indices(length, length, left, right)
  direct = lambda q, t: jnp.sum(jnp.einsum("bhqd,qkd->bhqk", q, t[indices]) * weights)
  gathered = lambda q, t: jnp.sum(attention.relative_key_logits_gather(q, t, left, right) * weights)
  for want, got in zip(jax.grad(direct, (0, 1))(query, table), jax.grad(gathered, (0, 1))(query, table)):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position_type", attention.POSITION_TYPES)
def test_padding_keys_never_attended_and_padded_rows_finite(position_type):
  layer = attention.MultiHeadSelfAttention(HEADS, position_type=position_type, left_max_position=4,
                                           right_max_position=4)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, LENGTH, DIM))
  mask = jnp.array([[1] * LENGTH, [1] * 5 + [0] * 4, [0] * LENGTH])  # last row: nothing valid
  variables = random_variables(layer, x, mask)
  apply = jax.jit(layer.apply)
  out = apply(variables, x, mask)
  garbage = jnp.where(mask[..., None] != 0, x, 1e3 * jax.random.normal(jax.random.PRNGKey(2), x.shape))
  out_garbage = apply(variables, garbage, mask)
  assert np.all(np.isfinite(np.asarray(out_garbage)))
  np.testing.assert_allclose(out[:2, :5], out_garbage[:2, :5], atol=1e-5)
  np.testing.assert_allclose(out[0], out_garbage[0], atol=1e-5)
