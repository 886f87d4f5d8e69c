"""Output heads of the pre-training objectives, with logical-axis annotated parameters.

- `CodebookPredictionHead`: masked prediction of codebook ids (speech MLM and the speech half of
  TLM): [B, T, D] -> logits [B, T, G, V].
- `TextLMHead`: span-masked LM over the character vocabulary, tied to the token embedding
  (logits = x @ E^T + b) or a separate projection.
- `CTCHead`: frame logits over the character vocabulary (its CTC blank included).
- `ContrastiveProjection`: the linear map of context vectors / quantized targets into the space
  where InfoNCE takes cosine similarities (wav2vec 2.0's final_proj / project_q).
- `EmbeddingHead`: a pooled utterance (or its frames) -> the cross-modal embedding space (one per
  modality, as CLIP has one projection per tower).
"""
from typing import Any, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from mslam_jax.layers import matmul
from mslam_jax.layers import pooling

Array = jax.Array
DType = Any

# Output heads start with logits near 0 (std ~0.1 for unit-scale inputs), so that every
# cross-entropy starts at log(classes): no class is preferred before training says so.
OUTPUT_INIT_SCALE = 0.01


def _kernel_init(axes: tuple[str, str], scale: float = 1.0):
  return nn.with_logical_partitioning(nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal"), axes)


def _bias_init(axes: tuple[str]):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), axes)


def _constrain(x: Array, axes: tuple) -> Array:
  """Logical sharding constraint of head outputs (vocab / codebook logits are the largest
  activations of the step); a no-op outside a mesh."""
  return nn.with_logical_constraint(x, axes) if x.ndim == len(axes) else x


class _Dense(nn.Module):
  """A Dense whose kernel and bias carry logical axis names."""
  features: int
  axes: tuple[str, str]
  use_bias: bool = True
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  init_scale: float = 1.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return nn.Dense(
        self.features, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
        dot_general=matmul.dot_general, kernel_init=_kernel_init(self.axes, self.init_scale),
        bias_init=_bias_init(self.axes[1:]), name="dense")(x)


class CodebookPredictionHead(nn.Module):
  """Logits over the entries of each codebook group: [B, T, D] -> [B, T, G, V]."""
  num_groups: int
  num_entries: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    logits = _Dense(self.num_groups * self.num_entries, ("embed", "codebook"), True, self.dtype,
                    self.param_dtype, OUTPUT_INIT_SCALE, name="proj")(x)
    logits = logits.reshape(x.shape[:-1] + (self.num_groups, self.num_entries))
    return _constrain(logits, ("batch", "length", None, "codebook"))


@gin.configurable
class TextLMHead(nn.Module):
  """Logits over the vocabulary for masked characters.

  Attributes:
    vocab_size: output classes (ignored for the tied head, which takes the table's rows).
    tied: share the token embedding table (passed to __call__) instead of a separate kernel.
  """
  vocab_size: int
  tied: bool = True
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, embedding: Optional[Array] = None) -> Array:
    if not self.tied:
      return _constrain(_Dense(self.vocab_size, ("embed", "vocab"), True, self.dtype, self.param_dtype,
                               OUTPUT_INIT_SCALE, name="proj")(x), ("batch", "length", "vocab"))
    if embedding is None:
      raise ValueError("TextLMHead.tied=True needs the token embedding table")
    bias = self.param("bias", _bias_init(("vocab",)), (embedding.shape[0],), self.param_dtype)
    # Unit-scale embeddings against unit-scale (layer-normed) states: 1/sqrt(D) keeps the logits
    # at unit scale, as T5 does for its tied head.
    logits = matmul.einsum("...d,vd->...v", x.astype(self.dtype), embedding.astype(self.dtype))
    logits = logits * (embedding.shape[-1] ** -0.5) + bias.astype(self.dtype)
    return _constrain(logits, ("batch", "length", "vocab"))


class CTCHead(nn.Module):
  """Frame logits over the character vocabulary (the blank is one of its ids)."""
  vocab_size: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    logits = _Dense(self.vocab_size, ("embed", "vocab"), True, self.dtype, self.param_dtype, OUTPUT_INIT_SCALE,
                    name="proj")(x)
    return _constrain(logits, ("batch", "length", "vocab"))


class ContrastiveProjection(nn.Module):
  """Linear map into the InfoNCE space ([..., D_in] -> [..., features])."""
  features: int
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _Dense(self.features, ("embed", "mlp"), True, self.dtype, self.param_dtype, name="proj")(x)


class EmbeddingHead(nn.Module):
  """An utterance -> the cross-modal embedding [B, features] (cosine space).

  One per modality: mean-pooled speech and text encodings share a large modality-specific offset
  that dominates their cosine similarity; a head of its own per modality can remove it, where a
  loss on the raw pooled vectors must reshape the whole encoder to do so. `hidden` > 0 adds a
  GELU hidden layer on the pooled vector (SimCLR's projection MLP); 0 is CLIP's linear projection.
  `frame_hidden` > 0 reads the frames instead ([B, T, D] and their mask): a GELU layer on every
  frame, then the masked mean. A mean of per-frame features can weigh what each frame says
  (a bag of sounds or characters), which a linear map of the mean frame cannot. `segments` > 1
  (with `frame_hidden`) takes that mean over each of `segments` stretches of the utterance in
  order and projects them together: where things are said, not only what.

  `with_local=True` (with `segments` > 1 and `local_features` > 0) also returns each stretch's own
  embedding [B, segments, local_features], one shared linear map of its mean: what the
  stretch-level cross-modal term (ObjectiveWeights.local_cross_modal) matches across modalities.
  """
  features: int
  hidden: int = 0
  frame_hidden: int = 0
  segments: int = 1
  local_features: int = 0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Optional[Array] = None, with_local: bool = False):
    axis, local = "embed", None
    if with_local and not (self.frame_hidden and self.segments > 1 and self.local_features):
      raise ValueError("EmbeddingHead(with_local=True) needs frame_hidden > 0, segments > 1 and local_features > 0, "
                       f"got {self.frame_hidden}, {self.segments} and {self.local_features}")
    if self.frame_hidden:
      if x.ndim != 3 or mask is None:
        raise ValueError(f"EmbeddingHead(frame_hidden={self.frame_hidden}) takes frames [B, T, D] and their "
                         f"mask, got shape {x.shape}" + (" and no mask" if mask is None else ""))
      x = _Dense(self.frame_hidden, (axis, "mlp"), True, self.dtype, self.param_dtype, name="frame_hidden")(x)
      if self.segments > 1:
        x = pooling.segment_means(nn.gelu(x), mask, self.segments)
        if with_local:
          local = _Dense(self.local_features, ("mlp", None), False, self.dtype, self.param_dtype,
                         name="local_proj")(x)
        x, axis = x.reshape(x.shape[0], -1), None
      else:
        x, axis = pooling.masked_mean(nn.gelu(x), mask), "mlp"
    if self.hidden:
      out_axis = "mlp" if axis == "embed" else None
      x = nn.gelu(_Dense(self.hidden, (axis, out_axis), True, self.dtype, self.param_dtype, name="hidden")(x))
      axis = out_axis
    embedding = _Dense(self.features, (axis, None), False, self.dtype, self.param_dtype, name="proj")(x)
    return (embedding, local) if with_local else embedding
