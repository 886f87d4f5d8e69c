"""Utterance pooling over frames: masked mean, or attention pooling with learned queries."""
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from mslam_jax.layers import attention

Array = jax.Array
DType = Any

POOLING_KINDS = ("mean", "attention")


def masked_mean(x: Array, mask: Array) -> Array:
  """Mean over valid frames: [B, T, D], [B, T] -> [B, D] (zeros for an all-padding row)."""
  valid = (mask != 0)[..., None]
  total = jnp.sum(jnp.where(valid, x.astype(jnp.float32), 0.0), axis=1)
  count = jnp.maximum(jnp.sum(valid, axis=1, dtype=jnp.float32), 1.0)
  return (total / count).astype(x.dtype)


def segment_means(x: Array, mask: Array, segments: int) -> Array:
  """Weighted means over `segments` stretches of each row's valid frames, in order: [B, T, D],
  [B, T] -> [B, segments, D]. A frame's place is its share of the row's valid length, so a
  clip and its transcript split alike however their lengths differ; the weights are hat functions
  over the stretches' centres (neighbours overlap, and every place's weights sum to 1)."""
  valid = (mask != 0).astype(jnp.float32)
  length = jnp.maximum(jnp.sum(valid, axis=1, keepdims=True), 1.0)
  place = (jnp.cumsum(valid, axis=1) - 0.5) / length * segments  # [B, T] in (0, segments)
  # Places before the first centre or past the last belong wholly to that stretch.
  place = jnp.clip(place, 0.5, segments - 0.5)
  centres = jnp.arange(segments, dtype=jnp.float32) + 0.5
  weights = jnp.clip(1.0 - jnp.abs(place[..., None] - centres), 0.0, 1.0) * valid[..., None]  # [B, T, S]
  total = jnp.einsum("bts,btd->bsd", weights, x.astype(jnp.float32))
  return (total / jnp.maximum(jnp.sum(weights, axis=1), 1e-6)[..., None]).astype(x.dtype)


@gin.configurable
class Pooling(nn.Module):
  """[B, T, D] with mask [B, T] -> [B, D].

  "attention": each of `num_heads` heads scores every frame with a learned query, softmax over
  valid frames, and averages its slice of the channels; an output Dense mixes the heads.
  """
  kind: str = "mean"
  num_heads: int = 8
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    if self.kind not in POOLING_KINDS:
      raise ValueError(f"Pooling.kind={self.kind!r}; choose one of {POOLING_KINDS}")
    if self.kind == "mean":
      return masked_mean(x, mask)
    batch, length, dim = x.shape
    if dim % self.num_heads:
      raise ValueError(f"Pooling.num_heads={self.num_heads} does not divide dim {dim}")
    scores = nn.Dense(
        self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=attention.partitioned(nn.initializers.lecun_normal(), ("embed", "heads")),
        bias_init=attention.partitioned(nn.initializers.zeros, ("heads",)), name="query")(x)
    scores = jnp.where((mask != 0)[..., None], scores.astype(jnp.float32), jnp.finfo(jnp.float32).min / 2)
    weights = jax.nn.softmax(scores, axis=1).astype(self.dtype)  # [B, T, H]
    values = x.reshape(batch, length, self.num_heads, dim // self.num_heads)
    pooled = jnp.einsum("bth,bthd->bhd", weights, values).reshape(batch, dim)
    return nn.Dense(
        dim, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=attention.partitioned(nn.initializers.lecun_normal(), (None, "embed")),
        bias_init=attention.partitioned(nn.initializers.zeros, ("embed",)), name="output")(pooled)
