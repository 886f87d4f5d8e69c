"""Text input: token embedding + sinusoidal positions + layer norm + dropout."""
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from mslam_jax.layers import attention

Array = jax.Array
DType = Any


def sinusoidal_positions(length: int, dim: int, max_timescale: float = 10000.0) -> Array:
  """Transformer sinusoids [length, dim]: sin on the first half of the dims, cos on the second."""
  half = dim // 2
  inv_timescales = np.exp(-np.log(max_timescale) * np.arange(half) / max(half - 1, 1))
  angles = np.arange(length)[:, None] * inv_timescales[None, :]
  table = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
  if dim % 2:
    table = np.pad(table, ((0, 0), (0, 1)))
  return jnp.asarray(table, jnp.float32)


@gin.configurable
class TextEmbedding(nn.Module):
  """Tokens [B, L] -> [B, L, D]; padded positions are zeroed.

  Embeddings start at unit scale so that tokens and the unit-amplitude sinusoids weigh alike
  before the layer norm.
  """
  vocab_size: int = 4096
  embed_dim: int = 1024
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-5
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  def setup(self):
    # The lookup runs in the parameters' dtype and casts after: the same values, and its gradient is
    # a scatter-add in float32, which GPUs do with native atomics (bfloat16's are compare-and-swap
    # loops).
    self.token_embedding = nn.Embed(
        self.vocab_size, self.embed_dim, dtype=self.param_dtype, param_dtype=self.param_dtype,
        embedding_init=attention.partitioned(nn.initializers.normal(1.0), ("vocab", "embed")))
    self.layer_norm = nn.LayerNorm(
        epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
        use_fast_variance=False, scale_init=attention.partitioned(nn.initializers.ones, ("embed",)),
        bias_init=attention.partitioned(nn.initializers.zeros, ("embed",)))
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(self, tokens: Array, tokens_mask: Array, deterministic: bool = True) -> Array:
    x = self.token_embedding(tokens.astype(jnp.int32)).astype(self.dtype)
    x = x + sinusoidal_positions(tokens.shape[1], self.embed_dim).astype(self.dtype)[None]
    x = self.layer_norm(x)
    x = self.dropout(x, deterministic=deterministic)
    x = jnp.where(tokens_mask[..., None] != 0, x, 0.0)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))

  def attend(self, x: Array) -> Array:
    """[..., D] -> [..., vocab_size]: each vector's dot product with every token's embedding over
    sqrt(D) (a classifier tied to the table, which starts at unit scale per dimension)."""
    table = jnp.asarray(self.token_embedding.embedding, self.dtype)
    return jnp.einsum("...d,vd->...v", x, table) / jnp.sqrt(jnp.asarray(self.embed_dim, self.dtype))
