"""Multi-head self-attention with relative positions, for the Conformer encoder.

Position schemes (`position_type`):
  * "relative_key": Shaw et al. relative position embeddings on the keys, clipped to
    [-left_max_position, right_max_position] (w2v-BERT 2.0; HF Wav2Vec2Bert
    `position_embeddings_type="relative_key"` with left/right_max_position_embeddings). One
    table of `left + right + 1` vectors of size head_dim, shared by all heads.
  * "rotary": rotary embeddings (RoFormer) applied to queries and keys.
  * "none": no positional information inside attention.

Masks are [B, L] with 1 for valid and 0 for padding. Padding keys are never attended; a query row
whose keys are all padding gets a uniform distribution (finite output), never NaN.
"""
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mslam_jax.layers import matmul

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]

POSITION_TYPES = ("relative_key", "rotary", "none")


def partitioned(init: Initializer, axes: tuple[str | None, ...]) -> Initializer:
  """Shorthand for an initializer whose parameter carries logical axis names."""
  return nn.with_logical_partitioning(init, axes)


def relative_key_indices(query_length: int, key_length: int, left_max: int, right_max: int) -> Array:
  """Index into the relative-key table for every (query, key) pair: [Lq, Lk] int32.

  The distance is key position minus query position, clipped to [-left_max, right_max] and
  shifted by left_max, exactly as HF Wav2Vec2BertSelfAttention does.
  """
  distance = jnp.arange(key_length)[None, :] - jnp.arange(query_length)[:, None]
  return (jnp.clip(distance, -left_max, right_max) + left_max).astype(jnp.int32)


def _leading(index: Array, ndim: int) -> Array:
  return index.reshape((1,) * (ndim - index.ndim) + index.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _spread_distances(per_distance: Array, left_max: int, right_max: int) -> Array:
  """[..., L, R] scores per clipped distance -> [..., L, L] scores per key (a gather along R)."""
  length = per_distance.shape[-2]
  indices = relative_key_indices(length, length, left_max, right_max)
  return jnp.take_along_axis(per_distance, _leading(indices, per_distance.ndim), axis=-1)


def _spread_distances_fwd(per_distance, left_max, right_max):
  return _spread_distances(per_distance, left_max, right_max), None


def _spread_distances_bwd(left_max, right_max, _, cotangent):
  # The gather's own gradient is a scatter-add into [..., L, R], which XLA:CPU runs on one thread
  # (3 ms a layer on the tiny step). Each unclipped distance is one key (j = i + r - left_max): a
  # gather of the cotangent; the two clipped ends are masked sums over the rows.
  length = cotangent.shape[-1]
  if left_max + right_max == 0:  # one distance: every key
    return (jnp.sum(cotangent, axis=-1, keepdims=True),)
  inner = jnp.arange(length)[:, None] + jnp.arange(1 - left_max, right_max)[None, :]  # [L, R - 2]: their keys
  picked = jnp.take_along_axis(cotangent, _leading(jnp.clip(inner, 0, length - 1), cotangent.ndim), axis=-1)
  picked = jnp.where((inner >= 0) & (inner < length), picked, 0)
  indices = relative_key_indices(length, length, left_max, right_max)
  zero = jnp.zeros((), cotangent.dtype)
  left = jnp.sum(jnp.where(indices == 0, cotangent, zero), axis=-1, keepdims=True)
  right = jnp.sum(jnp.where(indices == left_max + right_max, cotangent, zero), axis=-1, keepdims=True)
  return (jnp.concatenate([left, picked, right], axis=-1),)


_spread_distances.defvjp(_spread_distances_fwd, _spread_distances_bwd)


def relative_key_logits_gather(query: Array, table: Array, left_max: int, right_max: int) -> Array:
  """q . E[clip(k - q)] for every (q, k): [B, H, L, D], [R, D] -> [B, H, L, L] (float32).

  Scores each query against the R = left + right + 1 distinct distances, then gathers per key:
  memory O(B H L (L + R)), never the [L, L, D] table a direct einsum would build. The backward
  pass gathers too (`_spread_distances_bwd`), with no scatter.
  """
  per_distance = matmul.einsum("bhqd,rd->bhqr", query, table, preferred_element_type=jnp.float32)
  return _spread_distances(per_distance, left_max, right_max)


def relative_key_logits_skew(query: Array, table: Array, left_max: int, right_max: int) -> Array:
  """Same result as relative_key_logits_gather, with dense ops only (no gather/scatter on [L, L]).

  Scores each query against all 2L - 1 distances (table rows gathered once, clipped), then shifts
  row i left by L - 1 - i with a pad-free reshape (the Transformer-XL / Music Transformer skew).
  Twice the QK^T flops and memory, but only matmuls and reshapes, which suit TPUs.
  """
  length = query.shape[2]
  distances = jnp.clip(jnp.arange(-(length - 1), length), -left_max, right_max) + left_max
  all_distances = matmul.einsum("bhqd,md->bhqm", query, table[distances], preferred_element_type=jnp.float32)
  if length == 1:
    return all_distances
  batch, heads = all_distances.shape[:2]
  # Row i of the result is all_distances[i, L-1-i : 2L-1-i]; in the row-major flattening of
  # [L, 2L-1] that is offset (L-1) + i*(2L-2) + j, i.e. rows of 2L-2 starting at L-1.
  flat = all_distances.reshape(batch, heads, length * (2 * length - 1))
  flat = flat[..., length - 1:length - 1 + length * (2 * length - 2)]
  return flat.reshape(batch, heads, length, 2 * length - 2)[..., :length]


def apply_rotary(x: Array, positions: Array, base: float = 10000.0) -> Array:
  """Rotary position embedding on [..., L, D] (half-split layout, D even; e.g. [B, H, L, D])."""
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))
  angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [L, half]
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


