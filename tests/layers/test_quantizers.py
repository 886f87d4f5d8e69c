"""Quantizers: shapes, diversity loss bounds, straight-through gradients, BEST-RQ frozen and exact."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mslam_jax.layers import quantizers
from tests import layer_inputs

GROUPS, ENTRIES, DIM = 2, 8, 12


def random_variables(module, *args, seed=0):
  return layer_inputs.random_variables(module, *args, seed=seed, scale=1.0)


def _features(batch=3, length=10):
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, length, DIM))
  mask = (jnp.arange(length)[None] < jnp.array([[10], [6], [3]])[:batch]).astype(jnp.int32)
  return x, mask


def test_gumbel_shapes_and_straight_through_gradient():
  q = quantizers.GumbelVectorQuantizer(num_groups=GROUPS, num_entries=ENTRIES, codevector_dim=16)
  x, mask = _features()
  variables = random_variables(q, x, mask)
  rngs = {"dropout": jax.random.PRNGKey(5)}

  def loss(params):
    out = q.apply({"params": params}, x, mask, 0.5, False, rngs=rngs)
    return jnp.sum(out.quantized ** 2) + out.diversity_loss, out

  grads, out = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
  assert out.quantized.shape == (3, 10, 16)
  assert out.ids.shape == (3, 10, GROUPS) and out.ids.dtype == jnp.int32
  assert 0 <= int(out.ids.min()) and int(out.ids.max()) < ENTRIES
  # Straight-through: the quantized vectors equal the selected entries, yet the logits get gradient.
  codebook = np.asarray(variables["params"]["codebook"])
  expected = np.concatenate([codebook[g][np.asarray(out.ids[..., g])] for g in range(GROUPS)], -1)
  np.testing.assert_allclose(out.quantized, expected, atol=1e-5)
  assert np.abs(np.asarray(grads["logits"]["kernel"])).sum() > 0
  assert 0 < float(out.usage) <= 1 and 1 <= float(out.code_perplexity) <= GROUPS * ENTRIES


def test_gumbel_diversity_loss_zero_for_uniform_and_near_one_for_collapse():
  q = quantizers.GumbelVectorQuantizer(num_groups=GROUPS, num_entries=ENTRIES, codevector_dim=16)
  x, mask = _features()
  params = random_variables(q, x, mask)["params"]
  apply = jax.jit(lambda p: q.apply({"params": p}, x, mask))
  uniform = dict(params, logits={"kernel": jnp.zeros_like(params["logits"]["kernel"]),
                                 "bias": jnp.zeros_like(params["logits"]["bias"])})
  out = apply(uniform)
  np.testing.assert_allclose(out.diversity_loss, 0.0, atol=1e-5)
  np.testing.assert_allclose(out.perplexity, GROUPS * ENTRIES, rtol=1e-5)
  collapsed_bias = np.zeros(GROUPS * ENTRIES, np.float32)
  collapsed_bias[::ENTRIES] = 100.0  # entry 0 of every group wins everywhere
  out = apply(dict(uniform, logits={"kernel": uniform["logits"]["kernel"], "bias": jnp.asarray(collapsed_bias)}))
  np.testing.assert_allclose(out.perplexity, GROUPS, rtol=1e-3)
  np.testing.assert_allclose(out.diversity_loss, 1 - 1 / ENTRIES, rtol=1e-3)
  np.testing.assert_allclose(out.usage, 1 / ENTRIES)
  assert np.all(np.asarray(out.ids) == 0)


def test_gumbel_temperature_anneals_to_floor():
  assert float(quantizers.gumbel_temperature(0)) == pytest.approx(2.0)
  assert float(quantizers.gumbel_temperature(100_000)) == pytest.approx(2.0 * 0.999995 ** 100_000, rel=1e-5)
  assert float(quantizers.gumbel_temperature(10_000_000)) == pytest.approx(0.5)


def test_best_rq_is_frozen_deterministic_and_nearest_neighbour():
  q = quantizers.RandomProjectionQuantizer(num_groups=GROUPS, num_entries=ENTRIES, entry_dim=4)
  x, mask = _features()
  params = random_variables(q, x, mask)["params"]
  assert set(params) == {"frozen_projection", "frozen_codebook"}
  assert not any(jax.tree_util.tree_leaves(quantizers.trainable_mask({"q": params, "w": 1.0})["q"]))
  assert quantizers.trainable_mask({"q": params, "w": 1.0})["w"]

  def loss(params, x):
    out = q.apply({"params": params}, x, mask, None, False)
    return jnp.sum(out.quantized * jnp.arange(out.quantized.shape[-1])), out

  (grads, grad_x), out = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, x)
  for g in jax.tree_util.tree_leaves(grads) + [grad_x]:
    assert np.all(np.asarray(g) == 0)
  again = jax.jit(lambda p, x: q.apply({"params": p}, x, mask, None, True))(params, x)
  np.testing.assert_array_equal(out.ids, again.ids)
  assert float(out.diversity_loss) == 0.0
  # Nearest neighbour of the l2-normalized projection of the normalized input, in numpy.
  xn = np.asarray(x, np.float64)
  xn = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-5)
  proj = np.einsum("btd,dge->btge", xn, np.asarray(params["frozen_projection"], np.float64))
  proj /= np.linalg.norm(proj, axis=-1, keepdims=True)
  book = np.asarray(params["frozen_codebook"], np.float64)
  book /= np.linalg.norm(book, axis=-1, keepdims=True)
  dist = ((proj[:, :, :, None, :] - book[None, None]) ** 2).sum(-1)
  np.testing.assert_array_equal(out.ids, dist.argmin(-1))
  assert out.quantized.shape == (3, 10, GROUPS * 4)


def test_gumbel_targets_are_a_function_of_the_input_at_init():
  """Two Gumbel draws of the same layer-normed frames pick the same code far above chance, and
  different frames pick different codes: the targets carry information from step 0. (At
  lecun-normal scale the logits are O(1), the noise wins, and draws agree a few % of the time.)"""
  entries, dim = 64, 160
  frames = jax.random.normal(jax.random.PRNGKey(1), (4, 50, dim))
  frames = (frames - frames.mean(-1, keepdims=True)) / frames.std(-1, keepdims=True)  # layer-normed
  mask = jnp.ones((4, 50), jnp.int32)
  q = quantizers.GumbelVectorQuantizer(num_groups=1, num_entries=entries, codevector_dim=32)
  variables = q.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, frames, mask, 2.0, False)
  draw = lambda seed: q.apply(variables, frames, mask, 2.0, False, rngs={"dropout": jax.random.PRNGKey(seed)}).ids
  agreement = float(jnp.mean(draw(2) == draw(3)))
  assert agreement > 0.6, agreement  # chance is ~1/64
  out = q.apply(variables, frames, mask, 2.0, True)
  assert float(out.code_perplexity) > entries / 4  # the frames spread over the codebook


def test_utterance_norm_spreads_frames_that_share_an_offset_and_ignores_padding():
  """Frames of one utterance that share a large offset (a speaker, a channel) mostly pick the few
  codes the offset favours; standardized per utterance they spread over the codebook again, the
  draws stay input-determined, and padding frames change nothing."""
  entries, dim = 64, 160
  key1, key2, key3 = jax.random.split(jax.random.PRNGKey(1), 3)
  offsets = 4.0 * jax.random.normal(key1, (4, 1, dim))
  frames = offsets + jax.random.normal(key2, (4, 50, dim))
  frames = (frames - frames.mean(-1, keepdims=True)) / frames.std(-1, keepdims=True)  # layer-normed
  mask = jnp.ones((4, 50), jnp.int32)
  plain = quantizers.GumbelVectorQuantizer(num_groups=1, num_entries=entries, codevector_dim=32)
  normed = quantizers.GumbelVectorQuantizer(num_groups=1, num_entries=entries, codevector_dim=32, utterance_norm=True)
  variables = plain.init({"params": jax.random.PRNGKey(0)}, frames, mask, 2.0, True)  # the same parameters
  spread = lambda q: float(q.apply(variables, frames, mask, 2.0, True).code_perplexity)
  assert spread(normed) > 2 * spread(plain) and spread(normed) > entries / 4, (spread(plain), spread(normed))
  draw = lambda seed: normed.apply(variables, frames, mask, 2.0, False, rngs={"dropout": jax.random.PRNGKey(seed)}).ids
  assert float(jnp.mean(draw(2) == draw(3))) > 0.6
  # Twenty padding frames of noise after each utterance: the valid frames' codes do not move.
  padded = jnp.concatenate([frames, 100.0 * jax.random.normal(key3, (4, 20, dim))], axis=1)
  padded_mask = jnp.concatenate([mask, jnp.zeros((4, 20), jnp.int32)], axis=1)
  ids = normed.apply(variables, padded, padded_mask, 2.0, True).ids[:, :50]
  np.testing.assert_array_equal(ids, normed.apply(variables, frames, mask, 2.0, True).ids)


def test_first_argmax_is_argmax_with_its_tie_rule():
  x = jax.random.normal(jax.random.key(0), (3, 5, 2, 64))
  np.testing.assert_array_equal(quantizers.first_argmax(x), jnp.argmax(x, axis=-1))
  ties = jnp.array([[0.0, 2.0, 2.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
  np.testing.assert_array_equal(quantizers.first_argmax(ties), [1, 0])
  assert quantizers.first_argmax(ties).dtype == jnp.int32
  assert 0 <= int(quantizers.first_argmax(jnp.array([1.0, jnp.nan, 0.0]))) < 3  # a NaN row stays in range
