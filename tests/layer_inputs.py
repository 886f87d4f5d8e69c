"""Inputs shared by the layer and model tests: random variables and padded noise batches."""
from flax.core import meta
import jax
import jax.numpy as jnp
import numpy as np


def random_variables(module, *args, seed=0, scale=0.3):
  """Variables of the right structure filled from numpy (jitted init compiles slowly on CPU)."""
  abstract = meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *args))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), abstract)


def padded_noise(lengths, samples, seed=0):
  """A [len(lengths), samples] batch of noise clips of the given lengths, zero-padded, and its mask."""
  rng = np.random.default_rng(seed)
  audio = np.zeros((len(lengths), samples), np.float32)
  for i, n in enumerate(lengths):
    audio[i, :n] = 0.3 * rng.standard_normal(n)
  mask = (np.arange(samples)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  return jnp.asarray(audio), jnp.asarray(mask)