RELATIVE_KEY_IMPLS = {"gather": relative_key_logits_gather, "skew": relative_key_logits_skew}


class MultiHeadSelfAttention(nn.Module):
  """Multi-head self-attention over [B, L, D] with a [B, L] padding mask.

  Attributes:
    num_heads: number of heads.
    head_dim: size per head; defaults to input dim // num_heads.
    position_type: one of POSITION_TYPES.
    left_max_position: clipping distance to the left (past) for "relative_key".
    right_max_position: clipping distance to the right (future) for "relative_key".
    relative_key_impl: "gather" (memory O(L (L + R))) or "skew" (dense ops only); same result.
    rotary_base: base wavelength for "rotary".
    use_bias: biases on the q/k/v/output projections (HF Wav2Vec2Bert has them).
    dropout_rate: dropout on the attention probabilities.
    dtype: compute dtype; logits and softmax are always computed in float32.
    param_dtype: parameter dtype.
  """
  num_heads: int
  head_dim: int | None = None
  position_type: str = "relative_key"
  left_max_position: int = 64
  right_max_position: int = 64
  relative_key_impl: str = "gather"
  rotary_base: float = 10000.0
  use_bias: bool = True
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  def _projection(self, name: str, in_dim: int, head_dim: int) -> tuple[Array, Array | None]:
    kernel = self.param(
        f"{name}_kernel",
        partitioned(nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0, out_axis=(1, 2)),
                    ("embed", "heads", "kv")),
        (in_dim, self.num_heads, head_dim), self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param(f"{name}_bias", partitioned(nn.initializers.zeros, ("heads", "kv")),
                        (self.num_heads, head_dim), self.param_dtype)
    return kernel, bias

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool = True) -> Array:
    if self.position_type not in POSITION_TYPES:
      raise ValueError(f"MultiHeadSelfAttention.position_type={self.position_type!r}; "
                       f"choose one of {POSITION_TYPES}")
    _, length, in_dim = x.shape
    head_dim = self.head_dim or in_dim // self.num_heads
    if head_dim * self.num_heads != in_dim and self.head_dim is None:
      raise ValueError(f"num_heads={self.num_heads} does not divide the model dim {in_dim}: set "
                       "ConformerStack.num_heads (or head_dim) to fit MSLAMEncoder.embed_dim")

    # Heads-major [B, H, L, D] from the projection on: the score and context matmuls then batch over
    # leading axes with no transposes between them (on CPU a tenth of the layer's time).
    def project(name):
      kernel, bias = self._projection(name, in_dim, head_dim)
      xx, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
      y = matmul.einsum("bld,dhk->bhlk", xx, kernel)
      if bias is not None:
        y = y + jnp.asarray(bias, self.dtype)[:, None, :]
      return nn.with_logical_constraint(y, ("batch", "heads", "length", "kv"))

    query, key, value = project("query"), project("key"), project("value")

    if self.position_type == "rotary":
      if head_dim % 2:
        raise ValueError(f"rotary attention needs an even head_dim, got {head_dim}")
      positions = jnp.arange(length)
      query = apply_rotary(query, positions, self.rotary_base)
      key = apply_rotary(key, positions, self.rotary_base)

    # 1/sqrt(D) on the queries, not on the [L, L] logits: both logit terms are linear in them.
    query = query * jnp.asarray(1.0 / math.sqrt(head_dim), query.dtype)
    logits = jnp.einsum("bhqd,bhkd->bhqk", query, key, preferred_element_type=jnp.float32)

    if self.position_type == "relative_key":
      num_positions = self.left_max_position + self.right_max_position + 1
      table = self.param("relative_key_embedding", partitioned(nn.initializers.normal(0.02), (None, "kv")),
                         (num_positions, head_dim), self.param_dtype)
      if self.relative_key_impl not in RELATIVE_KEY_IMPLS:
        raise ValueError(f"relative_key_impl={self.relative_key_impl!r}; choose one of "
                         f"{tuple(RELATIVE_KEY_IMPLS)}")
      logits = logits + RELATIVE_KEY_IMPLS[self.relative_key_impl](
          query, jnp.asarray(table, self.dtype), self.left_max_position, self.right_max_position)

    # A finite large negative (not -inf) keeps rows with no valid key finite (uniform weights); added
    # as a [B, 1, 1, L] bias, which fuses into the logits' sum.
    key_bias = jnp.where(mask.astype(bool), 0.0, jnp.finfo(jnp.float32).min / 2)[:, None, None, :]
    probs = jax.nn.softmax(logits + key_bias, axis=-1)
    probs = nn.Dropout(self.dropout_rate)(probs, deterministic=deterministic)

    context = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(self.dtype), value)
    context = nn.with_logical_constraint(context, ("batch", "heads", "length", "kv"))
    out_kernel = self.param(
        "out_kernel",
        partitioned(nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1), out_axis=2),
                    ("heads", "kv", "embed")),
        (self.num_heads, head_dim, in_dim), self.param_dtype)
    out = matmul.einsum("bhlk,hkd->bld", context, jnp.asarray(out_kernel, self.dtype))
    if self.use_bias:
      out_bias = self.param("out_bias", partitioned(nn.initializers.zeros, ("embed",)), (in_dim,), self.param_dtype)
      out = out + jnp.asarray(out_bias, self.dtype)
    return nn.with_logical_constraint(out, ("batch", "length", "embed"))
